//! `andectl`: run the stack, inspect and replay events, dead letters, lag, staff accounts.
//!
//! Exit codes (see `andectl::exit`): 0 ok, 1 failure, 2 usage, 3 NATS or Postgres unreachable.
//! Settings come from the same environment variables the services read (`NATS_URL`,
//! `DATABASE_URL`, `ANDE_PREFIX`, `API_HOST`, `API_PORT`, …).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use ande_contracts::notifier::RetryRequest;
use ande_contracts::vocab::{NotificationState, Vocabulary};
use ande_platform::config::{CommonConfig, Env};
use ande_platform::rpc::RpcError;
use andectl::events::{ShowQuery, Start, TailOptions};
use andectl::exit::{self, Unreachable};
use andectl::replay::{ReplayArgs, CONSUMER_NAMES};
use andectl::stack::{Stack, StackOptions};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "andectl", about = "Operate the Ande lead pipeline", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every service and the WeChat simulator locally (Ctrl-C stops everything).
    Up,
    /// Apply every service's database migrations (idempotent); for deployments whose services
    /// start with ANDE_MIGRATIONS=check.
    Migrate,
    /// Read the event log, decoded to JSON lines.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Re-drive a consumer from a stream sequence or a time (consumers are idempotent).
    Replay(ReplayCmd),
    /// Dead letters: messages a consumer set aside, with why.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Stream size and age, consumers' lag, dead letters, services' health (exit 1 if unhealthy).
    Status {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Staff accounts for /api/auth/login.
    #[command(subcommand)]
    User(UserCmd),
    /// Which WeChat users receive an advisor's notifications (bind, pair, ls, unbind).
    #[command(subcommand)]
    Advisor(AdvisorCmd),
    /// Ask the leads service: a lead, a page of leads, an action's journey.
    #[command(subcommand)]
    Leads(LeadsCmd),
    /// The notification queue: list by state, retry failed ones, pause and resume sending.
    #[command(subcommand)]
    Notifier(NotifierCmd),
    /// Measure the pipeline against raw JetStream and Postgres in the same run (build with --release).
    Bench(BenchCmd),
}

#[derive(clap::Args)]
struct BenchCmd {
    /// Events for the throughput part (a quarter as many requests for latency).
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Only these parts (1 gateway, 2 leads, 3 end to end, 4 notifier, 5 gateway vs the
    /// reference under concurrency, 6 end to end open loop), e.g. `--part 5,6`; all when absent.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=6))]
    part: Vec<u8>,
    /// Seconds per run of part 5 (each level, each server).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds per offered rate of part 6.
    #[arg(long, default_value_t = 30)]
    open_seconds: u64,
    /// Offered rates of part 6, actions per second.
    #[arg(long, value_delimiter = ',', default_values_t = andectl::bench_open::RATES)]
    rates: Vec<u32>,
    /// The simulator's latencies of part 6, ms.
    #[arg(long, value_delimiter = ',', default_values_t = andectl::bench_open::WECHAT_LATENCIES)]
    wechat_ms: Vec<u64>,
    /// Write the results of parts 5 and 6 as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the charts of parts 5 and 6 (SVG) into this directory.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum LeadsCmd {
    /// One lead, by id or by phone number.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "phone"])))]
    Show {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        phone: Option<String>,
    },
    /// Leads, newest first, as JSON lines.
    Ls {
        /// Only this advisor's leads.
        #[arg(long)]
        advisor: Option<String>,
        /// Created at or after this time (RFC 3339, a UTC date and time, or a duration ago: 2h).
        #[arg(long, value_parser = time_arg)]
        since: Option<DateTime<Utc>>,
        /// Created before this time.
        #[arg(long, value_parser = time_arg)]
        until: Option<DateTime<Utc>>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The action as leads stored it, and its outcome.
    Journey { action_id: String },
}

#[derive(Subcommand)]
enum NotifierCmd {
    /// Notifications in a state, oldest first, as JSON lines.
    Ls {
        /// queued, sending, sent, failed, waiting_credit, digested or dropped.
        #[arg(long, value_parser = notification_state)]
        state: NotificationState,
        /// Only this advisor's.
        #[arg(long)]
        advisor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Queue failed notifications again, each with a fresh retry budget.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all_failed"])))]
    Retry {
        /// One failed notification, by its id.
        id: Option<uuid::Uuid>,
        /// Every failed notification.
        #[arg(long)]
        all_failed: bool,
    },
    /// Stop sending (every notifier process); the queue keeps filling.
    Pause {
        /// Until this time (RFC 3339, or a duration from now: 30m); until resumed when absent.
        #[arg(long, value_parser = future_time_arg)]
        until: Option<DateTime<Utc>>,
        /// Why, shown by `andectl status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a pause (an operator's, or WeChat's 45009 daily quota once it was raised).
    Resume,
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Follow new events as they are stored (Ctrl-C stops).
    Tail {
        /// Only this subject: a full subject, a suffix (events.v1.lead.outcome), or action, subscription, outcome, wechat.
        #[arg(long)]
        subject: Option<String>,
        /// Only the events of this correlation id (the action id that started the chain).
        #[arg(long)]
        correlation: Option<String>,
        /// Start this far back instead of with the next event (a time, or a duration ago: 15m).
        #[arg(long, value_parser = time_arg)]
        since: Option<DateTime<Utc>>,
    },
    /// Print stored events: one by sequence, a time range, or every event of one action.
    #[command(group(ArgGroup::new("which").required(true).args(["seq", "since", "action"])))]
    Show {
        /// The event with this stream sequence.
        #[arg(long)]
        seq: Option<u64>,
        /// From this time (RFC 3339, a UTC date and time, or a duration ago: 15m, 2h).
        #[arg(long, value_parser = time_arg)]
        since: Option<DateTime<Utc>>,
        /// Up to this time (with --since).
        #[arg(long, value_parser = time_arg, requires = "since")]
        until: Option<DateTime<Utc>>,
        /// Every event whose correlation id is this action id, and its dead letters.
        #[arg(long)]
        action: Option<String>,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("from").required(true).args(["from_seq", "from_time"])))]
struct ReplayCmd {
    /// The durable consumer to re-drive.
    #[arg(long, value_parser = CONSUMER_NAMES)]
    consumer: String,
    /// First stream sequence to replay.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Replay the events stored since this time (RFC 3339, a UTC date and time, or 15m, 2h ago).
    #[arg(long, value_parser = time_arg)]
    from_time: Option<DateTime<Utc>>,
    /// List what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Copy the range into this prefix's stream instead (a scratch environment), leaving this one alone.
    #[arg(long, value_name = "PREFIX")]
    into_prefix: Option<String>,
    /// Start later than the consumer's ack floor even though that skips events it has not processed.
    #[arg(long)]
    allow_skip: bool,
    /// Reset the consumer and return, without waiting for the service to work through the range.
    #[arg(long)]
    no_wait: bool,
    /// Stop waiting after this long (the reset stays): 90s, 15m.
    #[arg(long, default_value = "10m", value_parser = duration_arg)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List dead letters: sequence, consumer, deliveries, original subject, reason.
    Ls {
        #[arg(long, value_parser = CONSUMER_NAMES)]
        consumer: Option<String>,
        /// One JSON object per dead letter, with the decoded original event.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its original event decoded.
    Show {
        /// The dead letter's sequence (from `dlq ls`).
        seq: u64,
    },
    /// Republish the original event to its subject (new message id), then delete the dead letter.
    #[command(group(ArgGroup::new("which").required(true).args(["seq", "all"])))]
    Retry {
        /// The dead letter's sequence (from `dlq ls`).
        seq: Option<u64>,
        /// Every dead letter, oldest first.
        #[arg(long)]
        all: bool,
        /// With --all: only this consumer's dead letters.
        #[arg(long, value_parser = CONSUMER_NAMES, requires = "all")]
        consumer: Option<String>,
    },
    /// Delete a dead letter, or all of them.
    #[command(group(ArgGroup::new("which").required(true).args(["seq", "all"])))]
    Purge {
        /// The dead letter's sequence (from `dlq ls`).
        seq: Option<u64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// With --all: only this consumer's dead letters.
        #[arg(long, value_parser = CONSUMER_NAMES, requires = "all")]
        consumer: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdvisorCmd {
    /// Bind a WeChat user (openid) to an advisor: they receive its notifications.
    Bind { advisor_id: String, openid: String },
    /// Remove a binding.
    Unbind { advisor_id: String, openid: String },
    /// The bindings (of one advisor, or all), one JSON line each.
    Ls { advisor_id: Option<String> },
    /// A one-time pairing code (valid 10 minutes) the advisor redeems in the mini-program
    /// (`POST /api/advisor/bind {code}` from their session).
    Pair { advisor_id: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a staff account; the password is one line on stdin. Fails if it exists.
    Add {
        name: String,
        /// admin: everything; sales: works leads (only its advisor's, with --advisor).
        #[arg(long, default_value = "admin", value_parser = ["admin", "sales"])]
        role: String,
        /// A sales user's advisor id: it sees only that advisor's leads and notifications.
        #[arg(long)]
        advisor: Option<String>,
    },
    /// Change an account's role (and a sales user's advisor); takes effect at its next request.
    Role {
        name: String,
        #[arg(value_parser = ["admin", "sales"])]
        role: String,
        #[arg(long)]
        advisor: Option<String>,
    },
    /// Change a staff account's password (one line on stdin); its tokens stop working.
    Passwd { name: String },
    /// The staff accounts, one JSON line each.
    Ls,
    /// Disable an account: its tokens stop working and it cannot log in.
    Disable { name: String },
    /// Enable a disabled account again (it logs in afresh).
    Enable { name: String },
}

fn time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    andectl::decode::parse_time(s, Utc::now())
}

/// A time, or a duration from now (`30m`).
fn future_time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    match ande_platform::config::parse_duration(s) {
        Ok(d) => Ok(Utc::now() + chrono::Duration::from_std(d).map_err(|e| e.to_string())?),
        Err(_) => andectl::decode::parse_time(s, Utc::now()),
    }
}

fn notification_state(s: &str) -> Result<NotificationState, String> {
    s.parse().map_err(|_| {
        let all: Vec<&str> = NotificationState::ALL.iter().map(|s| s.as_str()).collect();
        format!("one of {}", all.join(", "))
    })
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    ande_platform::config::parse_duration(s)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    match run(cli.command, &env).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("andectl: {}", describe(&e));
            ExitCode::from(exit::code_for(&e))
        }
    }
}

/// The error and its causes on one line, leaving out a cause its parent already quoted.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

async fn run(cmd: Cmd, env: &Env) -> anyhow::Result<u8> {
    if let Cmd::Up = cmd {
        up(env).await?;
        return Ok(exit::SUCCESS);
    }
    let common = CommonConfig::from_env(env)?;
    let mut out = std::io::stdout();
    match cmd {
        Cmd::Up => unreachable!("handled above"),
        Cmd::Migrate => {
            for (schema, newest) in andectl::conn::migrate(&common).await? {
                writeln!(out, "{schema}: migrations applied up to {newest}")?;
            }
        }
        Cmd::Events(c) => events(&common, c, &mut out).await?,
        Cmd::Replay(c) => replay(&common, c, &mut out).await?,
        Cmd::Dlq(c) => dlq(&common, c, &mut out).await?,
        Cmd::Status { json } => {
            let bus = andectl::conn::bus(&common).await?;
            let report = andectl::status::report(&bus, env).await?;
            if json {
                writeln!(out, "{}", report.json)?;
            } else {
                andectl::status::print_text(&report, &mut out)?;
            }
            if !report.healthy {
                return Ok(exit::FAILURE);
            }
        }
        Cmd::User(c) => user(&common, c, &mut out).await?,
        Cmd::Advisor(c) => advisor(&common, c, &mut out).await?,
        Cmd::Notifier(c) => {
            let bus = andectl::conn::bus(&common).await?;
            use andectl::notifier as n;
            match c {
                NotifierCmd::Ls {
                    state,
                    advisor,
                    limit,
                } => n::list(&bus, state, advisor, limit, &mut out).await?,
                NotifierCmd::Retry { id, .. } => {
                    let which = id.map_or(RetryRequest::AllFailed, RetryRequest::One);
                    n::retry(&bus, which, &mut out).await?
                }
                NotifierCmd::Pause { until, reason } => {
                    n::pause(&bus, until, reason, &mut out).await?
                }
                NotifierCmd::Resume => n::resume(&bus, &mut out).await?,
            }
        }
        Cmd::Leads(c) => {
            let bus = andectl::conn::bus(&common).await?;
            match c {
                LeadsCmd::Show { id, phone } => {
                    andectl::leads::show(&bus, id.as_deref(), phone.as_deref(), &mut out).await?
                }
                LeadsCmd::Ls {
                    advisor,
                    since,
                    until,
                    limit,
                } => {
                    andectl::leads::list(&bus, advisor.as_deref(), since, until, limit, &mut out)
                        .await?
                }
                LeadsCmd::Journey { action_id } => {
                    andectl::leads::journey(&bus, &action_id, &mut out).await?
                }
            }
        }
        Cmd::Bench(b) => bench(b).await?,
    }
    Ok(exit::SUCCESS)
}

async fn bench(b: BenchCmd) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        ande_platform::telemetry::init("andectl", false);
    }
    andectl::bench::run(andectl::bench::BenchArgs {
        events: b.events,
        parts: b.part,
        seconds: std::time::Duration::from_secs(b.seconds.max(1)),
        open_seconds: b.open_seconds.max(1),
        rates: b.rates.into_iter().filter(|r| *r > 0).collect(),
        wechat_ms: b.wechat_ms,
        json: b.json,
        svg: b.svg,
    })
    .await
}

async fn events(
    common: &CommonConfig,
    cmd: EventsCmd,
    out: &mut (impl Write + Send),
) -> anyhow::Result<()> {
    let bus = andectl::conn::bus(common).await?;
    match cmd {
        EventsCmd::Tail {
            subject,
            correlation,
            since,
        } => {
            let stop = ande_platform::shutdown::on_signals();
            andectl::events::tail(
                &bus,
                &TailOptions {
                    subject,
                    correlation,
                    since,
                },
                out,
                stop,
            )
            .await?;
        }
        EventsCmd::Show {
            seq,
            since,
            until,
            action,
        } => {
            let query = match (seq, since, action) {
                (Some(n), _, _) => ShowQuery::Seq(n),
                (_, Some(since), _) => ShowQuery::Range { since, until },
                (_, _, Some(id)) => ShowQuery::Action(id),
                _ => unreachable!("clap requires one of them"),
            };
            let n = andectl::events::show(&bus, &query, out).await?;
            if matches!(query, ShowQuery::Range { .. }) {
                eprintln!("{n} event(s)");
            }
        }
    }
    Ok(())
}

async fn replay(common: &CommonConfig, c: ReplayCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let bus = andectl::conn::bus(common).await?;
    let from = match (c.from_seq, c.from_time) {
        (Some(n), _) => Start::Seq(n),
        (_, Some(t)) => Start::Time(t),
        _ => unreachable!("clap requires one of them"),
    };
    let args = ReplayArgs {
        consumer: c.consumer,
        from,
        dry_run: c.dry_run,
        into_prefix: c.into_prefix,
        allow_skip: c.allow_skip,
        wait: !c.no_wait,
        timeout: c.timeout,
    };
    andectl::replay::replay(&bus, common, &args, out).await?;
    Ok(())
}

async fn dlq(common: &CommonConfig, cmd: DlqCmd, out: &mut impl Write) -> anyhow::Result<()> {
    use andectl::dlq;
    let bus = andectl::conn::bus(common).await?;
    match cmd {
        DlqCmd::Ls { consumer, json } => {
            let letters = dlq::list(&bus, consumer.as_deref()).await?;
            if json {
                for d in &letters {
                    writeln!(out, "{}", serde_json::to_string(&d.view())?)?;
                }
            } else {
                dlq::print_table(&letters, out)?;
            }
        }
        DlqCmd::Show { seq } => {
            let d = dlq::get(&bus, seq).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&d.view())?)?;
        }
        DlqCmd::Retry { seq, consumer, .. } => {
            let done = match seq {
                Some(n) => vec![dlq::retry(&bus, n).await?],
                None => dlq::retry_all(&bus, consumer.as_deref()).await?,
            };
            for r in &done {
                writeln!(out, "dead letter {} republished to {} as stream seq {} (Nats-Msg-Id {}) and deleted", r.dlq_seq, r.subject, r.new_seq, r.msg_id)?;
            }
            writeln!(out, "{} retried", done.len())?;
        }
        DlqCmd::Purge { seq, consumer, .. } => match seq {
            Some(n) => {
                dlq::purge(&bus, n).await?;
                writeln!(out, "dead letter {n} deleted")?;
            }
            None => {
                let n = dlq::purge_all(&bus, consumer.as_deref()).await?;
                writeln!(out, "{n} dead letter(s) deleted")?;
            }
        },
    }
    Ok(())
}

async fn advisor(
    common: &CommonConfig,
    cmd: AdvisorCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use ande_contracts::notifier::{BindRequest, BindingFilter, BindingKey, PairRequest};
    use ande_notifier::bindings;
    let pool = andectl::conn::notifier_db(common).await?;
    let by = format!(
        "andectl:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    let failed = |f: ande_platform::rpc::Failure| anyhow::anyhow!(RpcError::from(f));
    match cmd {
        AdvisorCmd::Bind { advisor_id, openid } => {
            let r = BindRequest {
                advisor_id,
                openid,
                bound_by: by,
            };
            let b = bindings::bind(&pool, r).await.map_err(failed)?;
            writeln!(out, "{}", serde_json::to_string(&b)?)?;
        }
        AdvisorCmd::Unbind { advisor_id, openid } => {
            let k = BindingKey { advisor_id, openid };
            let u = bindings::unbind(&pool, k).await.map_err(failed)?;
            writeln!(out, "unbound {} from advisor {}", u.openid, u.advisor_id)?;
        }
        AdvisorCmd::Ls { advisor_id } => {
            let all = bindings::list(&pool, BindingFilter { advisor_id })
                .await
                .map_err(failed)?;
            for b in all.bindings {
                writeln!(out, "{}", serde_json::to_string(&b)?)?;
            }
        }
        AdvisorCmd::Pair { advisor_id } => {
            let r = PairRequest {
                advisor_id,
                created_by: by,
            };
            let p = bindings::pair(&pool, r).await.map_err(failed)?;
            writeln!(out, "pairing code for advisor {}: {} (valid until {}; the advisor enters it in the mini-program)", p.advisor_id, p.code, p.expires_at.to_rfc3339())?;
        }
    }
    pool.close().await;
    Ok(())
}

async fn user(common: &CommonConfig, cmd: UserCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let pool = andectl::conn::gateway_db(common).await?;
    match cmd {
        UserCmd::Add {
            name,
            role,
            advisor,
        } => {
            andectl::users::validate_username(&name)?;
            let role = andectl::users::role(&role, advisor.as_deref())?;
            let password = prompt_password(&name)?;
            andectl::users::add(&pool, &name, password, role, advisor.as_deref()).await?;
            writeln!(out, "staff user {name} created ({})", role.as_str())?;
        }
        UserCmd::Role {
            name,
            role,
            advisor,
        } => {
            let role = andectl::users::role(&role, advisor.as_deref())?;
            andectl::users::set_role(&pool, &name, role, advisor.as_deref()).await?;
            writeln!(out, "staff user {name} is now {}", role.as_str())?;
        }
        UserCmd::Passwd { name } => {
            andectl::users::validate_username(&name)?;
            let password = prompt_password(&name)?;
            andectl::users::passwd(&pool, &name, password).await?;
            writeln!(
                out,
                "password of staff user {name} changed; their tokens no longer work"
            )?;
        }
        UserCmd::Ls => {
            for u in ande_gateway::auth::list_staff(&pool).await? {
                writeln!(out, "{}", serde_json::to_string(&u)?)?;
            }
        }
        UserCmd::Disable { name } => {
            andectl::users::set_disabled(&pool, &name, true).await?;
            writeln!(
                out,
                "staff user {name} disabled; their tokens no longer work"
            )?;
        }
        UserCmd::Enable { name } => {
            andectl::users::set_disabled(&pool, &name, false).await?;
            writeln!(out, "staff user {name} enabled")?;
        }
    }
    pool.close().await;
    Ok(())
}

/// The password: without echo at a terminal, else one line of stdin.
fn prompt_password(name: &str) -> anyhow::Result<ande_platform::SecretString> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let pw = rpassword::prompt_password(format!("password for {name}: "))?;
        return andectl::users::read_password(format!("{pw}\n").as_bytes());
    }
    andectl::users::read_password(std::io::stdin().lock())
}

async fn up(env: &Env) -> anyhow::Result<()> {
    let opts = StackOptions::from_env(env)?;
    ande_platform::telemetry::init("andectl", opts.common.log_json);
    // Handle SIGTERM/Ctrl-C from the start: a signal during start-up stops cleanly too.
    let stop = ande_platform::shutdown::on_signals();
    // Where `up` keeps the data and logs of servers it starts itself.
    let data_dir = std::path::PathBuf::from(env.string("ANDECTL_DATA_DIR", "target/andectl"));
    let data_dir = data_dir.as_path();
    let started = andectl::infra::ensure(&opts.common, data_dir)
        .await
        .map_err(|e| Unreachable {
            what: "NATS or Postgres",
            reason: format!("{e:#}"),
        })?;
    let stack = match Stack::start(opts).await {
        Ok(stack) => stack,
        Err(e) => {
            started.stop().await;
            return Err(e);
        }
    };
    let admin = match offer_first_admin(&stack).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("could not create the first admin: {e:#}");
            None
        }
    };
    print_walkthrough(&stack, &started.names(), admin.as_deref());
    let token = stack.shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        token.cancel();
    });
    let result = stack.wait().await;
    started.stop().await;
    println!("stopped.");
    result
}

/// How the advisor's accept reaches us: WeChat's push (the simulator posts it to the gateway,
/// signed and encrypted) or the mini-program's report.
fn accept_steps(stack: &Stack) -> String {
    let g = &stack.gateway_url;
    let sim = stack.sim_url.clone().unwrap_or_default();
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    let in_wechat = format!(
        "curl -s -XPOST {sim}/sim/credits -H 'content-type: application/json' -d '{{\"openid\":\"o_advisor_1\",\"template_id\":\"{tpl}\",\"count\":1}}'"
    );
    let report = format!(
        "curl -s -XPOST {g}/api/advisor/subscribe -H 'content-type: application/json' -H \"authorization: Bearer $TOKEN\" \\\n    -d '{{\"advisorId\":\"adv-1\",\"templateId\":\"{tpl}\",\"subscribed\":true}}'"
    );
    if stack.sim_pushes {
        format!(
            "  # ... and accepts the subscription popup in WeChat: WeChat (the simulator) pushes
  # subscribe_msg_popup_event to {g}/api/wechat/events, signed and AES-encrypted (safe mode);
  # that push is the send credit (NOTIFIER_CREDIT_SOURCE=events: the client's report adds none)
  {in_wechat}
  curl -s {sim}/sim/pushes      # delivered: true once the gateway answered success
"
        )
    } else {
        format!(
            "  # ... accepts the subscription inside WeChat ...
  {in_wechat}
  # ... and the mini-program reports it from that session (the send credit)
  {report}
"
        )
    }
}

/// In development, when no admin account exists and someone is at the terminal, offer to create
/// one for the console. The admin to sign in as, if there is one.
async fn offer_first_admin(stack: &Stack) -> anyhow::Result<Option<String>> {
    use std::io::{BufRead, IsTerminal};
    let users = ande_gateway::auth::list_staff(&stack.gateway_pool).await?;
    if let Some(a) = users.iter().find(|u| u.role == "admin" && !u.disabled) {
        return Ok(Some(a.username.clone()));
    }
    if !stack.common.development || !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let answer = tokio::task::spawn_blocking(
        || -> anyhow::Result<Option<(String, ande_platform::SecretString)>> {
            print!("\nNo admin account yet. Create one for the staff console now? [Y/n] ");
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            if line.trim().eq_ignore_ascii_case("n") {
                return Ok(None);
            }
            print!("username [admin]: ");
            std::io::stdout().flush()?;
            line.clear();
            std::io::stdin().lock().read_line(&mut line)?;
            let name = Some(line.trim())
                .filter(|n| !n.is_empty())
                .unwrap_or("admin")
                .to_string();
            let password = prompt_password(&name)?;
            Ok(Some((name, password)))
        },
    )
    .await??;
    let Some((name, password)) = answer else {
        return Ok(None);
    };
    let admin = ande_gateway::auth::Role::Admin;
    andectl::users::add(&stack.gateway_pool, &name, password, admin, None).await?;
    println!("staff user {name} created (admin)");
    Ok(Some(name))
}

fn print_walkthrough(stack: &Stack, started: &[&str], admin: Option<&str>) {
    let g = &stack.gateway_url;
    let console = match admin {
        Some(name) => format!("open {g}/console/ and sign in as {name}"),
        None => format!(
            "create an account (printf '%s\\n' \"$PW\" | andectl user add admin --role admin), then open {g}/console/ and sign in as admin"
        ),
    };
    let sim = stack
        .sim_url
        .clone()
        .unwrap_or_else(|| "(external WeChat API)".into());
    println!(
        r#"
Ande stack is up.
  gateway       {g}        (OpenAPI: {g}/api/openapi.json)
  metrics       {admin}   (/metrics, /healthz, /readyz: every service's, one process)
  wechat-sim    {sim}
  NATS          {nats}   stream {stream}
  Postgres      schemas gateway, leads, notifier
  started here  {started}

Try it (paste into another terminal):
  # 0. staff bind the advisor's WeChat user to the advisor (or: andectl advisor pair adv-1)
  andectl advisor bind adv-1 o_advisor_1
  # 1. the advisor logs in to the mini-program (the simulator mints the wx.login code) ...
  CODE=$(curl -s -XPOST {sim}/sim/codes -H 'content-type: application/json' -d '{{"openid":"o_advisor_1"}}' | jq -r .code)
  TOKEN=$(curl -s -XPOST {g}/api/wechat/openid -H 'content-type: application/json' -d "{{\"code\":\"$CODE\"}}" | jq -r .data.token)
{accept}  # 2. a customer views the advisor's resume and leaves a phone number
  curl -s -XPOST {g}/api/customer/action -H 'content-type: application/json' \
    -d '{{"customerId":"cust-1","advisorId":"adv-1","actionType":"view_resume","actionData":{{"resumeId":"r-1"}},"customerName":"张三","customerPhone":"138 0013 8000"}}'
  # 3. the advisor's phone got the subscribe message (and WeChat pushed back that it arrived)
  curl -s '{sim}/sim/messages?touser=o_advisor_1'
  curl -s '{sim}/sim/pushes'
  # 4. the lead in Postgres
  psql '{db}' -c 'select customer_code, name, phone, status, level from leads.leads'
  # 5. the events, decoded, and how the pipeline is keeping up (same environment variables as here)
  andectl events tail        andectl status        andectl dlq ls
  # 6. the staff console (leads, timelines, notifications, accounts):
  {console}

Ctrl-C stops everything."#,
        accept = accept_steps(stack),
        admin = stack.admin_addr.map_or_else(
            || "off (METRICS_ADDR=off)".to_string(),
            |a| format!("http://{a}")
        ),
        nats = ande_platform::config::redact_url(&stack.common.nats_url),
        db = ande_platform::config::redact_url(ande_platform::ExposeSecret::expose_secret(
            &stack.common.database_url
        )),
        stream = stack.common.subjects().stream(),
        started = if started.is_empty() {
            "nothing (NATS and Postgres were already running)".to_string()
        } else {
            format!(
                "{} (data and logs under ANDECTL_DATA_DIR, default target/andectl/)",
                started.join(", ")
            )
        },
    );
}
