//! Configuration: read the environment once, into typed settings, failing fast.
//!
//! Every variable name is a constant here so that a reader can grep for it, and parsing works on
//! any map of variables ([`Env`]) so tests never mutate the process environment.
//! The names follow the original system's (`WECHAT_APP_ID`, `API_PORT`, `DB_*`, `JWT_*`) plus
//! `DATABASE_URL`, `NATS_URL` and `WECHAT_API_BASE`. With nothing set, the defaults run on a
//! developer machine of this project's kind (local Postgres with trust auth, local NATS).

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub const NATS_URL: &str = "NATS_URL";
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const DB_HOST: &str = "DB_HOST";
pub const DB_PORT: &str = "DB_PORT";
pub const DB_NAME: &str = "DB_NAME";
pub const DB_USERNAME: &str = "DB_USERNAME";
pub const DB_PASSWORD: &str = "DB_PASSWORD";
pub const EVENT_PREFIX: &str = "ANDE_PREFIX";
pub const EVENT_MAX_AGE: &str = "ANDE_EVENT_MAX_AGE";
/// Copies JetStream keeps of each stream (1, or 3/5 on a cluster): a stream with 3 survives the
/// loss of one server without losing an acknowledged event.
pub const STREAM_REPLICAS: &str = "ANDE_STREAM_REPLICAS";
/// `apply` (default): each service applies its migrations at start; `check`: it only checks them
/// (`andectl migrate` applies them as a deployment step of its own).
pub const MIGRATIONS: &str = "ANDE_MIGRATIONS";
pub const WECHAT_APP_ID: &str = "WECHAT_APP_ID";
pub const WECHAT_APP_SECRET: &str = "WECHAT_APP_SECRET";
pub const WECHAT_API_BASE: &str = "WECHAT_API_BASE";
pub const WECHAT_TOKEN_MODE: &str = "WECHAT_TOKEN_MODE";
pub const LOG_FORMAT: &str = "LOG_FORMAT";

/// Defaults that work on a developer machine with nothing set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_PREFIX: &str = "ande";
/// `development` allows the development defaults; anything else (or unset) is production.
pub const ANDE_ENV: &str = "ANDE_ENV";
pub const DEFAULT_WECHAT_API_BASE: &str = "http://127.0.0.1:3900";
pub const DEFAULT_APP_ID: &str = "wx_dev_appid";
pub const DEFAULT_APP_SECRET: &str = "dev_app_secret";

/// A configuration value that could not be used. The message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {var}={shown:?} is invalid: {reason}")]
pub struct ConfigError {
    pub var: String,
    /// The offending value, or `<redacted>` for secrets.
    pub shown: String,
    pub reason: String,
}

/// A snapshot of environment variables. Build it from the process once, or from a map in tests.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// This environment with `name` set to `value` where it is not set already.
    pub fn with_default(mut self, name: &str, value: &str) -> Self {
        if self.get(name).is_none() {
            self.vars.insert(name.to_string(), value.to_string());
        }
        self
    }

    /// The value, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    pub fn secret(&self, name: &str, default: &str) -> SecretString {
        SecretString::from(self.get(name).unwrap_or(default).to_string())
    }

    /// Parse a value with `FromStr`, or return the default when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse::<T>().map_err(|e| ConfigError {
                var: name.to_string(),
                shown: raw.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// A duration written as `90s`, `15m`, `24h`, `30d` or plain seconds (`JWT_EXPIRES_IN=24h`).
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse_duration(raw).map_err(|reason| ConfigError {
                var: name.to_string(),
                shown: raw.to_string(),
                reason,
            }),
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError {
                var: name.to_string(),
                shown: v,
                reason: "expected true or false".into(),
            }),
        }
    }
}

const TOO_LONG: &str = "too long a duration";

/// Parse `500ms`, `90s`, `15m`, `24h`, `30d`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a number with an optional unit (ms, s, m, h, d)".to_string())?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or(TOO_LONG)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or(TOO_LONG)?),
        "d" => Duration::from_secs(n.checked_mul(86_400).ok_or(TOO_LONG)?),
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_seed_writes_them() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(
            parse_duration("999999999999999999d").is_err(),
            "overflow is an error, not a panic"
        );
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("nats://u:p@h:4222"),
            "nats://u:<redacted>@h:4222"
        );
        assert_eq!(
            redact_url("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            redact_url("nats://u:p@n1:4222,nats://u:p@n2:4222"),
            "nats://u:<redacted>@n1:4222,nats://u:<redacted>@n2:4222"
        );
    }

    #[test]
    fn stream_replicas_are_one_to_five() {
        let replicas = |v: &str| stream_replicas(&Env::from_pairs([(STREAM_REPLICAS, v)]));
        assert_eq!(
            stream_replicas(&Env::from_pairs::<_, &str, &str>([])).unwrap(),
            1
        );
        assert_eq!(replicas("3").unwrap(), 3);
        assert!(replicas("0").is_err());
        assert!(replicas("7")
            .unwrap_err()
            .to_string()
            .contains(STREAM_REPLICAS));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let env = Env::from_pairs([("API_PORT", "eighty")]);
        let err = env.parse::<u16>("API_PORT", 3001).unwrap_err();
        assert!(err.to_string().contains("API_PORT"), "{err}");
        assert_eq!(Env::default().parse::<u16>("API_PORT", 3001).unwrap(), 3001);
    }
}

/// The settings every service shares: where NATS and Postgres are, and which environment prefix.
#[derive(Clone)]
pub struct CommonConfig {
    /// `ANDE_ENV=development`: the development defaults (secrets, the simulator) are allowed.
    /// Off unless set, so a deployment that forgets it refuses them instead of running on them.
    pub development: bool,
    pub nats_url: String,
    /// May carry a password: kept secret so it never reaches a log.
    pub database_url: SecretString,
    pub prefix: String,
    /// How long the event stream keeps events for replay.
    pub event_max_age: Duration,
    /// `ANDE_STREAM_REPLICAS`: 1 (one server) to 5.
    pub stream_replicas: usize,
    /// `ANDE_MIGRATIONS`: apply at start, or only check.
    pub migrations: crate::db::Migrations,
    pub log_json: bool,
    /// How long records holding personal data are kept (`ANDE_RETENTION_*`).
    pub retention: crate::retention::Retention,
}

impl std::fmt::Debug for CommonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonConfig")
            .field("development", &self.development)
            .field("nats_url", &redact_url(&self.nats_url))
            .field("database_url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("event_max_age", &self.event_max_age)
            .field("stream_replicas", &self.stream_replicas)
            .field("log_json", &self.log_json)
            .finish()
    }
}

fn migrations(env: &Env) -> Result<crate::db::Migrations, ConfigError> {
    match env.string(MIGRATIONS, "apply").trim() {
        "apply" => Ok(crate::db::Migrations::Apply),
        "check" => Ok(crate::db::Migrations::Check),
        other => Err(ConfigError {
            var: MIGRATIONS.to_string(),
            shown: other.to_string(),
            reason: "apply (at start) or check (andectl migrate applies them)".to_string(),
        }),
    }
}

fn stream_replicas(env: &Env) -> Result<usize, ConfigError> {
    let n: usize = env.parse(STREAM_REPLICAS, 1)?;
    if !(1..=5).contains(&n) {
        return Err(ConfigError {
            var: STREAM_REPLICAS.to_string(),
            shown: n.to_string(),
            reason: "JetStream keeps 1 to 5 replicas (3 on a three-server cluster)".to_string(),
        });
    }
    Ok(n)
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let prefix = env.string(EVENT_PREFIX, DEFAULT_PREFIX);
        ande_events::Subjects::new(&prefix).map_err(|reason| ConfigError {
            var: EVENT_PREFIX.into(),
            shown: prefix.clone(),
            reason,
        })?;
        let nats_url = env.string(NATS_URL, DEFAULT_NATS_URL);
        let development = match env.get(ANDE_ENV) {
            None | Some("production") => false,
            Some("development") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: ANDE_ENV.into(),
                    shown: other.into(),
                    reason: "must be development or production".into(),
                })
            }
        };
        Ok(Self {
            development,
            nats_url,
            database_url: SecretString::from(database_url(env)?),
            prefix,
            event_max_age: env.duration(EVENT_MAX_AGE, Duration::from_secs(30 * 86_400))?,
            stream_replicas: stream_replicas(env)?,
            migrations: migrations(env)?,
            log_json: env
                .get(LOG_FORMAT)
                .is_some_and(|f| f.eq_ignore_ascii_case("json")),
            retention: crate::retention::Retention::from_env(env)?,
        })
    }

    pub fn subjects(&self) -> ande_events::Subjects {
        ande_events::Subjects::new(&self.prefix).expect("prefix validated in from_env")
    }
}

/// Outside development, refuse the WeChat settings only a developer machine may run with: the
/// development app id or secret (public in this repository), or a WeChat API that is not HTTPS
/// (the simulator, or anything that would see the app secret and access tokens in clear).
pub fn refuse_development_wechat(
    common: &CommonConfig,
    api_base: &str,
    app_id: &str,
    app_secret: &SecretString,
) -> Result<(), ConfigError> {
    if common.development {
        return Ok(());
    }
    let refuse = |var: &str, shown: &str, what: &str| {
        Err(ConfigError {
            var: var.into(),
            shown: shown.into(),
            reason: format!(
                "{what} outside development (set {ANDE_ENV}=development on a developer machine)"
            ),
        })
    };
    if app_id == DEFAULT_APP_ID {
        return refuse(WECHAT_APP_ID, app_id, "the development app id is refused");
    }
    if app_secret.expose_secret() == DEFAULT_APP_SECRET {
        return refuse(
            WECHAT_APP_SECRET,
            "<redacted>",
            "the development app secret is refused",
        );
    }
    if !api_base.starts_with("https://") {
        return refuse(
            WECHAT_API_BASE,
            &redact_url(api_base),
            "a WeChat API that is not HTTPS is refused",
        );
    }
    Ok(())
}

/// A URL with any `user:password@` part replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    // A list of servers (NATS_URL on a cluster): each one redacted.
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            // The user stays (it says who connects); a password never shows.
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}://{user}:<redacted>@{}", &url[..scheme], &url[at + 1..])
                }
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `DATABASE_URL`, else one built from the seed's `DB_HOST`/`DB_PORT`/`DB_NAME`/`DB_USERNAME`/
/// `DB_PASSWORD` when any of them is set, else the local default.
fn database_url(env: &Env) -> Result<String, ConfigError> {
    if let Some(url) = env.get(DATABASE_URL) {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: DATABASE_URL.into(),
                shown: "<redacted>".into(),
                reason: "expected a postgres:// URL".into(),
            });
        }
        return Ok(url.to_string());
    }
    let parts = [DB_HOST, DB_PORT, DB_NAME, DB_USERNAME, DB_PASSWORD];
    if parts.iter().all(|p| env.get(p).is_none()) {
        return Ok(DEFAULT_DATABASE_URL.to_string());
    }
    let port: u16 = env.parse(DB_PORT, 5432)?;
    let user = env.string(DB_USERNAME, "postgres");
    let auth = match env.get(DB_PASSWORD) {
        Some(pw) => format!("{}:{}", percent_encode(&user), percent_encode(pw)),
        None => percent_encode(&user),
    };
    Ok(format!(
        "postgres://{auth}@{}:{port}/{}",
        env.string(DB_HOST, "127.0.0.1"),
        percent_encode(&env.string(DB_NAME, "postgres"))
    ))
}

/// Percent-encode all but RFC 3986's unreserved characters (for a URL's user-info, path or query).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod common_tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_run_with_nothing_set() {
        let c = CommonConfig::from_env(&Env::default()).unwrap();
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
        assert_eq!(c.database_url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(c.prefix, "ande");
    }

    #[test]
    fn seed_db_variables_build_the_url_and_the_password_stays_secret() {
        let env = Env::from_pairs([
            ("DB_HOST", "db"),
            ("DB_NAME", "crm"),
            ("DB_USERNAME", "crm_user"),
            ("DB_PASSWORD", "p@ss"),
        ]);
        let c = CommonConfig::from_env(&env).unwrap();
        assert_eq!(
            c.database_url.expose_secret(),
            "postgres://crm_user:p%40ss@db:5432/crm"
        );
        assert!(!format!("{c:?}").contains("p%40ss"));
    }

    #[test]
    fn a_bad_prefix_names_its_variable() {
        let err = CommonConfig::from_env(&Env::from_pairs([(EVENT_PREFIX, "a.b")])).unwrap_err();
        assert!(err.to_string().contains(EVENT_PREFIX));
    }
}
