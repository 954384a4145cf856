//! The leads service's settings.

use ande_platform::config::{CommonConfig, ConfigError, Env};

pub const LEADS_DEFAULT_STATUS: &str = "LEADS_DEFAULT_STATUS";
pub const LEADS_DEFAULT_LEVEL: &str = "LEADS_DEFAULT_LEVEL";
pub const LEADS_SOURCE: &str = "LEADS_SOURCE";
pub const LEADS_BATCH: &str = "LEADS_BATCH";

#[derive(Clone, Debug)]
pub struct LeadsConfig {
    pub common: CommonConfig,
    /// Status of a new lead (the original used 待定).
    pub default_status: String,
    /// Level of a new lead (the original used B类).
    pub default_level: String,
    /// How a new lead says where it came from.
    pub source: String,
    /// Most actions stored in one transaction.
    pub batch: usize,
    /// The admin listener (`METRICS_ADDR`: /metrics, /healthz, /readyz); none when `off`.
    pub admin_addr: Option<std::net::SocketAddr>,
}

impl LeadsConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            default_status: env.string(LEADS_DEFAULT_STATUS, "待定"),
            default_level: env.string(LEADS_DEFAULT_LEVEL, "B类"),
            source: env.string(LEADS_SOURCE, "微信小程序"),
            batch: env.parse(LEADS_BATCH, 64usize)?.clamp(1, 512),
            admin_addr: ande_platform::admin::addr_from_env(env, "127.0.0.1:9102")?,
        })
    }

    pub fn with_common(common: CommonConfig) -> Self {
        let mut c = Self::from_env(&Env::default()).expect("defaults are valid");
        c.common = common;
        // Many services share a test process: none binds the default admin port.
        c.admin_addr = None;
        c
    }
}
