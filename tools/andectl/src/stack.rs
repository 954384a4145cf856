//! The whole system in one process: the WeChat simulator, gateway, leads and notifier, each on
//! its own tokio tasks through the same `run` entry its binary uses. `andectl up` runs it for a
//! developer; the end-to-end tests run it on free ports with an isolated database and prefix.

use std::net::SocketAddr;
use std::time::Duration;

use ande_gateway::{Gateway, GatewayConfig};
use ande_leads::LeadsConfig;
use ande_notifier::NotifierConfig;
use ande_platform::bus::Bus;
use ande_platform::config::{CommonConfig, Env};
use anyhow::{bail, Context};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long `start` waits for every consumer to exist before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct StackOptions {
    pub common: CommonConfig,
    /// Where the simulator listens; `None` to use the WeChat API the environment names
    /// (`WECHAT_API_BASE`) instead of starting one.
    pub sim_addr: Option<SocketAddr>,
    pub gateway: GatewayConfig,
    pub leads: LeadsConfig,
    pub notifier: NotifierConfig,
    pub sim: wechat_sim::SimConfig,
    /// Each service's own NATS URL (with its user), where the NATS has per-service users;
    /// `None`: the shared `common.nats_url`.
    pub service_nats: Option<ServiceNats>,
    /// WeChat's message push from the simulator to the gateway, when both run here.
    pub push: Option<SimPush>,
}

/// The push secrets both ends share (the gateway's `WECHAT_PUSH_TOKEN`/`WECHAT_PUSH_AES_KEY`, the
/// simulator's `WECHAT_SIM_PUSH_TOKEN`/`…_AES_KEY`); the simulator learns the gateway's URL at
/// start.
#[derive(Clone)]
pub struct SimPush {
    pub token: String,
    /// Safe mode when set.
    pub encoding_aes_key: Option<String>,
    pub format: ande_wechat::push::Format,
}

impl SimPush {
    /// Fresh random secrets, safe mode, JSON.
    pub fn random() -> Self {
        use rand::distributions::{Alphanumeric, DistString};
        let mut rng = rand::thread_rng();
        Self {
            token: Alphanumeric.sample_string(&mut rng, 32),
            encoding_aes_key: Some(Alphanumeric.sample_string(&mut rng, 43)),
            format: ande_wechat::push::Format::Json,
        }
    }

    /// Configure the gateway to take these pushes (and, with `events`, the notifier to take its
    /// credits from them only).
    pub fn apply(&self, gateway: &mut GatewayConfig) -> anyhow::Result<()> {
        gateway.push = Some(
            ande_gateway::config::PushConfig::new(&self.token, self.encoding_aes_key.as_deref())
                .context("push settings")?,
        );
        Ok(())
    }
}

/// The NATS URLs of the services, each carrying that service's user and password.
#[derive(Clone)]
pub struct ServiceNats {
    pub gateway: String,
    pub leads: String,
    pub notifier: String,
}

impl StackOptions {
    /// From the process environment, as `andectl up` runs it.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        // `up` is the developer's stack: the development defaults are allowed unless the
        // environment says otherwise.
        let env = &env
            .clone()
            .with_default(ande_platform::config::ANDE_ENV, "development");
        let common = CommonConfig::from_env(env)?;
        let sim_addr = match env.get(ande_platform::config::WECHAT_API_BASE) {
            Some(_) => None,
            None => Some(
                env.string(wechat_sim::WECHAT_SIM_ADDR, wechat_sim::DEFAULT_ADDR)
                    .parse()
                    .context("WECHAT_SIM_ADDR")?,
            ),
        };
        // With the simulator here and no push configured, the simulator pushes to the gateway
        // with fresh secrets in safe mode, and credits come from those pushes only.
        let push = (sim_addr.is_some()
            && env.get(ande_gateway::config::WECHAT_PUSH_TOKEN).is_none())
        .then(SimPush::random);
        let env = &match push {
            Some(_) => env
                .clone()
                .with_default(ande_notifier::config::NOTIFIER_CREDIT_SOURCE, "events"),
            None => env.clone(),
        };
        let mut gateway = GatewayConfig::from_env(env)?;
        if let Some(p) = &push {
            p.apply(&mut gateway)?;
        }
        // One process, one registry: every service's metrics on the gateway's admin listener
        // (METRICS_ADDR, default 127.0.0.1:9101); three listeners would show the same series
        // three times.
        let mut leads = LeadsConfig::from_env(env)?;
        let mut notifier = NotifierConfig::from_env(env)?;
        leads.admin_addr = None;
        notifier.admin_addr = None;
        Ok(Self {
            gateway,
            leads,
            notifier,
            sim: wechat_sim::SimConfig::from_env(env)?,
            common,
            sim_addr,
            service_nats: None,
            push,
        })
    }

    /// For tests: this config's database and prefix, every port picked by the OS.
    pub fn for_test(common: CommonConfig) -> Self {
        let sim_base = "http://127.0.0.1:0";
        let mut gateway = GatewayConfig::with_common(common.clone(), sim_base);
        gateway.port = 0;
        Self {
            leads: LeadsConfig::with_common(common.clone()),
            notifier: NotifierConfig::with_common(common.clone(), sim_base),
            sim: wechat_sim::SimConfig::default(),
            sim_addr: Some("127.0.0.1:0".parse().expect("valid")),
            service_nats: None,
            push: None,
            gateway,
            common,
        }
    }
}

pub struct Stack {
    pub gateway_url: String,
    pub sim_url: Option<String>,
    /// The simulator pushes WeChat's subscription events to the gateway.
    pub sim_pushes: bool,
    /// The gateway's admin listener (`/metrics`, `/healthz`, `/readyz`), when on.
    pub admin_addr: Option<SocketAddr>,
    pub common: CommonConfig,
    pub gateway_pool: sqlx::PgPool,
    pub shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Stack {
    /// Start everything and wait until the consumers exist (so the first event is not missed by
    /// a consumer created later: they start from the beginning of the stream anyway).
    pub async fn start(mut opts: StackOptions) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut sim_url = None;
        let mut sim_listener = None;
        if let Some(addr) = opts.sim_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("WeChat simulator cannot listen on {addr}"))?;
            let url = format!("http://{}", listener.local_addr()?);
            opts.gateway.wechat.base_url = url.clone();
            opts.notifier.wechat.base_url = url.clone();
            sim_url = Some(url);
            sim_listener = Some(listener);
        }
        if let Some(p) = &opts.push {
            p.apply(&mut opts.gateway)?;
        }
        // Every service uses the same shared settings.
        opts.gateway.common = opts.common.clone();
        opts.leads.common = opts.common.clone();
        opts.notifier.common = opts.common.clone();
        if let Some(n) = &opts.service_nats {
            opts.gateway.common.nats_url = n.gateway.clone();
            opts.leads.common.nats_url = n.leads.clone();
            opts.notifier.common.nats_url = n.notifier.clone();
        }

        let admin_addr = opts.gateway.admin_addr;
        let gateway = Gateway::bind(opts.gateway).await.context("gateway")?;
        let gateway_url = format!("http://{}", gateway.addr);
        let gateway_pool = gateway.state().pool.clone();
        if let Some(listener) = sim_listener {
            // The simulator starts once the gateway's address is known: it pushes there.
            if let Some(p) = &opts.push {
                opts.sim.push = Some(wechat_sim::config::PushSettings {
                    url: format!("{gateway_url}/api/wechat/events"),
                    token: p.token.clone(),
                    aes_key: p.encoding_aes_key.clone(),
                    format: p.format,
                });
            }
            let (cfg, stop) = (opts.sim.clone(), shutdown.clone());
            tasks.spawn(async move { ("wechat-sim", wechat_sim::run(cfg, listener, stop).await) });
        }
        let stop = shutdown.clone();
        tasks.spawn(async move { ("gateway", gateway.run(stop).await) });
        let (cfg, stop) = (opts.leads, shutdown.clone());
        tasks.spawn(async move { ("leads", ande_leads::run(cfg, stop).await) });
        let (cfg, stop) = (opts.notifier, shutdown.clone());
        tasks.spawn(async move { ("notifier", ande_notifier::run(cfg, stop).await) });

        let sim_pushes = sim_url.is_some() && opts.push.is_some();
        let stack = Self {
            gateway_url,
            sim_url,
            sim_pushes,
            admin_addr,
            common: opts.common,
            gateway_pool,
            shutdown,
            tasks,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let bus = Bus::connect(&self.common, "andectl").await?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let names = crate::replay::CONSUMER_NAMES;
        loop {
            let mut missing = Vec::new();
            match bus.js.get_stream(bus.subjects.stream()).await {
                Ok(stream) => {
                    for n in names {
                        if stream.consumer_info(n).await.is_err() {
                            missing.push(n);
                        }
                    }
                }
                Err(_) => missing.push("stream"),
            }
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("not ready after {READY_TIMEOUT:?}: waiting for {missing:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until a service stops on its own (an error) or shutdown is requested; then stop all.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            r = self.tasks.join_next() => r,
        };
        self.shutdown.cancel();
        let mut failure = None;
        if let Some(Ok((name, Err(e)))) = first {
            failure = Some(anyhow::anyhow!("{name} stopped: {e:#}"));
        }
        while let Some(r) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = r {
                tracing::warn!(
                    service = name,
                    error = format!("{e:#}"),
                    "stopped with an error"
                );
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Stop everything and wait for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

impl Stack {
    /// Bind `openid` to `advisor`, as `andectl advisor bind` does (through the notifier's schema).
    pub async fn bind_advisor(&self, advisor: &str, openid: &str, by: &str) -> anyhow::Result<()> {
        let pool = crate::conn::notifier_db(&self.common).await?;
        let r = ande_contracts::notifier::BindRequest {
            advisor_id: advisor.into(),
            openid: openid.into(),
            bound_by: by.into(),
        };
        let bound = ande_notifier::bindings::bind(&pool, r).await;
        pool.close().await;
        bound.map_err(|f| anyhow::anyhow!(ande_platform::rpc::RpcError::from(f)))?;
        Ok(())
    }

    /// A mini-program session token for `openid`, by the real login with a code the simulator
    /// mints (as `wx.login()` would give the mini-program).
    pub async fn session(&self, http: &reqwest::Client, openid: &str) -> anyhow::Result<String> {
        let sim = self
            .sim_url
            .as_deref()
            .context("the simulator mints login codes")?;
        let code: serde_json::Value = http
            .post(format!("{sim}/sim/codes"))
            .json(&serde_json::json!({ "openid": openid }))
            .send()
            .await?
            .json()
            .await?;
        let answer: serde_json::Value = http
            .post(format!("{}/api/wechat/openid", self.gateway_url))
            .json(&serde_json::json!({ "code": code["code"] }))
            .send()
            .await?
            .json()
            .await?;
        answer["data"]["token"]
            .as_str()
            .map(String::from)
            .with_context(|| format!("no session token in {answer}"))
    }
}
