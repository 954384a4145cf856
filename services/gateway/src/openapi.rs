//! The route table of the gateway ([`ENDPOINTS`]) and the OpenAPI 3 document built from it. The
//! router serves exactly this table, so the document cannot list a path that is not served or
//! miss one that is; request schemas are written beside each entry.

use axum::routing::{get, post, MethodRouter};
use axum::Json;

use ande_contracts::vocab::{Lang, MiniprogramState, SubscriptionStatus, Vocabulary};

use crate::routes::messages;
use crate::{routes, validate, AppState};
use serde_json::{json, Map, Value};

/// One endpoint: what the router serves (`route`) and what the document says of it.
pub struct Endpoint {
    /// Must be the method `route` answers (checked by the system test
    /// `openapi_lists_every_path_and_every_listed_path_is_served`).
    pub method: &'static str,
    pub path: &'static str,
    pub route: fn() -> MethodRouter<AppState>,
    pub summary: &'static str,
    /// "none", "session" (optional mini-program session), "staff", "staff-or-session".
    pub auth: &'static str,
    pub request: Option<fn() -> Value>,
}

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "post",
        path: "/api/wechat/openid",
        route: || post(routes::wechat::openid),
        summary: "Exchange a wx.login code for the openid and a session token",
        auth: "none",
        request: Some(openid_req),
    },
    Endpoint {
        method: "post",
        path: "/api/wechat/phone",
        route: || post(routes::wechat::phone),
        summary: "Exchange the phone button's code for the phone number",
        auth: "session",
        request: Some(openid_req),
    },
    Endpoint {
        method: "post",
        path: "/api/advisor/subscribe",
        route: || post(routes::subscribe::subscribe),
        summary: "Record an advisor's subscribe-message decisions (each accept is one send credit)",
        auth: "session",
        request: Some(subscribe_req),
    },
    Endpoint {
        method: "post",
        path: "/api/customer/action",
        route: || post(routes::actions::record),
        summary:
            "Record a customer action durably; answers after JetStream's ack with the action id",
        auth: "session",
        request: Some(action_req),
    },
    Endpoint {
        method: "get",
        path: "/api/actions/{id}",
        route: || get(routes::actions::journey),
        summary: "The journey of an action: recorded, lead outcome, notification",
        auth: "staff-or-session",
        request: None,
    },
    Endpoint {
        method: "get",
        path: "/api/digests/{id}",
        route: || get(routes::digests::digest),
        summary:
            "The customer actions a digest message stood for (the advisor's session, or staff)",
        auth: "staff-or-session",
        request: None,
    },
    Endpoint {
        method: "post",
        path: "/api/message/send",
        route: || post(routes::messages::send),
        summary: "Send a subscribe message now (staff only)",
        auth: "staff",
        request: Some(send_req),
    },
    Endpoint {
        method: "post",
        path: "/api/auth/login",
        route: || post(routes::messages::login),
        summary: "Staff login",
        auth: "none",
        request: Some(login_req),
    },
    Endpoint {
        method: "get",
        path: "/api/health",
        route: || get(routes::health::health),
        summary: "Liveness, with each dependency's state",
        auth: "none",
        request: None,
    },
    Endpoint {
        method: "get",
        path: "/api/health/ready",
        route: || get(routes::health::ready),
        summary: "Readiness: 503 until NATS, the stream and the database answer",
        auth: "none",
        request: None,
    },
    Endpoint {
        method: "get",
        path: "/api/openapi.json",
        route: || get(document),
        summary: "This document",
        auth: "none",
        request: None,
    },
];

/// A string of at most `max` characters (headers).
fn s(max: u32) -> Value {
    json!({ "type": "string", "maxLength": max })
}
/// One of a vocabulary's words, or absent/null.
fn word<V: Vocabulary>() -> Value {
    json!({ "type": "string", "enum": V::names(), "nullable": true })
}
fn openid_req() -> Value {
    json!({ "type": "object", "required": ["code"], "properties": { "code": validate::CODE.schema(true) } })
}
fn subscribe_req() -> Value {
    json!({ "type": "object", "required": ["advisorId"], "properties": {
        "advisorId": validate::ID.schema(true), "openid": validate::ID.schema(false), "templateId": validate::ID.schema(false), "subscribed": { "type": "boolean" },
        "subscribeData": { "type": "object", "properties": { "subscriptionStatus": { "enum": SubscriptionStatus::names() }, "source": validate::SOURCE.schema(false) } },
        "result": { "type": "object", "description": "wx.requestSubscribeMessage's answer: {templateId: accept|reject|ban|filter, errMsg}" } } })
}
fn action_req() -> Value {
    json!({ "type": "object", "required": ["customerId", "advisorId", "actionType"], "additionalProperties": true, "properties": {
        "customerId": validate::ID.schema(true), "advisorId": validate::ID.schema(true), "actionType": validate::ACTION_TYPE.schema(true),
        "actionData": { "type": "object", "nullable": true, "description": "kept as sent; at most 16 KiB as JSON and 16 levels deep" },
        "customerName": validate::NAME.schema(false), "customerPhone": validate::PHONE.schema(false) } })
}
fn send_req() -> Value {
    let keyword = json!({ "type": "object", "required": ["value"], "properties": { "value": { "type": "string" } },
        "description": "the value must fit its keyword type's limits (see docs/wechat.md); refused with 400 naming data.<keyword>.value otherwise" });
    json!({ "type": "object", "required": ["touser", "template_id", "data"], "properties": {
        "touser": validate::WECHAT_ID.schema(true), "template_id": validate::WECHAT_ID.schema(true), "page": validate::PAGE.schema(false),
        "data": { "type": "object", "minProperties": 1, "maxProperties": messages::MAX_KEYWORDS, "additionalProperties": keyword },
        "miniprogram_state": word::<MiniprogramState>(), "lang": word::<Lang>() } })
}
fn login_req() -> Value {
    json!({ "type": "object", "required": ["username", "password"], "properties": {
        "username": validate::USERNAME.schema(true), "password": { "type": "string", "minLength": 1, "maxLength": messages::MAX_PASSWORD } } })
}

pub fn build() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let mut op = json!({
            "summary": e.summary,
            "responses": {
                "200": { "description": "Success envelope", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Success" } } } },
                "default": { "description": "Error envelope (400, 401, 403, 404, 409, 413, 429, 502, 503)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if let Some(req) = e.request {
            op["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": req() } } });
        }
        match e.auth {
            "staff" => op["security"] = json!([{ "staffToken": [] }]),
            "session" => op["security"] = json!([{}, { "sessionToken": [] }]),
            "staff-or-session" => {
                op["security"] = json!([{ "staffToken": [] }, { "sessionToken": [] }])
            }
            _ => {}
        }
        if e.path.contains("{id}") {
            op["parameters"] = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }]);
        }
        if e.path == "/api/customer/action" || e.path == "/api/advisor/subscribe" {
            op["parameters"] = json!([{ "name": "Idempotency-Key", "in": "header", "required": false, "schema": s(200) }]);
        }
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Ande gateway", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sessionToken": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "aud ande-miniprogram, from /api/wechat/openid" },
                "staffToken": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "aud ande-staff, from /api/auth/login" }
            },
            "schemas": {
                "Success": { "type": "object", "properties": { "success": { "type": "boolean" }, "data": {}, "message": { "type": "string" }, "timestamp": { "type": "integer" }, "requestId": { "type": "string" } } },
                "Error": { "type": "object", "properties": { "success": { "type": "boolean" }, "message": { "type": "string" }, "error": { "type": "object", "properties": { "code": { "type": "string" }, "details": {} } }, "timestamp": { "type": "integer" }, "requestId": { "type": "string" } } }
            }
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
