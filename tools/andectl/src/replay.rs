//! `andectl replay`: re-drive one service's durable consumer from a stream sequence or a time,
//! or copy that range into a scratch environment.
//!
//! # How: reset the consumer, do not republish
//!
//! Two ways were possible. Republishing the range would append copies of old events to the log
//! (forever, as far as replay and audit are concerned), under new sequence numbers and message
//! ids, and every consumer of those subjects would see them. Resetting the consumer re-reads the
//! log as it is: the events keep their sequence, time and id, and only the chosen consumer sees
//! them again. So replay resets. NATS 2.9 has no "reset consumer" call, so the durable is deleted
//! and created again under the same name with `DeliverPolicy::ByStartSequence` (or
//! `ByStartTime`) and otherwise the same settings: those on the server when it exists (filter
//! subject checked against the service's [`ConsumerSpec`]), else the spec's, exactly as
//! `ande_platform::consumer::ensure_consumer` creates it.
//!
//! The running service does not need to know: its pull loop (`ande_platform::consumer::run`)
//! gets "consumer deleted" (or, failing that, misses the idle heartbeat) and rebuilds its pull
//! subscription on the same durable name, which by then is the new consumer. Acks still in flight
//! for the old consumer are lost, so those messages come again: harmless, because every consumer
//! is idempotent (leads by action id, with its outcome re-emitted only if never published; the
//! notifier by action and event id). That is also why replaying into production changes nothing
//! that was already done, and only does what was missed.
//!
//! Safety: a start later than the consumer's ack floor would silently skip events it has not
//! processed yet, so that is refused unless `--allow-skip`. `--dry-run` only lists the range.
//! Progress is the consumer's own state (pending, ack pending, ack floor), drawn on stderr; the
//! summary counts deliveries, redeliveries and dead letters added meanwhile. When no process is
//! pulling from the consumer, replay says so instead of waiting forever: the reset stays and the
//! service replays when it starts.
//!
//! # `--into-prefix P`: reproduce without touching production
//!
//! The range of the consumer's subject is copied into prefix `P`'s stream (created with the same
//! settings through `Bus::ensure_streams`), the subject's prefix rewritten, every header kept
//! (with `Ande-Copied-From: <stream>#<seq>` added). Nothing in production changes. Then
//! `ANDE_PREFIX=P DATABASE_URL=<scratch database> andectl up` processes the copies from the start.
//! Only the consumer's own subject is copied: to reproduce the notifier with its credits, copy
//! `notifier-subscriptions` as well as `notifier-outcomes`.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ande_events::Subjects;
use ande_platform::bus::Bus;
use ande_platform::config::CommonConfig;
use ande_platform::consumer::ConsumerSpec;
use anyhow::{bail, Context};
use async_nats::jetstream::consumer::{self, DeliverPolicy, IntoConsumerConfig};
use async_nats::jetstream::stream::Stream;
use chrono::{DateTime, Utc};

use crate::decode::{rfc3339, short_type};
use crate::events::{count, describe_start, Scan, Start};

/// How often the consumer's state is read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// With nobody pulling and no progress for this long, the service is taken to be down. Longer
/// than a service's pull loop needs to notice the reset (two idle heartbeats, 10 s).
const STALL: Duration = Duration::from_secs(30);
/// Events listed by a dry run before "… and N more".
const DRY_RUN_LIST_MAX: u64 = 1000;
/// Publishes in flight while copying into another prefix.
const COPY_IN_FLIGHT: usize = 256;

/// The consumers replay knows, with the settings their services create them with.
pub fn known_consumers(bus: &Bus, common: &CommonConfig) -> Vec<ConsumerSpec> {
    let leads =
        ande_leads::consumer_spec(bus, &ande_leads::LeadsConfig::with_common(common.clone()));
    let (outcomes, subscriptions, pushes) = ande_notifier::consumer_specs(bus);
    let changes = ande_leads::changes_spec(bus);
    vec![leads, changes, outcomes, subscriptions, pushes]
}

pub const CONSUMER_NAMES: [&str; 5] = [
    ande_leads::consumer::DURABLE,
    ande_leads::changes::DURABLE,
    ande_notifier::consumers::OUTCOMES_DURABLE,
    ande_notifier::consumers::SUBSCRIPTIONS_DURABLE,
    ande_notifier::consumers::WECHAT_DURABLE,
];

#[derive(Clone, Debug)]
pub struct ReplayArgs {
    pub consumer: String,
    pub from: Start,
    pub dry_run: bool,
    pub into_prefix: Option<String>,
    /// Start later than the consumer's ack floor even though that skips unprocessed events.
    pub allow_skip: bool,
    /// Wait for the consumer to work through the range (else return right after the reset).
    pub wait: bool,
    /// Give up waiting after this long (the reset stays).
    pub timeout: Duration,
}

/// What a replay covers.
#[derive(Clone, Debug)]
pub struct Plan {
    pub consumer: String,
    pub stream: String,
    pub filter_subject: String,
    pub from: Start,
    /// Events in the range when planned.
    pub count: u64,
    pub first: Option<(u64, DateTime<Utc>)>,
    /// The last event on the subject when planned (the replay is done once it is acked).
    pub last: Option<(u64, DateTime<Utc>)>,
    /// The consumer's ack floor (stream sequence) before the reset, if it exists.
    pub ack_floor: Option<u64>,
    /// Events on the subject after the ack floor and before the start: skipped by the replay.
    pub would_skip: u64,
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub consumer: String,
    pub count: u64,
    /// Deliveries by the reset consumer (including redeliveries, and events newer than the plan).
    pub delivered: u64,
    pub redelivered: u64,
    /// Dead letters this consumer added while replaying.
    pub new_dead_letters: u64,
    pub elapsed: Duration,
    /// False when not waited for (`--no-wait`).
    pub completed: bool,
}

#[derive(Clone, Debug)]
pub struct CopySummary {
    pub copied: u64,
    pub target_stream: String,
    pub target_subject: String,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub enum Outcome {
    DryRun(Plan),
    Replayed(Plan, Summary),
    Copied(Plan, CopySummary),
}

/// Run a replay as the command line asked; what it does is printed to `out` (the dry-run list,
/// the summary), progress to stderr.
pub async fn replay<W: Write>(
    bus: &Bus,
    common: &CommonConfig,
    args: &ReplayArgs,
    out: &mut W,
) -> anyhow::Result<Outcome> {
    let specs = known_consumers(bus, common);
    let Some(spec) = specs.iter().find(|s| s.durable == args.consumer) else {
        bail!(
            "unknown consumer {:?}: one of {}",
            args.consumer,
            CONSUMER_NAMES.join(", ")
        );
    };
    let stream = crate::conn::events_stream(bus).await?;
    let plan = plan(&stream, spec, args.from).await?;
    describe_plan(&plan, args, out)?;

    if args.dry_run {
        list_range(&stream, &plan, out).await?;
        return Ok(Outcome::DryRun(plan));
    }
    if let Some(prefix) = &args.into_prefix {
        let summary = copy_into(bus, common, &stream, &plan, prefix).await?;
        writeln!(
            out,
            "copied {} events into stream {} (subject {}) in {:.1}s.\nReproduce with a scratch database, e.g.:\n  ANDE_PREFIX={prefix} DATABASE_URL=postgres://postgres@127.0.0.1:5432/scratch API_PORT=3101 WECHAT_SIM_ADDR=127.0.0.1:3901 andectl up",
            summary.copied,
            summary.target_stream,
            summary.target_subject,
            summary.elapsed.as_secs_f64()
        )?;
        return Ok(Outcome::Copied(plan, summary));
    }
    refuse_skips(&stream, &plan, args)?;
    let summary = reset_and_wait(bus, &stream, spec, &plan, args).await?;
    if summary.completed {
        writeln!(
            out,
            "replayed {} events through {} in {:.1}s: {} deliveries, {} redelivered, {} new dead letter(s){}",
            summary.count,
            summary.consumer,
            summary.elapsed.as_secs_f64(),
            summary.delivered,
            summary.redelivered,
            summary.new_dead_letters,
            if summary.new_dead_letters > 0 { " (see `andectl dlq ls`)" } else { "" }
        )?;
    } else {
        writeln!(
            out,
            "consumer {} reset to {}; the service replays {} events as it pulls.",
            summary.consumer,
            describe_start(plan.from),
            plan.count
        )?;
    }
    Ok(Outcome::Replayed(plan, summary))
}

/// Refuse, unless `--allow-skip`, a start that would make the consumer skip events unseen.
fn refuse_skips(stream: &Stream, plan: &Plan, args: &ReplayArgs) -> anyhow::Result<()> {
    // A start past the end of the stream would make the consumer skip every event stored from
    // now until then, unnoticed (a local time typed as UTC does this).
    let last_seq = stream.cached_info().state.last_sequence;
    let beyond = match plan.from {
        Start::Time(t) if t > chrono::Utc::now() => {
            Some(format!("{} is in the future", t.to_rfc3339()))
        }
        Start::Seq(n) if n > last_seq + 1 => Some(format!(
            "sequence {n} is past the stream's last, {last_seq}"
        )),
        _ => None,
    };
    if let (Some(why), false) = (beyond, args.allow_skip) {
        bail!("{why}: the consumer would skip every event published until then. Times without a zone are UTC; pass --allow-skip if this is meant.");
    }
    if plan.would_skip > 0 && !args.allow_skip {
        bail!(
            "consumer {} has processed only up to stream sequence {}; starting at {} would skip {} unprocessed event(s). Start earlier, or pass --allow-skip to skip them on purpose.",
            plan.consumer,
            plan.ack_floor.unwrap_or(0),
            plan.first.map_or_else(|| describe_start(plan.from), |(s, _)| s.to_string()),
            plan.would_skip
        );
    }
    Ok(())
}

/// Work out the range without changing anything.
pub async fn plan(stream: &Stream, spec: &ConsumerSpec, from: Start) -> anyhow::Result<Plan> {
    let filter = &spec.filter_subject;
    let mut scan = Scan::open(stream, filter, from).await?;
    let in_range = scan.total();
    let first = scan.next().await?.map(|m| (m.seq, m.time));
    scan.close().await;
    let last = match stream.get_last_raw_message_by_subject(filter).await {
        Ok(m) => Some((m.sequence, crate::decode::to_chrono(m.time))),
        Err(_) => None,
    };
    let ack_floor = match stream.consumer_info(&spec.durable).await {
        Ok(info) => Some(info.ack_floor.stream_sequence),
        Err(_) => None,
    };
    // Events after the floor that the replay would not reach (it starts later).
    let would_skip = match (ack_floor, first) {
        (Some(floor), Some((first_seq, _))) if first_seq > floor + 1 => {
            count_between(stream, filter, floor + 1, first_seq).await?
        }
        (Some(floor), None) => count(stream, filter, Start::Seq(floor + 1)).await?,
        _ => 0,
    };
    Ok(Plan {
        consumer: spec.durable.clone(),
        stream: stream.cached_info().config.name.clone(),
        filter_subject: filter.clone(),
        from,
        count: in_range,
        first,
        last: last.filter(|(seq, _)| first.is_some_and(|(f, _)| *seq >= f)),
        ack_floor,
        would_skip,
    })
}

/// Messages on `filter` with sequence in `[from, to)`.
async fn count_between(stream: &Stream, filter: &str, from: u64, to: u64) -> anyhow::Result<u64> {
    Ok(count(stream, filter, Start::Seq(from))
        .await?
        .saturating_sub(count(stream, filter, Start::Seq(to)).await?))
}

fn describe_plan<W: Write>(plan: &Plan, args: &ReplayArgs, out: &mut W) -> anyhow::Result<()> {
    let verb = match (&args.into_prefix, args.dry_run) {
        (_, true) => "would replay",
        (Some(_), false) => "copying",
        (None, false) => "replaying",
    };
    let range = match (plan.first, plan.last) {
        (Some((fs, ft)), Some((ls, lt))) => {
            format!("stream seq {fs}..{ls}, {} .. {}", rfc3339(ft), rfc3339(lt))
        }
        (Some((fs, ft)), None) => format!("from stream seq {fs}, {}", rfc3339(ft)),
        _ => "nothing".into(),
    };
    let target = match &args.into_prefix {
        Some(p) => format!(" into prefix {p}"),
        None => String::new(),
    };
    writeln!(
        out,
        "{verb} {} event(s) of consumer {} ({}) from {}{target}: {range}",
        plan.count,
        plan.consumer,
        plan.filter_subject,
        describe_start(plan.from)
    )?;
    if plan.would_skip > 0 {
        writeln!(
            out,
            "note: {} event(s) after the consumer's ack floor come before this start",
            plan.would_skip
        )?;
    }
    Ok(())
}

async fn list_range<W: Write>(stream: &Stream, plan: &Plan, out: &mut W) -> anyhow::Result<()> {
    let mut scan = Scan::open(stream, &plan.filter_subject, plan.from).await?;
    writeln!(
        out,
        "{:>10}  {:<24}  {:<20}  CORRELATION",
        "SEQ", "TIME", "TYPE"
    )?;
    let mut listed = 0;
    while let Some(m) = scan.next().await? {
        if listed == DRY_RUN_LIST_MAX {
            writeln!(out, "… and {} more", plan.count.saturating_sub(listed))?;
            break;
        }
        let ty = m.kind().map_or("?", short_type);
        writeln!(
            out,
            "{:>10}  {:<24}  {:<20}  {}",
            m.seq,
            rfc3339(m.time),
            ty,
            m.correlation_id().unwrap_or_else(|| "-".into())
        )?;
        listed += 1;
    }
    scan.close().await;
    writeln!(out, "dry run: nothing changed.")?;
    Ok(())
}

/// The consumer's configuration for the reset: the server's own when it exists, else the spec's.
async fn reset_config(
    stream: &Stream,
    spec: &ConsumerSpec,
    from: Start,
) -> anyhow::Result<consumer::Config> {
    let mut config = match stream.consumer_info(&spec.durable).await {
        Ok(info) => {
            if info.config.filter_subject != spec.filter_subject {
                bail!(
                    "consumer {} filters {:?}, not {:?} as its service would create it; refusing to reset it",
                    spec.durable,
                    info.config.filter_subject,
                    spec.filter_subject
                );
            }
            info.config
        }
        Err(_) => ande_platform::consumer::server_config(spec).into_consumer_config(),
    };
    config.deliver_policy = match from {
        Start::All => DeliverPolicy::All,
        other => other.deliver_policy()?,
    };
    Ok(config)
}

/// Dead letters of `consumer` stored so far.
async fn dead_letters(bus: &Bus, consumer: &str) -> u64 {
    match crate::conn::dlq_stream(bus).await {
        Ok(s) => count(&s, &bus.subjects.dead_letters(consumer), Start::All)
            .await
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn reset_and_wait(
    bus: &Bus,
    stream: &Stream,
    spec: &ConsumerSpec,
    plan: &Plan,
    args: &ReplayArgs,
) -> anyhow::Result<Summary> {
    let config = reset_config(stream, spec, plan.from).await?;
    let dlq_before = dead_letters(bus, &spec.durable).await;
    let started = Instant::now();
    recreate(stream, &spec.durable, config).await?;

    let mut summary = Summary {
        consumer: spec.durable.clone(),
        count: plan.count,
        delivered: 0,
        redelivered: 0,
        new_dead_letters: 0,
        elapsed: Duration::ZERO,
        completed: false,
    };
    if !args.wait {
        return Ok(summary);
    }
    wait_until_acked(stream, &spec.durable, plan, args, started, &mut summary).await?;
    summary.elapsed = started.elapsed();
    summary.new_dead_letters = dead_letters(bus, &spec.durable)
        .await
        .saturating_sub(dlq_before);
    summary.completed = true;
    Ok(summary)
}

/// Delete the durable `name` if it exists and create it again with `config`.
async fn recreate(stream: &Stream, name: &str, config: consumer::Config) -> anyhow::Result<()> {
    // From here until the create, the service's pulls fail and it retries: keep the gap short.
    if stream.consumer_info(name).await.is_ok() {
        stream
            .delete_consumer(name)
            .await
            .with_context(|| format!("deleting consumer {name}"))?;
    }
    stream.create_consumer(config).await.with_context(|| {
        format!(
            "re-creating consumer {name} (it is deleted now: restart its service to re-create it)"
        )
    })?;
    Ok(())
}

/// Poll the reset consumer until it acks the plan's last event; gives up when stalled or late.
async fn wait_until_acked(
    stream: &Stream,
    name: &str,
    plan: &Plan,
    args: &ReplayArgs,
    started: Instant,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let target = plan.last.map_or(0, |(seq, _)| seq);
    let mut bar = Progress::new(plan.count);
    let mut last_change = Instant::now();
    let mut last_seen = (0, 0);
    loop {
        let info = stream
            .consumer_info(name)
            .await
            .with_context(|| format!("consumer {name}"))?;
        let done = info.ack_floor.stream_sequence >= target && info.num_ack_pending == 0;
        let acked = if done {
            plan.count
        } else {
            info.ack_floor.consumer_sequence.min(plan.count)
        };
        bar.update(acked);
        summary.delivered = info.delivered.consumer_sequence;
        summary.redelivered = info.num_redelivered as u64;
        if done {
            break;
        }
        let seen = (
            info.delivered.consumer_sequence,
            info.ack_floor.consumer_sequence,
        );
        if seen != last_seen {
            last_seen = seen;
            last_change = Instant::now();
        }
        if last_change.elapsed() > STALL && info.num_waiting == 0 {
            bar.finish();
            bail!(
                "no process is pulling from consumer {name} (is the service running?). The consumer is reset: it replays from {} when the service starts.",
                describe_start(plan.from)
            );
        }
        if started.elapsed() > args.timeout {
            bar.finish();
            bail!(
                "gave up waiting after {:?}: {} pending, {} awaiting ack. The reset stays; follow it with `andectl status`.",
                args.timeout,
                info.num_pending,
                info.num_ack_pending
            );
        }
        tokio::time::sleep(POLL).await;
    }
    bar.finish();
    Ok(())
}

async fn copy_into(
    bus: &Bus,
    common: &CommonConfig,
    stream: &Stream,
    plan: &Plan,
    prefix: &str,
) -> anyhow::Result<CopySummary> {
    let target_subjects =
        Subjects::new(prefix).map_err(|e| anyhow::anyhow!("--into-prefix {prefix:?}: {e}"))?;
    if target_subjects == bus.subjects {
        bail!("--into-prefix {prefix} is this environment's own prefix: replay without --into-prefix to re-drive it");
    }
    let mut target_common = common.clone();
    target_common.prefix = prefix.to_string();
    let target = Bus::from_client(bus.client.clone(), &target_common);
    target
        .ensure_streams(common.event_max_age)
        .await
        .context("creating the scratch streams")?;
    let source_prefix = format!("{}.", bus.subjects.prefix());
    let target_subject = format!(
        "{prefix}.{}",
        plan.filter_subject
            .strip_prefix(&source_prefix)
            .unwrap_or(&plan.filter_subject)
    );

    let started = Instant::now();
    let mut bar = Progress::new(plan.count);
    let mut scan = Scan::open(stream, &plan.filter_subject, plan.from).await?;
    let mut in_flight = VecDeque::new();
    let mut copied = 0;
    while let Some(m) = scan.next().await? {
        let subject = match m.subject.strip_prefix(&source_prefix) {
            Some(rest) => format!("{prefix}.{rest}"),
            None => bail!(
                "event {} has subject {} outside prefix {}",
                m.seq,
                m.subject,
                bus.subjects.prefix()
            ),
        };
        let mut headers = m.headers.clone();
        headers.insert(
            "Ande-Copied-From",
            format!("{}#{}", plan.stream, m.seq).as_str(),
        );
        in_flight.push_back(
            target
                .js
                .publish_with_headers(subject, headers, m.payload.clone())
                .await
                .context("copying")?,
        );
        if in_flight.len() >= COPY_IN_FLIGHT {
            if let Some(ack) = in_flight.pop_front() {
                ack.await.context("scratch stream did not store a copy")?;
                copied += 1;
                bar.update(copied);
            }
        }
    }
    scan.close().await;
    for ack in in_flight {
        ack.await.context("scratch stream did not store a copy")?;
        copied += 1;
        bar.update(copied);
    }
    bar.finish();
    Ok(CopySummary {
        copied,
        target_stream: target.subjects.stream(),
        target_subject,
        elapsed: started.elapsed(),
    })
}

/// A progress bar on stderr, in plain text: redrawn in place on a terminal, a line per tenth
/// otherwise (logs, CI).
pub struct Progress {
    total: u64,
    shown: Option<u64>,
    tty: bool,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    const WIDTH: u64 = 30;
    const REDRAW: Duration = Duration::from_millis(100);

    pub fn new(total: u64) -> Self {
        Self {
            total,
            shown: None,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_draw: None,
        }
    }

    pub fn update(&mut self, done: u64) {
        let done = done.min(self.total);
        if self.shown == Some(done) {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            if done != self.total && self.last_draw.is_some_and(|t| t.elapsed() < Self::REDRAW) {
                return;
            }
            let _ = write!(err, "\r{}", self.line(done));
        } else {
            let tenth = |n: u64| (n * 10).checked_div(self.total).unwrap_or(10);
            if self.shown.is_some_and(|s| tenth(s) == tenth(done)) {
                return;
            }
            let _ = writeln!(err, "{}", self.line(done));
        }
        let _ = err.flush();
        self.shown = Some(done);
        self.last_draw = Some(Instant::now());
    }

    fn line(&self, done: u64) -> String {
        let filled = (done * Self::WIDTH)
            .checked_div(self.total)
            .unwrap_or(Self::WIDTH);
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        format!(
            "[{}{}] {done}/{} ({pct}%) {:.1}s",
            "#".repeat(filled as usize),
            ".".repeat((Self::WIDTH - filled) as usize),
            self.total,
            self.started.elapsed().as_secs_f64()
        )
    }

    pub fn finish(&mut self) {
        if self.tty && self.shown.is_some() {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_progress() {
        let p = Progress::new(200);
        assert!(p.line(0).starts_with("[......"));
        assert!(p.line(100).contains("100/200 (50%)"));
        assert!(p.line(200).starts_with(&format!("[{}]", "#".repeat(30))));
        assert!(Progress::new(0).line(0).contains("(100%)"));
    }
}
