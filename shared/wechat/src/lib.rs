//! The WeChat server API client that the services share.
//!
//! Why one crate: the gateway logs users in (`jscode2session`) and reads phone numbers, the
//! notifier sends subscribe messages, and all of them need the same access token. Getting that
//! token wrong is the classic WeChat outage (processes invalidating each other's token, 40001 in
//! a cluster, unbounded retries), so it is done once, here:
//! stable tokens, a single-flight cache with a refresh margin, and on a token error one retry
//! after dropping the token only if it is still the one that failed. See [`client`].
//!
//! The [`keywords`] module holds WeChat's limits on subscribe-message values. The notifier fits
//! values to them; the simulator (`services/wechat-sim`) validates against them, so both agree.
//!
//! Secrets never leave this crate in a readable form: the AppSecret, access tokens and session
//! keys are [`secrecy::SecretString`]s with redacting `Debug`, and errors never hold a URL
//! (the query of which carries `secret=` or `access_token=`).
//!
//! Facts about the WeChat API are in `docs/wechat.md` in the repository.

pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod keywords;
pub mod push;
pub mod types;

pub use client::{WechatClient, CONNECT_TIMEOUT};
pub use config::{
    TokenMode, WechatConfig, DEFAULT_BASE_URL, DEFAULT_REFRESH_MARGIN, DEFAULT_TIMEOUT,
};
pub use error::WechatError;
pub use keywords::{KeywordError, KeywordType};
/// Re-exported so that callers can build a [`WechatConfig`] and read a session key without
/// depending on `secrecy` themselves.
pub use secrecy::{ExposeSecret, SecretString};
pub use types::{PhoneInfo, SendReceipt, Session, SubscribeMessage};

/// The template the simulator registers by default: keywords `thing1` (action), `time2` (time),
/// `thing3` (phone) and `thing7` (customer name), as used by the original's messages.
pub const DEV_TEMPLATE_ID: &str = "ande-dev-customer-action";
