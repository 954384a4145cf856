//! The route table of the gateway ([`ENDPOINTS`]) and the OpenAPI 3 document built from it. The
//! router serves exactly this table, so the document cannot list a path that is not served or
//! miss one that is; request schemas are written beside each entry.

use axum::routing::{get, post, MethodRouter};

use ande_contracts::vocab::{
    Lang, MiniprogramState, NotificationState, OutcomeKind, SubscriptionStatus, Vocabulary,
};

use ande_wechat::KeywordType;

use crate::routes::messages;
use crate::{idempotency, routes, validate, AppState};
use serde_json::{json, Map, Value};

/// One endpoint: what the router serves (`route`) and what the document says of it.
pub struct Endpoint {
    /// Must be the method `route` answers (checked by the system test
    /// `openapi_lists_every_path_and_every_listed_path_is_served`).
    pub method: &'static str,
    pub path: &'static str,
    pub route: fn() -> MethodRouter<AppState>,
    pub summary: &'static str,
    /// "none", "session" (optional mini-program session), "session-required", "staff",
    /// "staff-or-session", "wechat-signature" (WeChat's push: signed with our push Token).
    pub auth: &'static str,
    pub request: Option<fn() -> Value>,
    /// The schema of the success envelope's `data` (or, for the document itself, of the body).
    pub response: fn() -> Value,
}

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "post",
        path: "/api/wechat/openid",
        route: || post(routes::wechat::openid),
        summary: "Exchange a wx.login code for the openid and a session token",
        auth: "none",
        request: Some(openid_req),
        response: openid_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/wechat/phone",
        route: || post(routes::wechat::phone),
        summary: "Exchange the phone button's code for the phone number",
        auth: "session",
        request: Some(openid_req),
        response: phone_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/wechat/events",
        route: || get(routes::push::check_url),
        summary: "WeChat's message-push URL check: answers echostr when signature is ours (404 when WECHAT_PUSH_TOKEN is unset)",
        auth: "wechat-signature",
        request: None,
        response: push_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/wechat/events",
        route: || post(routes::push::receive),
        summary: "WeChat's message push (subscribe_msg_popup_event, subscribe_msg_change_event, subscribe_msg_sent_event; JSON or XML; plaintext or safe mode): answers success once recorded",
        auth: "wechat-signature",
        request: Some(push_req),
        response: push_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/advisor/subscribe",
        route: || post(routes::subscribe::subscribe),
        summary: "Record an advisor's subscribe-message decisions (each accept is one send credit); needs the advisor's session (an openid staff bound to the advisor): 403 otherwise",
        auth: "session",
        request: Some(subscribe_req),
        response: subscribe_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/advisor/bind",
        route: || post(routes::advisors::redeem),
        summary: "The advisor redeems a pairing code from staff: binds the session's openid to the advisor",
        auth: "session-required",
        request: Some(redeem_req),
        response: binding_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/advisor/credits",
        route: || get(routes::advisors::credits),
        summary: "The session's remaining credits with each advisor it is bound to, per template",
        auth: "session-required",
        request: None,
        response: credits_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/advisor-bindings",
        route: || get(routes::advisors::list),
        summary: "Advisor bindings, of one advisor (?advisorId=) or all (staff only)",
        auth: "staff",
        request: None,
        response: bindings_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/advisor-bindings",
        route: || post(routes::advisors::bind),
        summary: "Bind a WeChat user (openid) to an advisor: they receive its notifications (staff only)",
        auth: "staff",
        request: Some(binding_req),
        response: binding_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/advisor-bindings/unbind",
        route: || post(routes::advisors::unbind),
        summary: "Remove a binding (staff only)",
        auth: "staff",
        request: Some(binding_req),
        response: unbound_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/advisor-settings",
        route: || get(routes::advisors::settings),
        summary: "An advisor's own settings (staff): quiet hours (null: the deployment's NOTIFIER_QUIET_HOURS)",
        auth: "staff",
        request: None,
        response: settings_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/advisor-settings",
        route: || post(routes::advisors::set_settings),
        summary: "Set an advisor's own quiet hours (staff): HH:MM-HH:MM Beijing time, off, or null for the deployment's",
        auth: "staff",
        request: Some(settings_req),
        response: settings_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/advisor-pairings",
        route: || post(routes::advisors::pair),
        summary: "A one-time pairing code for an advisor, valid 10 minutes, shown once (staff only)",
        auth: "staff",
        request: Some(pair_req),
        response: pairing_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/customer/action",
        route: || post(routes::actions::record),
        summary:
            "Record a customer action durably; answers after JetStream's ack with the action id",
        auth: "session",
        request: Some(action_req),
        response: action_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/actions/{id}",
        route: || get(routes::actions::journey),
        summary: "The journey of an action: recorded, lead outcome, notification",
        auth: "staff-or-session",
        request: None,
        response: journey_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/digests/{id}",
        route: || get(routes::digests::digest),
        summary:
            "The customer actions a digest message stood for (the advisor's session, or staff)",
        auth: "staff-or-session",
        request: None,
        response: digest_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/message/send",
        route: || post(routes::messages::send),
        summary: "Send a subscribe message now (staff only)",
        auth: "staff",
        request: Some(send_req),
        response: send_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/auth/login",
        route: || post(routes::messages::login),
        summary: "Staff login",
        auth: "none",
        request: Some(login_req),
        response: login_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/session",
        route: || post(routes::staff::sign_in),
        summary: "Console sign-in: sets the httpOnly SameSite=Strict session cookie (needs the x-ande-console header)",
        auth: "none",
        request: Some(login_req),
        response: me_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/session/end",
        route: || post(routes::staff::sign_out),
        summary: "Console sign-out: clears the session cookie",
        auth: "none",
        request: None,
        response: empty_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/me",
        route: || get(routes::staff::me),
        summary: "The signed-in staff account: name, role, advisor",
        auth: "staff",
        request: None,
        response: me_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/me/password",
        route: || post(routes::staff::change_password),
        summary: "Change one's own password (the current one is checked; other sessions end)",
        auth: "staff",
        request: Some(password_req),
        response: me_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/leads",
        route: || get(routes::staff::leads),
        summary: "Leads: filter by advisor, status, level, created/last-touch time; search name/phone/code; sort; cursor pages",
        auth: "staff",
        request: None,
        response: lead_page_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/leads/{id}",
        route: || get(routes::staff::lead),
        summary: "One lead with its actions, their notifications and delivery log, and staff changes",
        auth: "staff",
        request: None,
        response: lead_detail_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/leads/{id}",
        route: || post(routes::staff::change_lead),
        summary: "Change a lead's status, level, owner or remark: recorded as a lead.changed event (202)",
        auth: "staff",
        request: Some(lead_change_req),
        response: lead_changed_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/advisors",
        route: || get(routes::staff::advisors),
        summary: "Advisors: bound WeChat users, credits per template, waiting and failed notifications",
        auth: "staff",
        request: None,
        response: advisors_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/notifications",
        route: || get(routes::staff::notifications),
        summary: "Notifications in a state (default failed), optionally one advisor's",
        auth: "staff",
        request: None,
        response: notifications_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/notifications/{id}/retry",
        route: || post(routes::staff::retry),
        summary: "Queue a failed notification again",
        auth: "staff",
        request: None,
        response: retried_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/sending",
        route: || post(routes::staff::sending),
        summary: "Pause (for some minutes, or until resumed) or resume all sending (admin)",
        auth: "admin",
        request: Some(sending_req),
        response: sending_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/overview",
        route: || get(routes::staff::overview),
        summary: "Ingest and messages per hour (24 h), consumer lag, the queue by state, the latest errors",
        auth: "staff",
        request: None,
        response: overview_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/dead-letters",
        route: || get(routes::dead_letters::list),
        summary: "Dead letters, newest first (at most 200), decoded; optionally one consumer's (admin)",
        auth: "admin",
        request: None,
        response: dead_letters_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/dead-letters/{seq}",
        route: || get(routes::dead_letters::show),
        summary: "One dead letter: why, where from, its headers and the event decoded (admin)",
        auth: "admin",
        request: None,
        response: dead_letter_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/dead-letters/{seq}/retry",
        route: || post(routes::dead_letters::retry),
        summary: "Republish a dead letter's event (one the gateway produces; 409 otherwise) and delete it (admin)",
        auth: "admin",
        request: None,
        response: dlq_retried_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/dead-letters/{seq}/purge",
        route: || post(routes::dead_letters::purge),
        summary: "Delete a dead letter for good (admin)",
        auth: "admin",
        request: None,
        response: dlq_purged_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/staff/users",
        route: || get(routes::staff::users),
        summary: "Staff accounts (admin)",
        auth: "admin",
        request: None,
        response: users_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/users",
        route: || post(routes::staff::add_user),
        summary: "Add a staff account with a role (admin)",
        auth: "admin",
        request: Some(user_req),
        response: user_created_resp,
    },
    Endpoint {
        method: "post",
        path: "/api/staff/users/{name}",
        route: || post(routes::staff::change_user),
        summary: "Disable or enable an account, or change its role and advisor (admin)",
        auth: "admin",
        request: Some(user_change_req),
        response: user_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/health",
        route: || get(routes::health::health),
        summary: "Liveness, with each dependency's state",
        auth: "none",
        request: None,
        response: health_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/health/ready",
        route: || get(routes::health::ready),
        summary: "Readiness: 503 until NATS, the stream and the database answer",
        auth: "none",
        request: None,
        response: health_resp,
    },
    Endpoint {
        method: "get",
        path: "/api/openapi.json",
        route: || get(document),
        summary: "This document",
        auth: "none",
        request: None,
        response: document_resp,
    },
];

/// The query parameters of the staff lists, and the console header of the sign-in.
fn query_params(e: &Endpoint) -> Option<Value> {
    let q = |name: &str, schema: Value| json!({ "name": name, "in": "query", "required": false, "schema": schema });
    let time = json!({ "anyOf": [{ "type": "string", "format": "date" }, { "type": "string", "format": "date-time" },
                                 { "type": "string", "maxLength": 0 }],
                       "description": "YYYY-MM-DD (midnight, Beijing) or an RFC 3339 time; empty: no filter" });
    match (e.method, e.path) {
        ("get", "/api/staff/leads") => Some(json!([
            q("advisorId", validate::ID.schema(false)),
            q("status", routes::staff::LABEL.schema(false)),
            q("level", routes::staff::LABEL.schema(false)),
            q("createdFrom", time.clone()),
            q("createdUntil", time.clone()),
            q("touchedFrom", time.clone()),
            q("touchedUntil", time),
            q("q", routes::staff::SEARCH.schema(false)),
            q(
                "sort",
                json!({ "type": "string", "enum": ["created", "lastTouch"] })
            ),
            q(
                "cursor",
                json!({ "type": "string", "pattern": ande_contracts::leads::CURSOR_PATTERN, "description": "nextCursor of the page before" })
            ),
            q(
                "limit",
                json!({ "type": "integer", "minimum": 1, "maximum": 200 })
            ),
        ])),
        ("get", "/api/staff/notifications") => Some(json!([
            q(
                "state",
                json!({ "type": "string", "enum": NotificationState::names() })
            ),
            q("advisorId", validate::ID.schema(false)),
            q(
                "limit",
                json!({ "type": "integer", "minimum": 1, "maximum": 1000 })
            ),
        ])),
        ("post", "/api/staff/session") => Some(json!([
            { "name": "x-ande-console", "in": "header", "required": true, "schema": { "type": "string", "enum": ["1"] } }
        ])),
        _ => None,
    }
}

/// A string of at most `max` characters (headers).
/// One of a vocabulary's words, or absent/null.
fn word<V: Vocabulary>() -> Value {
    let mut words: Vec<Value> = V::names().into_iter().map(Value::from).collect();
    words.push(Value::Null);
    json!({ "type": ["string", "null"], "enum": words })
}
fn openid_req() -> Value {
    json!({ "type": "object", "required": ["code"], "properties": { "code": validate::CODE.schema(true) } })
}
fn subscribe_req() -> Value {
    json!({ "type": "object", "required": ["advisorId"], "properties": {
        "advisorId": validate::ID.schema(true), "templateId": validate::ID.schema(false), "subscribed": { "type": "boolean" },
        "subscribeData": { "type": "object", "properties": { "subscriptionStatus": { "enum": SubscriptionStatus::names() }, "source": validate::SOURCE.schema(false) } },
        "result": { "type": "object", "description": "wx.requestSubscribeMessage's answer: {templateId: accept|reject|ban|filter, errMsg}" } } })
}
fn action_req() -> Value {
    json!({ "type": "object", "required": ["customerId", "advisorId", "actionType"], "additionalProperties": true, "properties": {
        "customerId": validate::ID.schema(true), "advisorId": validate::ID.schema(true), "actionType": validate::ACTION_TYPE.schema(true),
        "actionData": { "type": ["object", "null"], "description": "kept as sent; at most 16 KiB as JSON and 16 levels deep" },
        "customerName": validate::NAME.schema(false), "customerPhone": validate::PHONE.schema(false) } })
}
/// `data` of a subscribe message: keywords named by type (`thing1`, `time2`), each value held to
/// its type's rule, the same patterns and limits `ande_wechat::keywords::validate` applies.
fn keywords() -> Value {
    let by_name: serde_json::Map<String, Value> = KeywordType::all()
        .map(|kind| {
            let mut value = json!({ "type": "string", "minLength": 1, "description": kind.rule(),
                "allOf": kind.patterns().into_iter().map(|p| json!({ "pattern": p })).collect::<Vec<_>>() });
            if let Some(max) = kind.max_chars() {
                value["maxLength"] = max.into();
            }
            let keyword = json!({ "type": "object", "required": ["value"], "properties": { "value": value } });
            (format!("^{}[0-9]*$", kind.stem()), keyword)
        })
        .collect();
    json!({ "type": "object", "minProperties": 1, "maxProperties": messages::MAX_KEYWORDS,
        "patternProperties": by_name, "additionalProperties": false,
        "description": "keyword name → {value}; a value breaking its type's rule is refused with 400 naming data.<keyword>.value" })
}
fn redeem_req() -> Value {
    obj(&["code"], json!({ "code": validate::CODE.schema(true) }))
}
fn binding_req() -> Value {
    obj(
        &["advisorId", "openid"],
        json!({ "advisorId": validate::ID.schema(true), "openid": validate::ID.schema(true) }),
    )
}
fn pair_req() -> Value {
    obj(
        &["advisorId"],
        json!({ "advisorId": validate::ID.schema(true) }),
    )
}
fn binding_resp() -> Value {
    obj(
        &["advisorId", "openid", "boundBy", "boundAt"],
        json!({ "advisorId": text(), "openid": text(), "boundBy": text(), "boundAt": { "type": "string", "format": "date-time" } }),
    )
}
fn bindings_resp() -> Value {
    obj(
        &["bindings"],
        json!({ "bindings": { "type": "array", "items": binding_resp() } }),
    )
}
fn credits_resp() -> Value {
    let account = obj(
        &[
            "advisorId",
            "templateId",
            "credits",
            "longTerm",
            "lastStatus",
        ],
        json!({ "advisorId": text(), "templateId": text(), "credits": { "type": "integer", "minimum": 0 },
                "longTerm": { "type": "boolean" }, "lastStatus": text() }),
    );
    obj(
        &["credits"],
        json!({ "credits": { "type": "array", "items": account } }),
    )
}
fn unbound_resp() -> Value {
    obj(
        &["advisorId", "openid"],
        json!({ "advisorId": text(), "openid": text() }),
    )
}
fn pairing_resp() -> Value {
    obj(
        &["advisorId", "code", "expiresAt"],
        json!({ "advisorId": text(), "code": text(), "expiresAt": { "type": "string", "format": "date-time" } }),
    )
}
fn send_req() -> Value {
    json!({ "type": "object", "required": ["touser", "template_id", "data"], "properties": {
        "touser": validate::WECHAT_ID.schema(true), "template_id": validate::WECHAT_ID.schema(true), "page": validate::PAGE.schema(false),
        "data": keywords(),
        "miniprogram_state": word::<MiniprogramState>(), "lang": word::<Lang>() } })
}
fn login_req() -> Value {
    json!({ "type": "object", "required": ["username", "password"], "properties": {
        "username": validate::USERNAME.schema(true), "password": { "type": "string", "minLength": 1, "maxLength": messages::MAX_PASSWORD } } })
}

fn obj(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}
fn text() -> Value {
    json!({ "type": "string" })
}
fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}
fn openid_resp() -> Value {
    obj(
        &["openid", "token", "expiresIn"],
        json!({ "openid": text(), "token": text(), "expiresIn": { "type": "integer" }, "unionid": text() }),
    )
}
fn phone_resp() -> Value {
    obj(
        &["phoneNumber", "purePhoneNumber", "countryCode"],
        json!({ "phoneNumber": text(), "purePhoneNumber": text(), "countryCode": text(),
                "token": { "type": "string", "description": "a renewed session token carrying the number (with a session)" } }),
    )
}
fn subscribe_resp() -> Value {
    let decision = obj(
        &["templateId", "status", "eventId"],
        json!({ "templateId": text(), "status": { "type": "string", "enum": SubscriptionStatus::names() }, "eventId": uuid() }),
    );
    obj(
        &["advisorId", "openid", "recorded"],
        json!({ "advisorId": text(), "openid": text(), "recorded": { "type": "array", "items": decision } }),
    )
}
fn action_resp() -> Value {
    obj(
        &["actionId", "eventId", "sequence", "duplicate"],
        json!({ "actionId": uuid(), "eventId": uuid(), "sequence": { "type": "integer" }, "duplicate": { "type": "boolean" } }),
    )
}
fn journey_resp() -> Value {
    let notification = obj(
        &["status"],
        json!({ "status": { "type": "string", "enum": ["sent", "pending_credit", "failed", "queued", "none", "unknown"] } }),
    );
    obj(
        &["actionId", "recorded", "lead", "notification"],
        json!({ "actionId": uuid(), "recorded": { "type": "object" }, "lead": { "type": "object" }, "notification": notification }),
    )
}
fn digest_resp() -> Value {
    obj(
        &["digestId", "advisorId", "state", "count", "actions"],
        json!({ "digestId": uuid(), "advisorId": text(), "state": { "type": "string", "enum": NotificationState::names() },
                "msgid": { "type": ["string", "null"] }, "count": { "type": "integer" },
                "actions": { "type": "array", "items": { "type": "object" } } }),
    )
}
fn send_resp() -> Value {
    obj(
        &["errcode", "errmsg", "msgid"],
        json!({ "errcode": { "type": "integer" }, "errmsg": text(), "msgid": text() }),
    )
}
fn login_resp() -> Value {
    obj(
        &["token", "username", "expiresIn"],
        json!({ "token": text(), "username": text(), "expiresIn": { "type": "integer" } }),
    )
}
fn me_resp() -> Value {
    obj(
        &["username", "role", "advisorId"],
        json!({ "username": text(), "role": { "type": "string", "enum": ["admin", "sales"] },
                "advisorId": { "type": ["string", "null"] }, "expiresIn": { "type": "integer" } }),
    )
}
fn password_req() -> Value {
    let pw = json!({ "type": "string", "minLength": 1, "maxLength": messages::MAX_PASSWORD });
    obj(
        &["currentPassword", "newPassword"],
        json!({ "currentPassword": pw, "newPassword": { "type": "string", "minLength": 12, "maxLength": messages::MAX_PASSWORD,
                "description": "at least 12 characters, 5 different ones, not containing the username" } }),
    )
}
fn empty_resp() -> Value {
    json!({ "type": "object" })
}
fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}
fn lead_schema() -> Value {
    obj(
        &[
            "id",
            "customerCode",
            "phone",
            "ownerAdvisorId",
            "status",
            "level",
            "createdAt",
            "lastTouchAt",
        ],
        json!({ "id": uuid(), "customerCode": text(), "phone": text(), "name": { "type": ["string", "null"] },
                "openid": { "type": ["string", "null"] }, "ownerAdvisorId": text(), "createdBy": text(), "source": text(),
                "status": text(), "level": text(), "remark": text(), "touchCount": { "type": "integer" },
                "lastTouchAt": time(), "createdAt": time() }),
    )
}
fn lead_page_resp() -> Value {
    obj(
        &["leads", "nextCursor"],
        json!({ "leads": { "type": "array", "items": lead_schema() }, "nextCursor": { "type": ["string", "null"] } }),
    )
}
fn lead_detail_resp() -> Value {
    let action = obj(
        &[
            "actionId",
            "advisorId",
            "actionType",
            "occurredAt",
            "outcomeKind",
            "delivery",
        ],
        json!({ "actionId": uuid(), "advisorId": text(), "actionType": text(), "occurredAt": time(),
                "outcomeKind": { "type": "string", "enum": OutcomeKind::names() }, "linked": { "type": "boolean" },
                "delivery": obj(&["notifications", "log"], json!({ "notifications": { "type": "array" }, "log": { "type": "array" } })) }),
    );
    let change = obj(
        &["eventId", "changedBy", "changes", "changedAt"],
        json!({ "eventId": uuid(), "changedBy": text(), "changes": { "type": "object" }, "changedAt": time() }),
    );
    obj(
        &["lead", "actions", "changes"],
        json!({ "lead": lead_schema(), "actions": { "type": "array", "items": action }, "changes": { "type": "array", "items": change } }),
    )
}
fn lead_change_req() -> Value {
    use routes::staff::{LABEL, REMARK};
    let fields = [
        ("status", LABEL),
        ("level", LABEL),
        ("ownerAdvisorId", validate::ID),
        ("remark", REMARK),
    ];
    let one_given: Vec<Value> = fields
        .iter()
        .map(|(name, rule)| json!({ "required": [name], "properties": { *name: rule.schema(true) } }))
        .collect();
    let properties: Map<String, Value> = fields
        .iter()
        .map(|(name, rule)| (name.to_string(), rule.schema(false)))
        .collect();
    json!({ "type": "object", "properties": properties, "anyOf": one_given,
            "description": "at least one field that is not blank; the others absent, null or blank (unchanged)" })
}
fn lead_changed_resp() -> Value {
    obj(
        &["leadId", "eventId", "sequence"],
        json!({ "leadId": uuid(), "eventId": uuid(), "sequence": { "type": "integer" } }),
    )
}
fn notifications_resp() -> Value {
    obj(
        &["notifications"],
        json!({ "notifications": { "type": "array", "items": obj(&["id", "actionId", "advisorId", "state", "attempts"],
            json!({ "id": uuid(), "actionId": uuid(), "advisorId": text(), "state": { "type": "string", "enum": NotificationState::names() },
                    "attempts": { "type": "integer" }, "msgid": { "type": ["string", "null"] }, "errcode": { "type": ["integer", "null"] } })) } }),
    )
}
fn advisors_resp() -> Value {
    let advisor = obj(
        &["advisorId", "bindings", "credits", "waiting", "failed"],
        json!({ "advisorId": text(), "bindings": { "type": "array", "items": binding_resp() },
                "credits": { "type": "array" }, "waiting": { "type": "integer" }, "failed": { "type": "integer" } }),
    );
    obj(
        &["advisors"],
        json!({ "advisors": { "type": "array", "items": advisor } }),
    )
}
fn dead_letter_resp() -> Value {
    obj(
        &[
            "seq", "storedAt", "consumer", "reason", "original", "headers",
        ],
        json!({ "seq": { "type": "integer" }, "storedAt": text(), "consumer": text(), "reason": text(),
                "original": obj(&["subject"], json!({ "subject": text() })), "headers": { "type": "object" },
                "event": { "type": "object" }, "decodeError": text() }),
    )
}
fn dead_letters_resp() -> Value {
    obj(
        &["deadLetters", "total"],
        json!({ "deadLetters": { "type": "array", "items": dead_letter_resp() }, "total": { "type": "integer" } }),
    )
}
fn dlq_retried_resp() -> Value {
    obj(
        &["seq", "subject", "newSequence"],
        json!({ "seq": { "type": "integer" }, "subject": text(), "newSequence": { "type": "integer" } }),
    )
}
fn dlq_purged_resp() -> Value {
    obj(&["seq"], json!({ "seq": { "type": "integer" } }))
}
fn retried_resp() -> Value {
    obj(&["requeued"], json!({ "requeued": { "type": "integer" } }))
}
fn sending_req() -> Value {
    obj(
        &["paused"],
        json!({ "paused": { "type": "boolean" }, "minutes": { "type": ["integer", "null"], "minimum": 1, "maximum": 10080, "description": "how long a pause lasts (until resumed when absent)" },
                "reason": validate::SOURCE.schema(false) }),
    )
}
fn sending_resp() -> Value {
    obj(&["paused"], json!({ "paused": { "type": "boolean" } }))
}
fn overview_resp() -> Value {
    obj(
        &["leads", "messages", "queue", "consumers", "deadLetters"],
        json!({ "leads": obj(&["actionsPerHour", "actionsLastMinute", "leadsLast24h", "leadsTotal"], json!({})),
                "messages": obj(&["sentPerHour", "recentErrors"], json!({})),
                "queue": obj(&["byState", "pause"], json!({})),
                "consumers": { "type": "array", "items": obj(&["name", "pending", "ackPending"], json!({})) },
                "deadLetters": { "type": "array", "items": obj(&["consumer", "count"], json!({})) } }),
    )
}
fn user_resp() -> Value {
    obj(
        &["username", "role", "disabled"],
        json!({ "username": text(), "role": { "type": "string", "enum": ["admin", "sales"] },
                "advisorId": { "type": ["string", "null"] }, "disabled": { "type": "boolean" } }),
    )
}
fn users_resp() -> Value {
    obj(
        &["users"],
        json!({ "users": { "type": "array", "items": user_resp() } }),
    )
}
fn user_req() -> Value {
    obj(
        &["username", "role"],
        json!({ "username": { "type": "string", "minLength": 1, "maxLength": 64, "pattern": routes::staff::USERNAME_PATTERN },
                "role": { "type": "string", "enum": ["admin", "sales"] }, "advisorId": validate::ID.schema(false) }),
    )
}
fn user_created_resp() -> Value {
    obj(
        &["username", "role", "password"],
        json!({ "username": text(), "role": { "type": "string", "enum": ["admin", "sales"] }, "advisorId": { "type": ["string", "null"] },
                "password": { "type": "string", "description": "generated; shown this once" } }),
    )
}
fn user_change_req() -> Value {
    json!({ "type": "object", "properties": { "disabled": { "type": ["boolean", "null"] },
            "role": { "type": ["string", "null"], "enum": ["admin", "sales", null] }, "advisorId": validate::ID.schema(false) } })
}
fn health_resp() -> Value {
    obj(
        &["status", "service", "nats", "stream", "database"],
        json!({ "status": { "type": "string", "enum": ["ok", "degraded"] }, "service": text(), "version": text(),
                "nats": { "type": "string", "enum": ["connected", "disconnected"] }, "stream": { "type": "object" },
                "database": { "type": "string", "enum": ["ok", "unavailable"] } }),
    )
}
/// What `POST /api/advisor-settings` takes as `quietHours` (besides null).
pub const QUIET_HOURS_PATTERN: &str =
    "^(off|([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9])$";
fn settings_req() -> Value {
    obj(
        &["advisorId"],
        json!({ "advisorId": validate::ID.schema(true),
                "quietHours": { "type": ["string", "null"], "pattern": QUIET_HOURS_PATTERN, "description": "HH:MM-HH:MM (Beijing time; an empty window such as 22:00-22:00 is off), off, or null" } }),
    )
}
fn settings_resp() -> Value {
    obj(
        &["advisorId", "quietHours"],
        json!({ "advisorId": text(), "quietHours": { "type": ["string", "null"] },
                "updatedBy": { "type": ["string", "null"] }, "updatedAt": { "type": ["string", "null"], "format": "date-time" } }),
    )
}
fn push_req() -> Value {
    json!({ "type": "object", "description": "WeChat's push as WeChat sends it (JSON shown; XML is accepted too); in safe mode only ToUserName and Encrypt",
        "properties": { "ToUserName": text(), "FromUserName": text(), "CreateTime": { "type": ["integer", "string"] }, "MsgType": text(), "Event": text(),
            "List": { "type": ["object", "array"] }, "Encrypt": text() } })
}
fn push_resp() -> Value {
    json!({ "type": "string", "description": "success, or for the URL check the echostr" })
}
/// The query WeChat signs its pushes with.
fn push_params(post: bool) -> Value {
    let q = |name: &str, required: bool, description: &str| json!({ "name": name, "in": "query", "required": required, "description": description, "schema": { "type": "string", "minLength": 1, "maxLength": 256 } });
    let mut params = vec![
        q(
            "signature",
            true,
            "SHA-1 of the sorted [Token, timestamp, nonce]",
        ),
        q(
            "timestamp",
            true,
            "Unix seconds; refused when more than 5 minutes from now",
        ),
        q("nonce", true, ""),
    ];
    params[1]["schema"]["pattern"] = json!("^[0-9]{1,12}$");
    if post {
        params.push(q("encrypt_type", false, "aes in safe mode"));
        params.push(q(
            "msg_signature",
            false,
            "safe mode: SHA-1 of the sorted [Token, timestamp, nonce, Encrypt]",
        ));
        params.push(q(
            "openid",
            false,
            "sent by WeChat; the openid used is the signed FromUserName",
        ));
    } else {
        params.push(q(
            "echostr",
            true,
            "answered as is when the signature is ours",
        ));
    }
    Value::Array(params)
}
fn document_resp() -> Value {
    obj(
        &["openapi", "paths"],
        json!({ "openapi": text(), "paths": { "type": "object" } }),
    )
}

/// The success answer of `e`: the envelope around its `data`, or the document itself.
fn success(e: &Endpoint) -> Value {
    let data = (e.response)();
    if e.auth == "wechat-signature" {
        return json!({ "description": e.summary, "content": { "text/plain": { "schema": data } } });
    }
    let schema = if e.path == "/api/openapi.json" {
        data
    } else {
        json!({ "allOf": [{ "$ref": "#/components/schemas/Success" }, obj(&["data"], json!({ "data": data }))] })
    };
    json!({ "description": e.summary, "content": { "application/json": { "schema": schema } } })
}

pub fn build() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let mut op = json!({
            "summary": e.summary,
            "responses": {
                "2XX": success(e),
                "default": { "description": "Error envelope (400, 401, 403, 404, 409, 413, 429, 502, 503)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if let Some(req) = e.request {
            op["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": req() } } });
        }
        match e.auth {
            "staff" | "admin" => {
                op["security"] = json!([{ "staffToken": [] }, { "staffCookie": [] }])
            }
            "session" => op["security"] = json!([{}, { "sessionToken": [] }]),
            "session-required" => op["security"] = json!([{ "sessionToken": [] }]),
            "staff-or-session" => {
                op["security"] = json!([{ "staffToken": [] }, { "sessionToken": [] }])
            }
            _ => {}
        }
        if e.auth == "wechat-signature" {
            op["parameters"] = push_params(e.method == "post");
        }
        if e.path == "/api/advisor-settings" && e.method == "get" {
            op["parameters"] = json!([{ "name": "advisorId", "in": "query", "required": true, "schema": validate::ID.schema(true) }]);
        }
        if let Some(params) = query_params(e) {
            op["parameters"] = params;
        }
        if e.path.contains("{seq}") {
            op["parameters"] = json!([{ "name": "seq", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[1-9][0-9]{0,18}$" } }]);
        }
        if e.path.contains("{name}") {
            op["parameters"] = json!([{ "name": "name", "in": "path", "required": true, "schema": validate::USERNAME.schema(true) }]);
        }
        if e.path.contains("{id}") {
            op["parameters"] = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }]);
        }
        if [
            "/api/customer/action",
            "/api/advisor/subscribe",
            "/api/message/send",
        ]
        .contains(&e.path)
        {
            op["parameters"] = json!([{ "name": "Idempotency-Key", "in": "header", "required": false, "schema": idempotency::schema() }]);
        }
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Ande gateway", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sessionToken": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "aud ande-miniprogram, from /api/wechat/openid" },
                "staffToken": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "aud ande-staff, from /api/auth/login" },
                "staffCookie": { "type": "apiKey", "in": "cookie", "name": "ande_staff", "description": "the console's session (POST /api/staff/session); a change made with it must also send the x-ande-console header" }
            },
            "schemas": {
                "Success": { "type": "object", "properties": { "success": { "type": "boolean" }, "data": {}, "message": { "type": "string" }, "timestamp": { "type": "integer" }, "requestId": { "type": "string" } } },
                "Error": { "type": "object", "properties": { "success": { "type": "boolean" }, "message": { "type": "string" }, "error": { "type": "object", "properties": { "code": { "type": "string" }, "details": {} } }, "timestamp": { "type": "integer" }, "requestId": { "type": "string" } } }
            }
        }
    })
}

/// The document never changes while the process runs: built and encoded once, then served as
/// bytes (it was rebuilt per request: ~14,500 req/s).
pub async fn document() -> axum::response::Response {
    use axum::response::IntoResponse;
    static ENCODED: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    let body = ENCODED.get_or_init(|| bytes::Bytes::from(build().to_string()));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response()
}
