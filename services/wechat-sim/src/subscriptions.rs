//! Subscribe messages: templates, the users' one-time credits, and the log of accepted messages.
//!
//! In WeChat a one-time subscription is a credit: each accept in `wx.requestSubscribeMessage`
//! allows one message of that template to that user, and WeChat offers no way to read the count.
//! The simulator keeps the count (so tests can read it through `/sim/credits`) and checks a send
//! the way WeChat does: the recipient, the template, the enumerations, every keyword value
//! against its type's limit (with the very validator the notifier uses, from `ande_wechat`), and
//! only then the credit. What it accepts is logged for tests to read back.

use std::collections::{BTreeMap, HashMap};

use ande_wechat::keywords::{self, KeywordType};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids;
use crate::wire::{errcode, WxError};

/// `miniprogram_state` values WeChat accepts.
pub const MINIPROGRAM_STATES: [&str; 3] = ["developer", "trial", "formal"];
/// `lang` values WeChat accepts.
pub const LANGS: [&str; 4] = ["zh_CN", "en_US", "zh_HK", "zh_TW"];

/// The template registered at start and kept across resets: the fields of the original system.
pub fn dev_template() -> Template {
    Template {
        template_id: ande_wechat::DEV_TEMPLATE_ID.to_string(),
        keywords: ["thing1", "time2", "thing3", "thing7"]
            .map(String::from)
            .to_vec(),
        long_term: false,
    }
}

/// A subscribe-message template of the app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub template_id: String,
    /// Keyword names in template order, e.g. `["thing1", "time2"]`; the prefix is the type.
    pub keywords: Vec<String>,
    /// Long-term (长期) templates need no credit.
    #[serde(default)]
    pub long_term: bool,
}

impl Template {
    /// Why this template could not exist in WeChat, if it could not.
    pub fn problem(&self) -> Option<String> {
        if self.template_id.trim().is_empty() {
            return Some("template_id is empty".into());
        }
        if self.keywords.is_empty() {
            return Some("a template has at least one keyword".into());
        }
        for (i, keyword) in self.keywords.iter().enumerate() {
            if KeywordType::of(keyword).is_none() {
                return Some(format!(
                    "keyword {keyword:?} has no known type (thing1, time2, …)"
                ));
            }
            if self.keywords[..i].contains(keyword) {
                return Some(format!("keyword {keyword:?} appears twice"));
            }
        }
        None
    }
}

/// The body of `POST /cgi-bin/message/subscribe/send`, every field optional so that a missing one
/// gets WeChat's errcode rather than a parse failure.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SendRequest {
    pub touser: Option<String>,
    pub template_id: Option<String>,
    pub page: Option<String>,
    pub data: Option<Value>,
    pub miniprogram_state: Option<String>,
    pub lang: Option<String>,
}

/// A message WeChat accepted, with every field of its request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SentMessage {
    pub msgid: u64,
    pub received_at: DateTime<Utc>,
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    pub data: Value,
    pub miniprogram_state: Option<String>,
    pub lang: Option<String>,
}

/// Templates, credits and accepted messages.
#[derive(Debug)]
pub struct Subscriptions {
    templates: BTreeMap<String, Template>,
    credits: HashMap<(String, String), u64>,
    sent: Vec<SentMessage>,
    next_msgid: u64,
}

impl Default for Subscriptions {
    fn default() -> Self {
        let mut subs = Self {
            templates: BTreeMap::new(),
            credits: HashMap::new(),
            sent: Vec::new(),
            // Real msgids are large numbers; start somewhere random so tests cannot hard-code one.
            next_msgid: rand::thread_rng()
                .gen_range(1_000_000_000_000_000_000..2_000_000_000_000_000_000),
        };
        subs.register(dev_template());
        subs
    }
}

impl Subscriptions {
    /// Add or replace a template. Call [`Template::problem`] first.
    pub fn register(&mut self, template: Template) {
        self.templates
            .insert(template.template_id.clone(), template);
    }

    pub fn templates(&self) -> Vec<Template> {
        self.templates.values().cloned().collect()
    }

    pub fn template(&self, template_id: &str) -> Option<&Template> {
        self.templates.get(template_id)
    }

    /// What a user's accept does: one more credit. Returns the credits now left.
    pub fn grant(&mut self, openid: &str, template_id: &str, count: u64) -> u64 {
        let left = self
            .credits
            .entry((openid.to_string(), template_id.to_string()))
            .or_default();
        *left = left.saturating_add(count);
        *left
    }

    /// No more sends of this template to this user until they accept again.
    pub fn turn_off(&mut self, openid: &str, template_id: &str) {
        self.credits
            .insert((openid.to_string(), template_id.to_string()), 0);
    }

    pub fn credits(&self, openid: &str, template_id: &str) -> u64 {
        self.credits
            .get(&(openid.to_string(), template_id.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Accepted messages, oldest first, to one user or to all.
    pub fn sent(&self, touser: Option<&str>) -> Vec<SentMessage> {
        self.sent
            .iter()
            .filter(|m| touser.is_none_or(|t| m.touser == t))
            .cloned()
            .collect()
    }

    /// Check a send as WeChat does and, if it passes, spend the credit and log it.
    pub fn send(&mut self, req: SendRequest, now: DateTime<Utc>) -> Result<u64, WxError> {
        let touser = req.touser.as_deref().unwrap_or_default();
        if !ids::is_openid_shaped(touser) {
            return Err(WxError::of(errcode::INVALID_OPENID));
        }
        let template_id = req.template_id.as_deref().unwrap_or_default();
        let Some(template) = self.templates.get(template_id) else {
            return Err(WxError::of(errcode::INVALID_TEMPLATE_ID));
        };
        if req
            .miniprogram_state
            .as_deref()
            .is_some_and(|s| !MINIPROGRAM_STATES.contains(&s))
        {
            return Err(WxError::argument_invalid("miniprogram_state"));
        }
        if req.lang.as_deref().is_some_and(|l| !LANGS.contains(&l)) {
            return Err(WxError::argument_invalid("lang"));
        }
        let data = req.data.clone().unwrap_or(Value::Null);
        check_data(template, &data)?;

        let long_term = template.long_term;
        if !long_term {
            let key = (touser.to_string(), template_id.to_string());
            match self.credits.get_mut(&key) {
                Some(left) if *left > 0 => *left -= 1,
                _ => return Err(WxError::of(errcode::USER_REFUSED)),
            }
        }
        let msgid = self.next_msgid;
        self.next_msgid += 1;
        self.sent.push(SentMessage {
            msgid,
            received_at: now,
            touser: touser.to_string(),
            template_id: template_id.to_string(),
            page: req.page,
            data,
            miniprogram_state: req.miniprogram_state,
            lang: req.lang,
        });
        Ok(msgid)
    }
}

/// Every keyword of the template carries `{"value": "…"}` valid for its type, and no other key is
/// present; the first offender (in template order, then unknown keys) is named in the 47003.
fn check_data(template: &Template, data: &Value) -> Result<(), WxError> {
    let Some(data) = data.as_object().filter(|d| !d.is_empty()) else {
        return Err(WxError::argument_invalid("data"));
    };
    for keyword in &template.keywords {
        let value = data
            .get(keyword)
            .and_then(|v| v.get("value"))
            .and_then(Value::as_str);
        let Some(value) = value else {
            return Err(WxError::argument_invalid(&format!("data.{keyword}.value")));
        };
        if let Err(e) = keywords::validate(keyword, value) {
            tracing::debug!(template_id = %template.template_id, reason = %e, "keyword value refused");
            return Err(WxError::argument_invalid(&format!("data.{keyword}.value")));
        }
    }
    if let Some(unknown) = data.keys().find(|k| !template.keywords.contains(k)) {
        return Err(WxError::argument_invalid(&format!("data.{unknown}.value")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const USER: &str = "oUser000000000000000000000001";

    fn request(data: Value) -> SendRequest {
        SendRequest {
            touser: Some(USER.into()),
            template_id: Some(ande_wechat::DEV_TEMPLATE_ID.into()),
            data: Some(data),
            ..SendRequest::default()
        }
    }

    fn good_data() -> Value {
        json!({
            "thing1": {"value": "客户查看了您的简历"},
            "time2": {"value": "2024年05月01日 15:01"},
            "thing3": {"value": "13800138000"},
            "thing7": {"value": "张三"},
        })
    }

    fn errcode_of(r: Result<u64, WxError>) -> (i64, String) {
        r.map_or_else(|e| (e.errcode, e.errmsg), |_| (0, String::new()))
    }

    #[test]
    fn a_send_spends_one_credit_and_gets_a_msgid() {
        let mut subs = Subscriptions::default();
        subs.grant(USER, ande_wechat::DEV_TEMPLATE_ID, 2);
        let a = subs.send(request(good_data()), Utc::now()).unwrap();
        let b = subs.send(request(good_data()), Utc::now()).unwrap();
        assert_eq!(b, a + 1);
        assert_eq!(subs.credits(USER, ande_wechat::DEV_TEMPLATE_ID), 0);
        assert_eq!(
            errcode_of(subs.send(request(good_data()), Utc::now())).0,
            43101
        );
        assert_eq!(subs.sent(Some(USER)).len(), 2);
        assert!(subs.sent(Some("oOther")).is_empty());
    }

    #[test]
    fn data_problems_name_the_field_and_cost_nothing() {
        let mut subs = Subscriptions::default();
        subs.grant(USER, ande_wechat::DEV_TEMPLATE_ID, 1);
        let cases = [
            (
                "thing3",
                json!({"value": "一二三四五六七八九十一二三四五六七八九十一"}),
            ),
            ("time2", json!({"value": "tomorrow"})),
            ("thing7", json!({"value": ""})),
            ("thing1", json!("no value object")),
        ];
        for (keyword, bad) in cases {
            let mut data = good_data();
            data[keyword] = bad;
            let (code, msg) = errcode_of(subs.send(request(data), Utc::now()));
            assert_eq!(code, 47003, "{keyword}");
            assert_eq!(
                msg,
                format!("argument invalid! data.{keyword}.value invalid")
            );
        }
        let mut data = good_data();
        data.as_object_mut().unwrap().remove("thing7");
        assert_eq!(
            errcode_of(subs.send(request(data), Utc::now())).1,
            "argument invalid! data.thing7.value invalid"
        );
        let mut data = good_data();
        data["thing9"] = json!({"value": "x"});
        assert_eq!(
            errcode_of(subs.send(request(data), Utc::now())).1,
            "argument invalid! data.thing9.value invalid"
        );
        assert_eq!(subs.credits(USER, ande_wechat::DEV_TEMPLATE_ID), 1);
    }

    #[test]
    fn recipient_template_and_enumerations_are_checked() {
        let mut subs = Subscriptions::default();
        let mut r = request(good_data());
        r.touser = Some(String::new());
        assert_eq!(errcode_of(subs.send(r, Utc::now())).0, 40003);
        let mut r = request(good_data());
        r.template_id = Some("nope".into());
        assert_eq!(errcode_of(subs.send(r, Utc::now())).0, 40037);
        let mut r = request(good_data());
        r.miniprogram_state = Some("release".into());
        assert_eq!(errcode_of(subs.send(r, Utc::now())).0, 47003);
        let mut r = request(good_data());
        r.lang = Some("fr_FR".into());
        assert_eq!(errcode_of(subs.send(r, Utc::now())).0, 47003);
    }

    #[test]
    fn long_term_templates_need_no_credit() {
        let mut subs = Subscriptions::default();
        subs.register(Template {
            template_id: "lt".into(),
            keywords: vec!["thing1".into()],
            long_term: true,
        });
        let mut r = request(json!({"thing1": {"value": "ok"}}));
        r.template_id = Some("lt".into());
        assert!(subs.send(r, Utc::now()).is_ok());
    }

    #[test]
    fn templates_with_unknown_types_are_refused() {
        let t = Template {
            template_id: "t".into(),
            keywords: vec!["colour1".into()],
            long_term: false,
        };
        assert!(t.problem().is_some());
        assert!(dev_template().problem().is_none());
    }
}
