//! The HTTP client for the WeChat server API, with its access-token cache.
//!
//! Why the token handling looks the way it does (see `docs/wechat.md`):
//! - Stable tokens (`/cgi-bin/stable_token`) by default, because every call of the classic
//!   `/cgi-bin/token` invalidates the token other processes hold.
//! - One cached token per client, in a [`moka`] cache whose `try_get_with` lets concurrent
//!   callers share a single fetch (single flight); it expires `refresh_margin` before WeChat says
//!   it does.
//! - On a token error from an API call, the cached token is dropped only if it is still the one
//!   that failed (another caller may already have replaced it), and the call is retried once.
//!   `force_refresh` is never used: it invalidates the token for everyone and is capped per day.
//!
//! Secrets (AppSecret, access token, session key) travel only in requests. Errors are stripped of
//! URLs, and tracing names endpoint paths, never query strings.

use std::{
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use moka::{
    future::Cache,
    ops::compute::{CompResult, Op},
    Expiry,
};
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use crate::{
    types::{PhoneNumberResponse, TokenResponse},
    PhoneInfo, SendReceipt, Session, SubscribeMessage, TokenMode, WechatConfig, WechatError,
};

/// Connection timeout: WeChat's front ends accept connections in milliseconds; 2 s fails fast on
/// an unreachable host while tolerating a slow handshake. Capped by the whole-request timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Endpoint paths: the only part of a request that may be logged.
pub mod endpoints {
    /// Login: exchanges a `wx.login()` code for the user's openid and session key.
    pub const JSCODE2SESSION: &str = "/sns/jscode2session";
    /// Classic access token (each call invalidates the previous token).
    pub const TOKEN: &str = "/cgi-bin/token";
    /// Stable access token.
    pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
    /// Sends a subscribe message.
    pub const SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
    /// Exchanges a phone-button code for the user's phone number.
    pub const PHONE_NUMBER: &str = "/wxa/business/getuserphonenumber";
}
use endpoints::*;

/// Client of the WeChat server API; cheap to clone, all clones share one token cache.
#[derive(Clone)]
pub struct WechatClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    app_id: String,
    app_secret: SecretString,
    token_mode: TokenMode,
    refresh_margin: Duration,
    /// One entry under the key `()`: the current access token.
    tokens: Cache<(), CachedToken>,
    token_fetches: AtomicU64,
}

#[derive(Clone)]
struct CachedToken {
    token: SecretString,
    /// Which fetch produced it (1 for the first). Stable tokens repeat: a refetch after a
    /// token error can return the very string that failed, so "is the cached token still the one
    /// that failed" is answered by the fetch, not by the string.
    generation: u64,
    /// How long the cache keeps it, read by [`TokenExpiry`].
    ttl: Duration,
}

/// Gives each cached token its own lifetime, computed from its `expires_in`.
struct TokenExpiry;

impl Expiry<(), CachedToken> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &(),
        value: &CachedToken,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// How long to keep a token WeChat says expires in `expires_in` seconds: `refresh_margin` less,
/// or half of it when it is not longer than the margin (a stable token near its renewal can
/// report as little as 300 s, the default margin).
fn token_ttl(expires_in: u64, refresh_margin: Duration) -> Duration {
    let expires_in = Duration::from_secs(expires_in);
    if expires_in > refresh_margin {
        expires_in - refresh_margin
    } else {
        expires_in / 2
    }
}

#[derive(Serialize)]
struct StableTokenRequest<'a> {
    grant_type: &'static str,
    appid: &'a str,
    secret: &'a str,
    force_refresh: bool,
}

#[derive(Serialize)]
struct PhoneNumberRequest<'a> {
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    openid: Option<&'a str>,
}

impl WechatClient {
    /// Builds a client; fails on an unusable base URL, an empty AppID or AppSecret, or a zero
    /// timeout.
    pub fn new(cfg: WechatConfig) -> Result<Self, WechatError> {
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| WechatError::Config(format!("base_url is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WechatError::Config(
                "base_url must be an http or https URL".into(),
            ));
        }
        if cfg.app_id.trim().is_empty() {
            return Err(WechatError::Config("app_id is empty".into()));
        }
        if cfg.app_secret.expose_secret().trim().is_empty() {
            return Err(WechatError::Config("app_secret is empty".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(WechatError::Config("timeout is zero".into()));
        }
        let http = crate::http::builder()
            .timeout(cfg.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.timeout))
            // WeChat's API never redirects; following one would resend the secret elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WechatError::Config(format!("HTTP client: {}", e.without_url())))?;
        let tokens = Cache::builder()
            .max_capacity(1)
            .expire_after(TokenExpiry)
            .build();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                app_id: cfg.app_id,
                app_secret: cfg.app_secret,
                token_mode: cfg.token_mode,
                refresh_margin: cfg.refresh_margin,
                tokens,
                token_fetches: AtomicU64::new(0),
            }),
        })
    }

    /// Exchanges a `wx.login()` code for the user's session (`GET /sns/jscode2session`).
    /// The code is single use and valid for 5 minutes.
    #[tracing::instrument(name = "wechat.code2session", skip_all, fields(endpoint = JSCODE2SESSION))]
    pub async fn code2session(&self, code: &str) -> Result<Session, WechatError> {
        let req = self.request(Method::GET, JSCODE2SESSION).query(&[
            ("appid", self.inner.app_id.as_str()),
            ("secret", self.inner.app_secret.expose_secret()),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ]);
        let session: Session = self.send(JSCODE2SESSION, req).await?;
        if session.openid.is_empty() {
            return Err(WechatError::Decode(format!(
                "{JSCODE2SESSION}: empty openid"
            )));
        }
        Ok(session)
    }

    /// The current access token, from the cache or fetched once for all concurrent callers.
    pub async fn access_token(&self) -> Result<String, WechatError> {
        let cached = self.cached_token().await?;
        Ok(cached.token.expose_secret().to_owned())
    }

    /// Drops the cached access token if it is still `failed`, so that the next call fetches a
    /// new one; returns whether it did. For callers using [`Self::access_token`] with APIs this
    /// client does not wrap, after a token error.
    pub async fn invalidate_access_token(&self, failed: &str) -> bool {
        self.invalidate_if(|cached| cached.token.expose_secret() == failed)
            .await
    }

    /// Removes the cached token if `is_failed` says it is the one that failed. Atomic: moka runs
    /// `and_compute_with` calls on one key one at a time.
    async fn invalidate_if(&self, is_failed: impl FnOnce(&CachedToken) -> bool) -> bool {
        let result = self
            .inner
            .tokens
            .entry(())
            .and_compute_with(|entry| {
                let same = entry.is_some_and(|e| is_failed(e.value()));
                std::future::ready(if same { Op::Remove } else { Op::Nop })
            })
            .await;
        let removed = matches!(result, CompResult::Removed(_));
        tracing::debug!(removed, "access token invalidation");
        removed
    }

    /// Sends a subscribe message (`POST /cgi-bin/message/subscribe/send`).
    ///
    /// Errcode `43101` means the user has no credit left for the template. Not retried here
    /// except once after a token error; a timed-out send may have been delivered.
    #[tracing::instrument(
        name = "wechat.send_subscribe",
        skip_all,
        fields(endpoint = SUBSCRIBE_SEND, template_id = %msg.template_id)
    )]
    pub async fn send_subscribe(&self, msg: &SubscribeMessage) -> Result<SendReceipt, WechatError> {
        self.with_token(|token| self.post_with_token(SUBSCRIBE_SEND, token, msg))
            .await
    }

    /// Exchanges a phone-button code for the user's phone number
    /// (`POST /wxa/business/getuserphonenumber`). The code is single use; each success is billed.
    #[tracing::instrument(name = "wechat.phone_number", skip_all, fields(endpoint = PHONE_NUMBER))]
    pub async fn phone_number(
        &self,
        code: &str,
        openid: Option<&str>,
    ) -> Result<PhoneInfo, WechatError> {
        let body = PhoneNumberRequest { code, openid };
        let answer: PhoneNumberResponse = self
            .with_token(|token| self.post_with_token(PHONE_NUMBER, token, &body))
            .await?;
        Ok(answer.phone_info)
    }

    /// How many token requests this client (and its clones) has sent.
    pub fn token_fetches(&self) -> u64 {
        self.inner.token_fetches.load(Ordering::Relaxed)
    }

    /// The cached token, or one fetch shared by every concurrent caller.
    async fn cached_token(&self) -> Result<CachedToken, WechatError> {
        self.inner
            .tokens
            .try_get_with((), self.fetch_token())
            .await
            .map_err(|shared| (*shared).clone())
    }

    async fn fetch_token(&self) -> Result<CachedToken, WechatError> {
        let endpoint = match self.inner.token_mode {
            TokenMode::Stable => STABLE_TOKEN,
            TokenMode::Classic => TOKEN,
        };
        async {
            let generation = self.inner.token_fetches.fetch_add(1, Ordering::Relaxed) + 1;
            let secret = self.inner.app_secret.expose_secret();
            let req = match self.inner.token_mode {
                TokenMode::Stable => {
                    self.request(Method::POST, endpoint)
                        .json(&StableTokenRequest {
                            grant_type: "client_credential",
                            appid: &self.inner.app_id,
                            secret,
                            force_refresh: false,
                        })
                }
                TokenMode::Classic => self.request(Method::GET, endpoint).query(&[
                    ("grant_type", "client_credential"),
                    ("appid", self.inner.app_id.as_str()),
                    ("secret", secret),
                ]),
            };
            let answer: TokenResponse = self.send(endpoint, req).await?;
            if answer.access_token.expose_secret().is_empty() {
                return Err(WechatError::Decode(format!(
                    "{endpoint}: empty access_token"
                )));
            }
            let ttl = token_ttl(answer.expires_in, self.inner.refresh_margin);
            tracing::info!(
                expires_in = answer.expires_in,
                cached_for_secs = ttl.as_secs(),
                "fetched access token"
            );
            Ok(CachedToken {
                token: answer.access_token,
                generation,
                ttl,
            })
        }
        .instrument(tracing::info_span!("wechat.access_token", endpoint))
        .await
    }

    /// Runs `call` with the access token; after a token error, drops that token (if still
    /// cached) and runs `call` once more with a fresh one. Never more than two attempts.
    async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, WechatError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let first = self.cached_token().await?;
        match call(first.token.clone()).await {
            Err(e) if e.is_token_error() => {
                tracing::info!(
                    errcode = e.errcode(),
                    "access token refused; refreshing and retrying once"
                );
                self.invalidate_if(|cached| cached.generation == first.generation)
                    .await;
                let second = self.cached_token().await?.token;
                call(second).await
            }
            other => other,
        }
    }

    async fn post_with_token<B, T>(
        &self,
        endpoint: &'static str,
        token: SecretString,
        body: &B,
    ) -> Result<T, WechatError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let req = self
            .request(Method::POST, endpoint)
            .query(&[("access_token", token.expose_secret())])
            .json(body);
        self.send(endpoint, req).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.inner
            .http
            .request(method, format!("{}{path}", self.inner.base_url))
    }

    /// Sends and reads the answer. The body is parsed whatever its content type:
    /// `jscode2session` answers JSON as `text/plain`.
    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: RequestBuilder,
    ) -> Result<T, WechatError> {
        let resp = req.send().await.map_err(WechatError::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            tracing::debug!(
                endpoint,
                status = status.as_u16(),
                "WeChat answered non-2xx"
            );
            return Err(WechatError::Http {
                status: status.as_u16(),
            });
        }
        let body = resp.bytes().await.map_err(WechatError::from_reqwest)?;
        parse_answer(endpoint, &body)
    }
}

/// Reads a WeChat answer: a non-zero `errcode` is an error whatever else the body holds; no
/// `errcode` (as in a successful `jscode2session`) or `0` is a success to decode as `T`.
pub(crate) fn parse_answer<T: DeserializeOwned>(
    endpoint: &str,
    body: &[u8],
) -> Result<T, WechatError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WechatError::decode(endpoint, &e))?;
    if let Some(code) = value.get("errcode").filter(|c| !c.is_null()) {
        let errcode = code
            .as_i64()
            .or_else(|| code.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| WechatError::Decode(format!("{endpoint}: errcode is not a number")))?;
        if errcode != 0 {
            let errmsg = value
                .get("errmsg")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_owned();
            tracing::debug!(endpoint, errcode, "WeChat answered with an error");
            return Err(WechatError::Api { errcode, errmsg });
        }
    }
    serde_json::from_value(value).map_err(|e| WechatError::decode(endpoint, &e))
}

impl fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatClient")
            .field("base_url", &self.inner.base_url)
            .field("app_id", &self.inner.app_id)
            .field("token_mode", &self.inner.token_mode)
            .field("refresh_margin", &self.inner.refresh_margin)
            .field("token_fetches", &self.token_fetches())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TokenResponse;

    fn config(base_url: &str) -> WechatConfig {
        WechatConfig::new(base_url, "wx-app", SecretString::from("APP-SECRET-123"))
    }

    #[test]
    fn ttl_is_expires_in_less_the_margin() {
        let margin = Duration::from_secs(300);
        assert_eq!(token_ttl(7200, margin), Duration::from_secs(6900));
        assert_eq!(token_ttl(301, margin), Duration::from_secs(1));
        assert_eq!(token_ttl(300, margin), Duration::from_secs(150));
        assert_eq!(token_ttl(100, margin), Duration::from_secs(50));
        assert_eq!(token_ttl(0, margin), Duration::ZERO);
    }

    #[test]
    fn api_errors_are_errors_even_with_http_200() {
        let e = parse_answer::<Session>(
            JSCODE2SESSION,
            br#"{"errcode":40029,"errmsg":"invalid code, rid: 1"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            WechatError::Api {
                errcode: 40029,
                errmsg: "invalid code, rid: 1".into()
            }
        );
        let e = parse_answer::<SendReceipt>(SUBSCRIBE_SEND, br#"{"errcode":"-1"}"#).unwrap_err();
        assert_eq!(e.errcode(), Some(-1));
        assert!(e.is_retryable());
    }

    #[test]
    fn success_with_or_without_errcode() {
        let s: Session =
            parse_answer(JSCODE2SESSION, br#"{"openid":"o","session_key":"k"}"#).unwrap();
        assert_eq!(s.openid, "o");
        let r: SendReceipt = parse_answer(
            SUBSCRIBE_SEND,
            br#"{"errcode":0,"errmsg":"ok","msgid":123}"#,
        )
        .unwrap();
        assert_eq!(r.msgid, "123");
        let t: TokenResponse =
            parse_answer(STABLE_TOKEN, br#"{"access_token":"T","expires_in":7200}"#).unwrap();
        assert_eq!(t.expires_in, 7200);
    }

    #[test]
    fn undecodable_answers() {
        let e = parse_answer::<Session>(JSCODE2SESSION, b"<html>busy</html>").unwrap_err();
        assert!(matches!(e, WechatError::Decode(_)), "{e:?}");
        let e = parse_answer::<Session>(JSCODE2SESSION, br#"{"openid":"o"}"#).unwrap_err();
        assert!(e.to_string().contains("session_key"), "{e}");
        let e = parse_answer::<Session>(JSCODE2SESSION, br#"{"errcode":"x"}"#).unwrap_err();
        assert!(matches!(e, WechatError::Decode(_)), "{e:?}");
    }

    #[test]
    fn new_rejects_unusable_config() {
        assert!(WechatClient::new(config("http://127.0.0.1:1")).is_ok());
        assert!(matches!(
            WechatClient::new(config("not a url")),
            Err(WechatError::Config(_))
        ));
        assert!(matches!(
            WechatClient::new(config("ftp://x")),
            Err(WechatError::Config(_))
        ));
        let mut c = config("http://x");
        c.app_id = " ".into();
        assert!(matches!(WechatClient::new(c), Err(WechatError::Config(_))));
        let mut c = config("http://x");
        c.app_secret = SecretString::from("");
        assert!(matches!(WechatClient::new(c), Err(WechatError::Config(_))));
        let mut c = config("http://x");
        c.timeout = Duration::ZERO;
        assert!(matches!(WechatClient::new(c), Err(WechatError::Config(_))));
    }

    #[test]
    fn client_debug_redacts_the_secret() {
        let client = WechatClient::new(config("http://127.0.0.1:1/")).unwrap();
        let shown = format!("{client:?} {client:#?}");
        assert!(!shown.contains("APP-SECRET-123"), "{shown}");
        assert!(shown.contains("wx-app"), "{shown}");
    }

    /// Errors from failed requests carry neither the URL nor the secret in its query.
    #[tokio::test]
    async fn transport_errors_leak_no_secret() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let mut cfg = config("http://127.0.0.1:1");
        cfg.token_mode = TokenMode::Classic;
        let client = WechatClient::new(cfg).unwrap();

        let errors = [
            client.access_token().await.unwrap_err(),
            client.code2session("CODE-1").await.unwrap_err(),
            client
                .send_subscribe(&SubscribeMessage::new("o", "t"))
                .await
                .unwrap_err(),
        ];
        for e in errors {
            assert!(e.is_retryable(), "{e:?}");
            let shown = format!("{e} {e:?}");
            for leak in ["APP-SECRET-123", "secret=", "access_token=", "127.0.0.1:1"] {
                assert!(!shown.contains(leak), "{leak} in {shown}");
            }
        }
        // A failed fetch is not cached: each call tried again.
        assert_eq!(client.token_fetches(), 2);
    }

    /// A loopback HTTP stub that answers every request with `body` and counts requests: a
    /// stable-token endpoint that, like WeChat's in normal mode, returns the same token each time.
    async fn stub_server(body: &'static str) -> (String, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Requests here are small: one read holds the head and the JSON body.
                    let mut buf = vec![0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), hits)
    }

    fn token_error() -> WechatError {
        WechatError::Api {
            errcode: 40001,
            errmsg: "invalid credential".into(),
        }
    }

    /// Two calls fail on the same token. The first drops it and refetches; the refetch returns
    /// the same string (stable tokens do). The second, arriving late, must not drop the fresh
    /// entry: it is judged by the fetch that produced it, not by the string.
    #[tokio::test]
    async fn a_late_token_error_leaves_the_refetched_token_alone() {
        let (base, hits) = stub_server(r#"{"access_token":"SAME-TOKEN","expires_in":7200}"#).await;
        let client = WechatClient::new(config(&base)).unwrap();
        client.access_token().await.unwrap();

        let late_may_fail = Arc::new(tokio::sync::Notify::new());
        let late_has_token = Arc::new(tokio::sync::Notify::new());
        let late = {
            let (client, may_fail, has_token) = (
                client.clone(),
                late_may_fail.clone(),
                late_has_token.clone(),
            );
            tokio::spawn(async move {
                let attempts = AtomicU64::new(0);
                client
                    .with_token(|_token| {
                        let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                        let (may_fail, has_token) = (&may_fail, &has_token);
                        async move {
                            if attempt == 0 {
                                has_token.notify_one();
                                may_fail.notified().await;
                                Err(token_error())
                            } else {
                                Ok(())
                            }
                        }
                    })
                    .await
            })
        };
        late_has_token.notified().await;

        // The early call fails on the same token, drops it, refetches and succeeds.
        let attempts = AtomicU64::new(0);
        client
            .with_token(|_token| {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt == 0 {
                        Err(token_error())
                    } else {
                        Ok(())
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(client.token_fetches(), 2);

        late_may_fail.notify_one();
        late.await.unwrap().unwrap();

        assert_eq!(
            client.token_fetches(),
            2,
            "the late error kept the fresh token"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_second_token_error_is_returned_not_retried() {
        let (base, hits) = stub_server(r#"{"access_token":"T","expires_in":7200}"#).await;
        let client = WechatClient::new(config(&base)).unwrap();
        let attempts = AtomicU64::new(0);
        let err = client
            .with_token(|_token| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(token_error()) }
            })
            .await
            .unwrap_err();
        assert!(err.is_token_error());
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    /// A server that accepts connections and never answers: the configured timeout applies.
    #[tokio::test]
    async fn requests_time_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let mut cfg = config(&format!("http://{addr}"));
        cfg.timeout = Duration::from_millis(200);
        let client = WechatClient::new(cfg).unwrap();
        let started = Instant::now();
        let e = client.access_token().await.unwrap_err();
        assert_eq!(e, WechatError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(3));
        hold.abort();
    }
}
