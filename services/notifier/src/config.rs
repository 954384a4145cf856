//! The notifier's settings.

use std::time::Duration;

use ande_platform::config::{self as cfg, CommonConfig, ConfigError, Env};
use ande_wechat::{TokenMode, WechatConfig};

pub const NOTIFIER_TEMPLATE_ID: &str = "NOTIFIER_TEMPLATE_ID";
pub const NOTIFIER_TEMPLATE_FIELDS: &str = "NOTIFIER_TEMPLATE_FIELDS";
pub const NOTIFIER_PAGE: &str = "NOTIFIER_PAGE";
pub const NOTIFIER_DIGEST_PAGE: &str = "NOTIFIER_DIGEST_PAGE";
pub const NOTIFIER_LONG_TERM_TEMPLATES: &str = "NOTIFIER_LONG_TERM_TEMPLATES";
pub const NOTIFIER_MINIPROGRAM_STATE: &str = "NOTIFIER_MINIPROGRAM_STATE";
pub const NOTIFIER_LANG: &str = "NOTIFIER_LANG";
/// Replaced by `NOTIFIER_MAX_IN_FLIGHT`; still read to warn a deployment that sets it.
pub const NOTIFIER_WORKERS: &str = "NOTIFIER_WORKERS";
pub const NOTIFIER_MAX_IN_FLIGHT: &str = "NOTIFIER_MAX_IN_FLIGHT";
pub const NOTIFIER_CLAIM_BATCH: &str = "NOTIFIER_CLAIM_BATCH";
pub const NOTIFIER_RETRY_FOR: &str = "NOTIFIER_RETRY_FOR";
pub const NOTIFIER_SHUTDOWN_GRACE: &str = "NOTIFIER_SHUTDOWN_GRACE";
pub const NOTIFIER_FOREIGN_LEAD: &str = "NOTIFIER_FOREIGN_LEAD";
pub const NOTIFIER_PRIORITY: &str = "NOTIFIER_PRIORITY";
pub const NOTIFIER_QUIET_HOURS: &str = "NOTIFIER_QUIET_HOURS";
pub const NOTIFIER_URGENT: &str = "NOTIFIER_URGENT";
pub const NOTIFIER_CREDIT_SOURCE: &str = "NOTIFIER_CREDIT_SOURCE";
pub const NOTIFIER_MAX_SINGLES_PER_HOUR: &str = "NOTIFIER_MAX_SINGLES_PER_HOUR";

/// A daily window, Beijing time (UTC+8, as WeChat's users and quotas), during which only urgent
/// notifications are sent; the rest wait and go out as one digest when it ends
/// (`NOTIFIER_QUIET_HOURS=22:00-08:00`; off when empty, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: chrono::NaiveTime,
    pub end: chrono::NaiveTime,
}

impl QuietHours {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not HH:MM-HH:MM"))?;
        let t = |x: &str| {
            chrono::NaiveTime::parse_from_str(x.trim(), "%H:%M")
                .map_err(|_| format!("{x:?} is not HH:MM"))
        };
        let (start, end) = (t(a)?, t(b)?);
        if start == end {
            return Err("an empty window: start and end are equal".into());
        }
        Ok(Self { start, end })
    }

    /// Whether `at` falls in the window (which may span midnight).
    pub fn contains(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset");
        let t = at.with_timezone(&beijing).time();
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// The time, from the system or, in tests, from a hand that moves it.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(std::sync::Arc::new(chrono::Utc::now))
    }
    pub fn from_fn(f: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// Which waiting notification goes as a single message when credits are scarce: categories from
/// the most valuable down (`NOTIFIER_PRIORITY`, default
/// `book_service>contact_advisor>new_customer>repeat_view`; `new_customer` is a view by a
/// customer whose lead it created, `repeat_view` any other view).
#[derive(Debug, Clone, PartialEq)]
pub struct Priority(Vec<String>);

impl Default for Priority {
    fn default() -> Self {
        Self::parse("book_service>contact_advisor>new_customer>repeat_view").expect("valid")
    }
}

impl Priority {
    const CATEGORIES: [&'static str; 4] = [
        "book_service",
        "contact_advisor",
        "new_customer",
        "repeat_view",
    ];

    pub fn parse(s: &str) -> Result<Self, String> {
        let order: Vec<String> = s.split('>').map(|c| c.trim().to_string()).collect();
        for c in &order {
            if !Self::CATEGORIES.contains(&c.as_str()) {
                return Err(format!(
                    "{c:?} is not one of {}",
                    Self::CATEGORIES.join(", ")
                ));
            }
        }
        if Self::CATEGORIES
            .iter()
            .any(|c| !order.iter().any(|o| o == c))
            || order.len() != 4
        {
            return Err(format!("name each of {} once", Self::CATEGORIES.join(", ")));
        }
        Ok(Self(order))
    }

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw = env.string(NOTIFIER_PRIORITY, "");
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        Self::parse(&raw).map_err(|reason| ConfigError {
            var: NOTIFIER_PRIORITY.into(),
            shown: raw.clone(),
            reason,
        })
    }

    /// Higher is more valuable.
    pub fn rank(&self, action_type: &str, new_customer: bool) -> usize {
        let category = match action_type {
            "book_service" | "contact_advisor" => action_type,
            _ if new_customer => "new_customer",
            _ => "repeat_view",
        };
        let at = self
            .0
            .iter()
            .position(|c| c == category)
            .unwrap_or(self.0.len());
        self.0.len() - at
    }
}

/// Who hears of an action by a customer who is another advisor's lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignLead {
    /// Only the lead's owner (their customer is active again); the advisor whose resume was
    /// viewed hears nothing, so a competitor never gets the customer's phone.
    Owner,
    /// The owner, and the viewed advisor without the customer's phone and name.
    Both,
    /// Only the viewed advisor, with phone and name (the original system's behaviour).
    Viewed,
}
/// Where send credits come from (`NOTIFIER_CREDIT_SOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditSource {
    /// The mini-program's report of `wx.requestSubscribeMessage` (`POST /api/advisor/subscribe`),
    /// for deployments without WeChat's message push. The default.
    Client,
    /// Only WeChat's own `subscribe_msg_popup_event` pushes add credits: a client report is
    /// recorded but adds none (a client cannot mint credits, and an accept is never counted
    /// twice when both arrive).
    Events,
}

impl CreditSource {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(
            match one_of(env, NOTIFIER_CREDIT_SOURCE, &["client", "events"])?.as_str() {
                "events" => Self::Events,
                _ => Self::Client,
            },
        )
    }
}

pub const NOTIFIER_ANONYMOUS_PER_HOUR: &str = "NOTIFIER_ANONYMOUS_PER_HOUR";
pub const NOTIFIER_MAX_WAITING: &str = "NOTIFIER_MAX_WAITING";
pub const NOTIFIER_MAX_ATTEMPTS: &str = "NOTIFIER_MAX_ATTEMPTS";
pub const NOTIFIER_RETRY_BACKOFF: &str = "NOTIFIER_RETRY_BACKOFF";
pub const NOTIFIER_STALE_AFTER: &str = "NOTIFIER_STALE_AFTER";

/// First retry of a retryable failure after 2 s, then 4 s, 8 s …: WeChat's busy (-1) and
/// minute-quota (45011) answers clear within seconds to a minute.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// A claim older than this is presumed abandoned by a crashed process. It must exceed the WeChat
/// request timeout by a wide margin, or a slow but live send would be sent a second time.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(120);
/// Transient failures are retried for an hour: a WeChat outage of minutes fails nothing.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(3600);
/// Below docker compose's (10 s, which our compose file raises) and Kubernetes' (30 s) default
/// wait before SIGKILL, and above one WeChat request timeout (5 s), so a send in flight finishes.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Sends in flight per process: at WeChat's ~20 ms from China that allows ~12,800 sends/s,
/// well above what one process's Postgres round trips allow; the pool of HTTP connections
/// grows to this.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Notifications claimed per transaction.
pub const DEFAULT_CLAIM_BATCH: usize = 256;

/// Which keyword of the template carries which piece of the notification.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateFields {
    pub action: String,
    pub time: String,
    pub phone: String,
    pub name: String,
}

impl Default for TemplateFields {
    /// The seed's mapping: thing1 action text, time2 time, thing3 phone, thing7 name.
    fn default() -> Self {
        Self {
            action: "thing1".into(),
            time: "time2".into(),
            phone: "thing3".into(),
            name: "thing7".into(),
        }
    }
}

impl TemplateFields {
    /// `action=thing1,time=time2,phone=thing3,name=thing7`; omitted parts keep the default.
    pub fn parse(s: &str) -> Result<Self, String> {
        use ande_wechat::keywords::KeywordType as K;
        let mut f = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not role=keyword"))?;
            let v = v.trim().to_string();
            let Some(kind) = K::of(&v) else {
                return Err(format!(
                    "{v:?} is not a WeChat keyword name (thing1, time2, …)"
                ));
            };
            // Only types our values can be fitted to: anything else would fail every send
            // with 47003 instead of failing here, at start.
            let (slot, fits) = match k.trim() {
                "action" => (&mut f.action, matches!(kind, K::Thing)),
                "time" => (&mut f.time, matches!(kind, K::Time | K::Date)),
                "phone" => (
                    &mut f.phone,
                    matches!(kind, K::Thing | K::PhoneNumber | K::CharacterString),
                ),
                "name" => (&mut f.name, matches!(kind, K::Thing | K::Name)),
                other => {
                    return Err(format!(
                        "unknown role {other:?}; use action, time, phone, name"
                    ))
                }
            };
            if !fits {
                return Err(format!(
                    "{v:?} is a {kind:?} keyword, which cannot carry the {} role",
                    k.trim()
                ));
            }
            *slot = v;
        }
        let all = [&f.action, &f.time, &f.phone, &f.name];
        if (1..all.len()).any(|i| all[..i].contains(&all[i])) {
            return Err("two roles share one keyword".into());
        }
        Ok(f)
    }
}

#[derive(Clone, Debug)]
pub struct NotifierConfig {
    pub common: CommonConfig,
    /// The admin listener (`METRICS_ADDR`: /metrics, /healthz, /readyz); none when `off`.
    pub admin_addr: Option<std::net::SocketAddr>,
    pub wechat: WechatConfig,
    pub template_id: String,
    pub fields: TemplateFields,
    /// Page opened from a message; `{id}` is the lead (or customer) id.
    pub page: String,
    /// Page opened from a digest; `{digest}` is the digest id.
    pub digest_page: String,
    /// Templates with long-term subscriptions (no credit needed).
    pub long_term_templates: Vec<String>,
    pub miniprogram_state: String,
    pub lang: String,
    /// Most notifications one process holds claimed (being sent, or next in their advisor's
    /// line), and so the most sends in flight (`NOTIFIER_MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
    /// Most notifications claimed in one transaction (`NOTIFIER_CLAIM_BATCH`).
    pub claim_batch: usize,
    /// Most notifications kept waiting for credit per advisor; beyond it they are dropped (logged).
    pub max_waiting: i64,
    /// Sends an advisor's anonymous notifications may take per hour (`NOTIFIER_ANONYMOUS_PER_HOUR`);
    /// above it they wait and go out folded into the next digest.
    pub anonymous_per_hour: i64,
    /// Attempts abandoned by a crashed or hung process before the notification is failed
    /// rather than re-queued (`NOTIFIER_MAX_ATTEMPTS`).
    pub max_attempts: i32,
    /// Transient failures are retried until this long after the first one (`NOTIFIER_RETRY_FOR`).
    pub retry_for: Duration,
    /// First retry delay; doubles with each attempt, capped at 5 minutes, ±20 % jitter.
    pub retry_backoff: Duration,
    /// On SIGTERM: sends in flight may finish within this (`NOTIFIER_SHUTDOWN_GRACE`); those not
    /// started are handed back to the queue at once.
    pub shutdown_grace: Duration,
    /// A claimed notification not finished after this long is assumed abandoned by a crashed
    /// worker and sent again (see `dispatch`). Kept at or above five WeChat timeouts.
    pub stale_after: Duration,
    /// Idle workers look at the queue this often (work queued by other processes, due retries).
    pub poll_every: Duration,
    /// The sweep (release of waiting notifications, recovery of abandoned sends) runs this
    /// often, and at once when a subscription change arrives in this process.
    pub sweep_every: Duration,
    /// `NOTIFIER_FOREIGN_LEAD` (default `owner`).
    pub foreign_lead: ForeignLead,
    /// `NOTIFIER_PRIORITY`.
    pub priority: Priority,
    /// `NOTIFIER_QUIET_HOURS`; `None`: no quiet hours.
    pub quiet_hours: Option<QuietHours>,
    /// Action types sent even in quiet hours (`NOTIFIER_URGENT`, default `book_service`).
    pub urgent: Vec<String>,
    /// What quiet hours are checked against.
    pub clock: Clock,
    /// `NOTIFIER_CREDIT_SOURCE`.
    pub credit_source: CreditSource,
    /// Single messages (not digests) per advisor per rolling hour (`NOTIFIER_MAX_SINGLES_PER_HOUR`;
    /// 0, the default: no cap). Beyond it notifications wait and fold into a digest, so an
    /// advisor's credits last through the day.
    pub max_singles_per_hour: i64,
    /// Settings that are set but no longer read; `run` warns about each (logging starts after
    /// the configuration is read).
    pub obsolete: Vec<&'static str>,
}

/// The WeChat client's settings: API base, app id and secret, token mode.
fn wechat_from_env(env: &Env) -> Result<WechatConfig, ConfigError> {
    let token_mode = match env.get(cfg::WECHAT_TOKEN_MODE) {
        None => TokenMode::Stable,
        Some(m) => m.parse().map_err(|_| ConfigError {
            var: cfg::WECHAT_TOKEN_MODE.into(),
            shown: m.into(),
            reason: "expected stable or classic".into(),
        })?,
    };
    let mut wechat = WechatConfig::new(
        env.string(cfg::WECHAT_API_BASE, cfg::DEFAULT_WECHAT_API_BASE),
        env.string(cfg::WECHAT_APP_ID, cfg::DEFAULT_APP_ID),
        env.secret(cfg::WECHAT_APP_SECRET, cfg::DEFAULT_APP_SECRET),
    );
    wechat.token_mode = token_mode;
    Ok(wechat)
}

impl NotifierConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let bad = |var: &str, shown: &str, reason: String| ConfigError {
            var: var.into(),
            shown: shown.into(),
            reason,
        };
        let wechat = wechat_from_env(env)?;
        let fields_raw = env.string(NOTIFIER_TEMPLATE_FIELDS, "");
        let fields = TemplateFields::parse(&fields_raw)
            .map_err(|r| bad(NOTIFIER_TEMPLATE_FIELDS, &fields_raw, r))?;
        let state = one_of(
            env,
            NOTIFIER_MINIPROGRAM_STATE,
            &["formal", "developer", "trial"],
        )?;
        let lang = one_of(env, NOTIFIER_LANG, &["zh_CN", "en_US", "zh_HK", "zh_TW"])?;
        let priority = Priority::from_env(env)?;
        let common = CommonConfig::from_env(env)?;
        cfg::refuse_development_wechat(
            &common,
            &wechat.base_url,
            &wechat.app_id,
            &wechat.app_secret,
        )?;
        Ok(Self {
            common,
            admin_addr: ande_platform::admin::addr_from_env(env, "127.0.0.1:9103")?,
            wechat,
            template_id: env.string(NOTIFIER_TEMPLATE_ID, ande_wechat::DEV_TEMPLATE_ID),
            fields,
            page: env.string(NOTIFIER_PAGE, "pages/customer/detail?id={id}"),
            digest_page: env.string(
                NOTIFIER_DIGEST_PAGE,
                "pages/customer/pending?digest={digest}",
            ),
            long_term_templates: list(env, NOTIFIER_LONG_TERM_TEMPLATES),
            miniprogram_state: state,
            lang,
            max_in_flight: env
                .parse(NOTIFIER_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT)?
                .clamp(1, 4096),
            claim_batch: env
                .parse(NOTIFIER_CLAIM_BATCH, DEFAULT_CLAIM_BATCH)?
                .clamp(1, 1024),
            max_waiting: env.parse(NOTIFIER_MAX_WAITING, 50i64)?.max(1),
            anonymous_per_hour: env.parse(NOTIFIER_ANONYMOUS_PER_HOUR, 20i64)?.max(0),
            max_attempts: env.parse(NOTIFIER_MAX_ATTEMPTS, 6i32)?.clamp(1, 50),
            retry_for: env.duration(NOTIFIER_RETRY_FOR, DEFAULT_RETRY_FOR)?,
            retry_backoff: env.duration(NOTIFIER_RETRY_BACKOFF, DEFAULT_RETRY_BACKOFF)?,
            shutdown_grace: env.duration(NOTIFIER_SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE)?,
            stale_after: env.duration(NOTIFIER_STALE_AFTER, DEFAULT_STALE_AFTER)?,
            poll_every: Duration::from_millis(500),
            sweep_every: Duration::from_secs(2),
            foreign_lead: ForeignLead::from_env(env)?,
            priority,
            quiet_hours: quiet_hours(env)?,
            urgent: list_or(env, NOTIFIER_URGENT, &["book_service"]),
            clock: Clock::system(),
            credit_source: CreditSource::from_env(env)?,
            max_singles_per_hour: env.parse(NOTIFIER_MAX_SINGLES_PER_HOUR, 0i64)?.max(0),
            obsolete: [NOTIFIER_WORKERS]
                .into_iter()
                .filter(|v| env.get(v).is_some())
                .collect(),
        })
    }

    /// Defaults, with the given shared settings and WeChat base URL (tests, `andectl up`).
    pub fn with_common(common: CommonConfig, wechat_base: &str) -> Self {
        let dev = Env::default().with_default(cfg::ANDE_ENV, "development");
        let mut c = Self::from_env(&dev).expect("defaults are valid");
        c.common = common;
        c.wechat.base_url = wechat_base.to_string();
        // Many services share a test process: none binds the default admin port.
        c.admin_addr = None;
        c
    }
}

fn quiet_hours(env: &Env) -> Result<Option<QuietHours>, ConfigError> {
    let raw = env.string(NOTIFIER_QUIET_HOURS, "");
    if raw.trim().is_empty() {
        return Ok(None);
    }
    QuietHours::parse(&raw)
        .map(Some)
        .map_err(|reason| ConfigError {
            var: NOTIFIER_QUIET_HOURS.into(),
            shown: raw.clone(),
            reason,
        })
}

/// A comma-separated list; `default` when the variable is not set (set empty: none).
fn list_or(env: &Env, var: &str, default: &[&str]) -> Vec<String> {
    match env.get(var) {
        Some(_) => list(env, var),
        None => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// A comma-separated list (empty by default).
fn list(env: &Env, var: &str) -> Vec<String> {
    env.string(var, "")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl ForeignLead {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(
            match one_of(env, NOTIFIER_FOREIGN_LEAD, &["owner", "both", "viewed"])?.as_str() {
                "both" => Self::Both,
                "viewed" => Self::Viewed,
                _ => Self::Owner,
            },
        )
    }
}

/// The variable's value if it is one of `allowed`; the first is the default.
fn one_of(env: &Env, var: &str, allowed: &[&str]) -> Result<String, ConfigError> {
    let value = env.string(var, allowed[0]);
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    Err(ConfigError {
        var: var.into(),
        shown: value,
        reason: format!("expected one of {}", allowed.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fields_parse_and_refuse_nonsense() {
        assert_eq!(
            TemplateFields::parse("").unwrap(),
            TemplateFields::default()
        );
        let f = TemplateFields::parse("phone=phone_number5, name=name3").unwrap();
        assert_eq!(
            (f.phone.as_str(), f.name.as_str(), f.action.as_str()),
            ("phone_number5", "name3", "thing1")
        );
        assert!(TemplateFields::parse("phone=colour2").is_err());
        assert!(
            TemplateFields::parse("action=phrase1").is_err(),
            "a phrase cannot hold the action text"
        );
        assert!(TemplateFields::parse("time=thing4").is_err());
        assert!(
            TemplateFields::parse("phone=thing1").is_err(),
            "two roles on thing1"
        );
        assert!(TemplateFields::parse("mood=thing1").is_err());
    }

    #[test]
    fn quiet_hours_span_midnight_in_beijing_time() {
        use chrono::TimeZone;
        let q = QuietHours::parse("22:00-08:00").unwrap();
        let utc = |h, m| chrono::Utc.with_ymd_and_hms(2026, 12, 2, h, m, 0).unwrap();
        assert!(q.contains(utc(14, 0)), "22:00 in Beijing");
        assert!(q.contains(utc(23, 59)), "07:59 in Beijing");
        assert!(!q.contains(utc(0, 0)), "08:00 in Beijing");
        assert!(!q.contains(utc(13, 59)), "21:59 in Beijing");
        let day = QuietHours::parse("12:00-13:30").unwrap();
        assert!(day.contains(utc(4, 0)) && !day.contains(utc(5, 30)));
        assert!(QuietHours::parse("22:00").is_err());
        assert!(QuietHours::parse("25:00-08:00").is_err());
        assert!(QuietHours::parse("08:00-08:00").is_err());
    }

    #[test]
    fn priorities_parse_and_rank() {
        let p = Priority::default();
        assert!(p.rank("book_service", false) > p.rank("contact_advisor", true));
        assert!(p.rank("contact_advisor", false) > p.rank("view_resume", true));
        assert!(p.rank("view_resume", true) > p.rank("view_resume", false));
        let q = Priority::parse("new_customer>book_service>contact_advisor>repeat_view").unwrap();
        assert!(q.rank("view_resume", true) > q.rank("book_service", false));
        assert!(
            Priority::parse("book_service>contact_advisor").is_err(),
            "all four"
        );
        assert!(Priority::parse("book_service>x>new_customer>repeat_view").is_err());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err =
            NotifierConfig::from_env(&Env::from_pairs([(NOTIFIER_LANG, "fr_FR")])).unwrap_err();
        assert!(err.to_string().contains(NOTIFIER_LANG));
    }
}
