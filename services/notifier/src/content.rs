//! What a notification says: the seed's texts, fitted to WeChat's keyword limits.

use ande_events::{from_timestamp, LeadOutcome};
use ande_wechat::keywords::{self, fit, format_time};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use crate::config::NotifierConfig;

/// The seed's action text: 新客户… when the action created the lead, 客户… otherwise.
pub fn action_text(action_type: &str, new_customer: bool) -> String {
    let base = match action_type {
        "view_resume" => "客户查看了您的简历",
        "contact_advisor" => "客户想要联系您",
        "book_service" => "客户预约了您的服务",
        _ => "客户进行了操作",
    };
    if new_customer {
        format!("新{base}")
    } else {
        base.to_string()
    }
}

/// The action text when the customer's earlier browsing (of `advisors` advisors' resumes)
/// joined their lead with this action: shortened so that both fit a `thing` (20 characters).
pub fn history_text(action_type: &str, new_customer: bool, advisors: i32) -> String {
    let base = match action_type {
        "view_resume" => "客户查看简历",
        "contact_advisor" => "客户想联系您",
        "book_service" => "客户预约服务",
        _ => "客户有新动作",
    };
    let new = if new_customer { "新" } else { "" };
    format!("{new}{base}，此前浏览{advisors}位顾问简历")
}

/// The owner's text when their customer acted on another advisor's resume.
pub fn owner_text(action_type: &str) -> &'static str {
    match action_type {
        "view_resume" => "您的客户查看了其他顾问简历",
        "contact_advisor" => "您的客户想联系其他顾问",
        "book_service" => "您的客户预约了其他顾问",
        _ => "您的客户有新动态",
    }
}

/// Who a message about an action is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The advisor whose resume the customer acted on, who owns the lead (or there is none).
    Viewed,
    /// The lead's owner, hearing that their customer acted on another advisor's resume.
    Owner,
    /// The viewed advisor when the customer is another advisor's lead: no phone, no name, and
    /// the page names the customer, not the lead.
    Redacted,
}

/// Keyword values and page of the message for one action outcome, for `audience`.
pub fn for_outcome(
    config: &NotifierConfig,
    o: &LeadOutcome,
    audience: Audience,
) -> (BTreeMap<String, String>, String) {
    let f = &config.fields;
    let at = from_timestamp(o.action_at.as_ref()).unwrap_or_else(Utc::now);
    let text = match audience {
        Audience::Owner => owner_text(&o.action_type).to_string(),
        Audience::Viewed if o.linked_advisors > 0 => {
            history_text(&o.action_type, o.is_new_customer, o.linked_advisors)
        }
        _ => action_text(&o.action_type, o.is_new_customer),
    };
    let (phone, name) = match audience {
        Audience::Redacted => ("", ""),
        _ => (o.customer_phone.as_str(), o.customer_name.as_str()),
    };
    let mut data = BTreeMap::new();
    data.insert(f.action.clone(), fit(&f.action, &text));
    data.insert(f.time.clone(), format_time(at));
    data.insert(f.phone.clone(), fit(&f.phone, or_placeholder(phone)));
    data.insert(f.name.clone(), fit(&f.name, or_placeholder(name)));
    let id = if o.lead_id.is_empty() || audience == Audience::Redacted {
        &o.customer_id
    } else {
        &o.lead_id
    };
    (
        data,
        config
            .page
            .replace("{id}", &ande_platform::config::percent_encode(id)),
    )
}

/// A digest: how many customer actions waited, the latest one's phone and name.
pub fn for_digest(
    config: &NotifierConfig,
    count: usize,
    digest_id: &str,
    latest_phone: &str,
    latest_name: &str,
    at: DateTime<Utc>,
) -> (BTreeMap<String, String>, String) {
    let f = &config.fields;
    let mut data = BTreeMap::new();
    data.insert(
        f.action.clone(),
        fit(&f.action, &format!("{count}条客户动态等您查看")),
    );
    data.insert(f.time.clone(), format_time(at));
    data.insert(f.phone.clone(), fit(&f.phone, or_placeholder(latest_phone)));
    data.insert(f.name.clone(), fit(&f.name, or_placeholder(latest_name)));
    (data, config.digest_page.replace("{digest}", digest_id))
}

fn or_placeholder(s: &str) -> &str {
    if s.trim().is_empty() {
        keywords::PLACEHOLDER
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ande_platform::config::Env;

    #[test]
    fn the_history_text_fits_a_thing_keyword() {
        for t in ["view_resume", "contact_advisor", "book_service", "other"] {
            let text = history_text(t, true, 99);
            assert!(text.chars().count() <= 20, "{text}");
            assert_eq!(fit("thing1", &text), text, "not cut");
        }
        assert_eq!(
            history_text("view_resume", false, 3),
            "客户查看简历，此前浏览3位顾问简历"
        );
    }

    #[test]
    fn texts_follow_the_seed() {
        assert_eq!(action_text("view_resume", true), "新客户查看了您的简历");
        assert_eq!(action_text("contact_advisor", false), "客户想要联系您");
        assert_eq!(action_text("book_service", true), "新客户预约了您的服务");
        assert_eq!(action_text("dance", false), "客户进行了操作");
    }

    #[test]
    fn every_value_fits_its_keyword() {
        let config = NotifierConfig::from_env(
            &Env::default().with_default(ande_platform::config::ANDE_ENV, "development"),
        )
        .unwrap();
        let o = LeadOutcome {
            action_type: "view_resume".into(),
            is_new_customer: true,
            customer_name: "欧阳娜娜欧阳娜娜欧阳娜娜欧阳娜娜欧阳娜娜欧阳娜娜".into(),
            customer_phone: "13800138000".into(),
            lead_id: "l 1".into(),
            ..Default::default()
        };
        for audience in [Audience::Owner, Audience::Redacted] {
            let (data, page) = for_outcome(&config, &o, audience);
            for (k, v) in &data {
                keywords::validate(k, v).unwrap_or_else(|e| panic!("{audience:?} {k}={v}: {e}"));
            }
            assert_eq!(
                audience == Audience::Redacted,
                !data.values().any(|v| v.contains("13800138000")) && !page.contains("l%201"),
                "{audience:?}: only the redacted message hides the phone and the lead"
            );
        }
        let (data, page) = for_outcome(&config, &o, Audience::Viewed);
        for (k, v) in &data {
            keywords::validate(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        assert_eq!(data["thing1"], "新客户查看了您的简历");
        assert_eq!(data["thing3"], "13800138000");
        assert_eq!(page, "pages/customer/detail?id=l%201");
        let (digest, _) = for_digest(&config, 12, "d1", "", "", Utc::now());
        assert_eq!(digest["thing1"], "12条客户动态等您查看");
        assert_eq!(digest["thing7"], keywords::PLACEHOLDER);
    }
}
