//! Sending: claim due notifications in batches, send many at once, record the answers in
//! batches.
//!
//! The queue is the `notifications` table. One loop per process claims up to
//! `NOTIFIER_CLAIM_BATCH` due rows at a time with `FOR UPDATE SKIP LOCKED`, reserving a credit for
//! each in the same transaction, so any number of processes send each notification once. The
//! process holds at most `NOTIFIER_MAX_IN_FLIGHT` claimed rows (a semaphore permit each, released
//! once the answer is recorded), so a slow WeChat or a slow database holds the claims back
//! rather than piling up work. Claimed rows go out in lanes, one per advisor: an advisor's
//! messages are sent one after another, oldest first, and a claim skips advisors with a send in
//! flight, so no advisor gets a later message (or a digest) before an earlier one. Answers go to
//! one recorder that writes whatever has arrived in one transaction. Sends share one HTTP
//! keep-alive pool (the WeChat client's).
//!
//! Failures:
//! - transient (-1 busy, 45011 minute quota, HTTP 5xx, timeouts, transport errors): back to the
//!   queue with exponential backoff (±20 % jitter, at most 5 minutes), for `NOTIFIER_RETRY_FOR`
//!   (1 h) after the first such failure, then failed: a WeChat outage of minutes fails nothing;
//! - 43101 (the user has no credit left at WeChat): our count is wrong, so it is set to zero and
//!   the notification waits for the next accept;
//! - 45009 (daily quota): sending pauses for everyone until midnight Asia/Shanghai (when the
//!   quota resets) or until an operator resumes; the backlog stays queued, and sends of this
//!   process not yet started are handed back at once;
//! - anything else (40003, 40037, 47003, 41030, 48001, …): failed, with WeChat's errcode and errmsg.
//!
//! Where WeChat's outcome is unknown we choose to send again rather than lose the notification:
//! a timeout is retried, and a notification a crashed process left in `sending` is re-queued after
//! `stale_after`. These are the only ways an advisor can receive a message twice; a missed
//! customer costs the company more than a duplicate message. Every such case is in the delivery log.
//!
//! Shutdown: claiming stops at once, claimed sends not started are handed back (queued, credit
//! back, the attempt not counted), sends in flight have `NOTIFIER_SHUTDOWN_GRACE` to finish and
//! be recorded. A send still in flight when the grace is nearly spent is cut off and recorded
//! like a timeout (retried); with the default grace above WeChat's request timeout that does
//! not happen. No row is left `sending`.
//!
//! Credits in those cases: the reservation is given back when the attempt ends without WeChat's
//! "ok" (timeout, crash) and taken again by the next attempt, so our count follows the attempts
//! whose "ok" we saw. If an unknown attempt did go through, WeChat spent one credit more than we
//! counted; the next send beyond WeChat's real count gets 43101, which sets our count to zero and
//! parks that notification until the next accept (self-correcting, never a lost notification).
//!
//! `stale_after` is kept at or above five WeChat timeouts (see `crate::run`), so a live send is
//! never presumed abandoned while WeChat may still answer it. Should an answer still arrive after
//! the row was re-queued (a process stalled on the database, or processes configured
//! differently), the attempt no longer owns the row ([`store::Current::owned_by`]): it records
//! what WeChat said without overwriting a later attempt, and an "ok" takes back the credit given
//! back at re-queueing.
//!
//! The sweep also releases notifications waiting for credit once a credit exists: one waiting
//! notification is simply re-queued; several become one digest that says how many customer
//! actions wait. A digest that found no credit either (43101) waits like any notification and is
//! folded into the next digest with its count and its members. Parking is serialised per advisor
//! so that `max_waiting` holds with any number of processes.
//!
//! The claim loop, the recorder and the sweep each run supervised: one that panics is logged
//! and started again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ande_platform::shutdown::supervise;
use ande_wechat::{SendReceipt, SubscribeMessage, WechatClient, WechatError};
use chrono::{DateTime, Duration as ChronoDuration, FixedOffset, TimeZone, Utc};
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::NotifierConfig;
use crate::content;
use crate::credits;
use crate::store::{
    self, ClaimLimits, Claimed, LogEntry, NotificationKind, NotificationState, Summary,
};

/// WeChat's "daily API quota reached": pause until it resets.
pub const ERRCODE_DAILY_QUOTA: i64 = 45009;

/// Retry delays never exceed this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Retrying to record WeChat's answers: the first pause, and the longest.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
/// Claim loops per process.
const CLAIM_LOOPS: usize = 2;
/// When the first answer arrives alone, the recorder waits this long for others.
const RECORD_GATHER: Duration = Duration::from_millis(2);
/// Most answers recorded in one transaction.
const RECORD_BATCH: usize = 512;
/// Most notifications of one advisor in one claim (sent one after another).
const PER_ADVISOR_PER_CLAIM: usize = 1;
/// A loop that panicked is started again after this.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// Of the shutdown grace, this much is kept for recording the last answers.
const RECORD_MARGIN: Duration = Duration::from_secs(2);

pub struct Dispatcher {
    pub pool: PgPool,
    pub wechat: WechatClient,
    pub config: Arc<NotifierConfig>,
    /// Woken when new work is queued in this process, so a send starts at once.
    pub wake: Arc<Notify>,
    /// Woken when a subscription change arrives in this process, so waiting notifications are
    /// released at once rather than at the next sweep.
    pub sweep_now: Arc<Notify>,
}

/// What became of one claimed notification, for the recorder; its permit is released once it
/// is recorded.
struct Answer {
    claimed: Claimed,
    /// WeChat's answer, or why it was never sent.
    result: Result<Result<SendReceipt, WechatError>, &'static str>,
    _permit: OwnedSemaphorePermit,
}

/// What the lanes of one process share.
struct Lanes {
    answers: mpsc::Sender<Answer>,
    /// Cancelled on shutdown: no send starts after it.
    stopping: CancellationToken,
    /// Cancelled when the shutdown grace is nearly spent: sends in flight are cut off.
    cut_off: CancellationToken,
    /// Set on a 45009 until the recorder has written the pause to the database (where every
    /// claim sees it): meanwhile sends not yet started are handed back and nothing is claimed.
    held: Arc<AtomicBool>,
}

impl Lanes {
    /// Why a send must not start now, if it must not.
    fn stop_reason(&self) -> Option<&'static str> {
        if self.stopping.is_cancelled() {
            return Some("shutting down before sending");
        }
        self.held
            .load(Ordering::SeqCst)
            .then_some("sending paused (45009) before sending")
    }
}

impl Dispatcher {
    /// Claim, send and record until `shutdown`, then hand back what was not started, let what
    /// is in flight finish within the grace, and record it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight));
        let (tx, rx) = mpsc::channel(self.config.max_in_flight.max(1));
        let lanes = Arc::new(Lanes {
            answers: tx,
            stopping: shutdown.clone(),
            cut_off: CancellationToken::new(),
            held: Arc::new(AtomicBool::new(false)),
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let recorder = {
            let (me, rx, never) = (self.clone(), rx.clone(), CancellationToken::new());
            let held = lanes.held.clone();
            // Not stopped by shutdown: it ends when every answer is in (all senders gone).
            tokio::spawn(async move {
                supervise("notifier recorder", &never, RESTART_PAUSE, move || {
                    me.clone().record_loop(rx.clone(), held.clone())
                })
                .await
            })
        };
        let sweeper = {
            let (me, stop) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                supervise("notifier sweep", &stop.clone(), RESTART_PAUSE, move || {
                    let (me, stop) = (me.clone(), stop.clone());
                    async move { me.sweeper(stop).await }
                })
                .await
            })
        };
        // Two claim loops: while one waits on its transaction, the other can fill the slots
        // that answers freed meanwhile (one loop made each send wait for a claim in progress).
        let claimers: Vec<_> = (0..CLAIM_LOOPS)
            .map(|_| {
                let (me, lanes, slots, stop) =
                    (self.clone(), lanes.clone(), slots.clone(), shutdown.clone());
                tokio::spawn(async move {
                    supervise("notifier claims", &stop, RESTART_PAUSE, move || {
                        me.clone().claim_loop(lanes.clone(), slots.clone())
                    })
                    .await
                })
            })
            .collect();
        for c in claimers {
            let _ = c.await;
        }
        // Shutdown: lanes hand back what they have not started; the rest gets the grace.
        let grace = self.config.shutdown_grace;
        let cut_off = lanes.cut_off.clone();
        drop(lanes);
        let _ = tokio::time::timeout(grace.saturating_sub(RECORD_MARGIN), async {
            let _ = slots.acquire_many(to_u32(self.config.max_in_flight)).await;
        })
        .await;
        cut_off.cancel();
        let _ = tokio::time::timeout(RECORD_MARGIN, recorder).await;
        let _ = sweeper.await;
    }

    /// Claim as many notifications as there are free slots (up to a batch) and start their
    /// lanes; wait for work when there is none.
    async fn claim_loop(self: Arc<Self>, lanes: Arc<Lanes>, slots: Arc<Semaphore>) {
        let stop = lanes.stopping.clone();
        while !stop.is_cancelled() {
            if lanes.held.load(Ordering::SeqCst) {
                self.idle(&stop).await; // a 45009 is being recorded
                continue;
            }
            // Claim when a quarter of a batch is free, not per freed slot: a claim is a
            // transaction, and one per send would make Postgres the bottleneck again.
            let batch = self.config.claim_batch.min(self.config.max_in_flight);
            let some = tokio::select! {
                p = slots.clone().acquire_many_owned(to_u32((batch / 4).max(1))) => p.expect("the semaphore is never closed"),
                _ = stop.cancelled() => break,
            };
            let mut permits: Vec<OwnedSemaphorePermit> = split(some);
            while permits.len() < batch {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let limits = ClaimLimits {
                policy: self.policy(),
                limit: permits.len(),
                per_advisor: PER_ADVISOR_PER_CLAIM,
                in_flight_hold: self.config.wechat.timeout,
                max_waiting: self.config.max_waiting,
            };
            let t0 = Instant::now();
            let batch = match self.claim(limits).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim notifications; retrying");
                    self.idle(&stop).await;
                    continue;
                }
            };
            if !batch.claimed.is_empty() {
                tracing::debug!(
                    limit = limits.limit,
                    claimed = batch.claimed.len(),
                    took_ms = t0.elapsed().as_millis() as u64,
                    "claimed"
                );
            }
            let more = batch.full(limits.limit) && !batch.paused;
            self.start_lanes(&lanes, batch.claimed, permits);
            if !more {
                self.idle(&stop).await;
            }
        }
    }

    /// One claim, on a connection of its own for the transaction.
    async fn claim(&self, limits: ClaimLimits<'_>) -> Result<store::Batch, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        store::claim(&mut conn, limits).await
    }

    /// Inside `NOTIFIER_QUIET_HOURS` now.
    /// Quiet hours and the hourly cap, as of now.
    fn policy(&self) -> store::SendPolicy<'_> {
        let c = &self.config;
        store::SendPolicy {
            quiet_hours: c.quiet_hours,
            urgent: &c.urgent,
            now: c.clock.now(),
            max_singles_per_hour: c.max_singles_per_hour,
        }
    }

    /// Until new work is announced in this process, the poll interval passes, or shutdown.
    async fn idle(&self, stop: &CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(self.config.poll_every) => {}
        }
    }

    /// One lane per advisor, in claim order; each claimed row takes one permit (the unused ones
    /// are released here).
    fn start_lanes(
        self: &Arc<Self>,
        lanes: &Arc<Lanes>,
        claimed: Vec<Claimed>,
        mut permits: Vec<OwnedSemaphorePermit>,
    ) {
        let mut by_advisor: BTreeMap<String, Vec<(Claimed, OwnedSemaphorePermit)>> =
            BTreeMap::new();
        for c in claimed {
            let permit = permits.pop().expect("a permit for each claimed row");
            by_advisor
                .entry(c.advisor_id.clone())
                .or_default()
                .push((c, permit));
        }
        for (_, lane) in by_advisor {
            let (me, lanes) = (self.clone(), lanes.clone());
            tokio::spawn(async move { me.lane(lane, lanes).await });
        }
    }

    /// Send one advisor's claimed notifications in order. Each answer goes to the recorder;
    /// once no send may start, the rest are handed back unsent.
    async fn lane(&self, rows: Vec<(Claimed, OwnedSemaphorePermit)>, lanes: Arc<Lanes>) {
        for (claimed, permit) in rows {
            let result = match lanes.stop_reason() {
                Some(why) => Err(why),
                None => Ok(self.send(&claimed, &lanes.cut_off).await),
            };
            if quota_reached(&result) {
                lanes.held.store(true, Ordering::SeqCst);
            }
            let answer = Answer {
                claimed,
                result,
                _permit: permit,
            };
            if lanes.answers.send(answer).await.is_err() {
                // Only when the recorder is gone for good; the sweep re-queues the rows.
                tracing::error!(
                    "the recorder is gone; answers are lost until the sweep re-queues them"
                );
                return;
            }
        }
    }

    async fn send(
        &self,
        c: &Claimed,
        cut_off: &CancellationToken,
    ) -> Result<SendReceipt, WechatError> {
        let msg = SubscribeMessage {
            touser: c.openid.clone(),
            template_id: c.template_id.clone(),
            page: c.page.clone(),
            data: c.data.clone(),
            miniprogram_state: Some(self.config.miniprogram_state.clone()),
            lang: Some(self.config.lang.clone()),
        };
        let span = tracing::info_span!("notification.send", notification_id = %c.id, action_id = %c.action_id, attempt = c.attempts + 1);
        ande_platform::telemetry::continue_trace(c.traceparent.as_deref(), &span);
        let sending = async {
            let started = std::time::Instant::now();
            let r = self.wechat.send_subscribe(&msg).await;
            let errcode = match &r {
                Ok(_) => 0,
                Err(WechatError::Api { errcode, .. }) => *errcode,
                Err(_) => -2,
            };
            ande_platform::metrics::wechat_call("subscribe_send", errcode, started.elapsed());
            if errcode == 0 && c.id != c.action_id {
                observe_end_to_end(c.action_id);
            }
            r
        };
        tokio::select! {
            r = tracing::Instrument::instrument(sending, span) => r,
            _ = cut_off.cancelled() => Err(WechatError::Transport(
                "cut off at the end of the shutdown grace; outcome unknown".into(),
            )),
        }
    }

    /// Record answers as they come, whatever has arrived in one transaction.
    async fn record_loop(
        self: Arc<Self>,
        rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Answer>>>,
        held: Arc<AtomicBool>,
    ) {
        let mut rx = rx.lock().await;
        while let Some(first) = rx.recv().await {
            if rx.is_empty() {
                // Sends finish in clusters: a moment's wait makes one transaction of many.
                tokio::time::sleep(RECORD_GATHER).await;
            }
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            self.record_with_retries(&batch).await;
            // Slots are free again and advisors no longer in flight: worth another claim.
            self.wake.notify_one();
            if batch.iter().any(|a| quota_reached(&a.result)) {
                held.store(false, Ordering::SeqCst); // the pause is in the database now
            }
        }
    }

    /// WeChat has answered: what it said must be recorded. Losing it would leave the rows in
    /// `sending` for the sweep to re-queue, sending accepted messages a second time; so a
    /// database hiccup here is retried for as long as the claims are not presumed abandoned.
    async fn record_with_retries(&self, batch: &[Answer]) {
        let started = Instant::now();
        let mut pause = RECORD_RETRY_FIRST;
        loop {
            match self.record(batch).await {
                Ok(()) => return,
                Err(e) if started.elapsed() + pause < self.config.stale_after / 2 => {
                    tracing::warn!(error = %e, answers = batch.len(), "cannot record WeChat's answers yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECORD_RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(error = %e, answers = batch.len(), "WeChat's answers could not be recorded; the sweep re-queues them");
                    return;
                }
            }
        }
    }

    /// Record a batch of answers in one transaction.
    async fn record(&self, batch: &[Answer]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = batch.iter().map(|a| a.claimed.id).collect();
        let current = store::lock_for_recording(&mut tx, &ids).await?;
        let mut sent = Vec::new();
        let mut unsent: BTreeMap<&str, Vec<&Claimed>> = BTreeMap::new();
        for a in batch {
            let c = &a.claimed;
            let Some(now) = current.get(&c.id) else {
                continue; // purged meanwhile: nothing left to record
            };
            match &a.result {
                Err(why) => unsent.entry(why).or_default().push(c),
                Ok(Ok(receipt)) if now.owned_by(c.attempts) => {
                    sent.push((c, receipt.msgid.as_str()));
                }
                Ok(result) if !now.owned_by(c.attempts) => {
                    self.record_late(&mut tx, c, result.clone(), now.state)
                        .await?;
                }
                Ok(result) => {
                    let e = result
                        .clone()
                        .expect_err("an ok owned answer is handled above");
                    self.record_failure(&mut tx, c, e, now).await?;
                }
            }
        }
        store::mark_sent(&mut tx, &sent).await?;
        for (why, rows) in unsent {
            store::hand_back(&mut tx, &rows, why).await?;
        }
        tx.commit().await?;
        tracing::debug!(answers = batch.len(), sent = sent.len(), "recorded");
        Ok(())
    }

    /// Record WeChat's refusal of (or failure on) an attempt that still owns its row.
    async fn record_failure(
        &self,
        tx: &mut sqlx::PgConnection,
        c: &Claimed,
        e: WechatError,
        now: &store::Current,
    ) -> Result<(), sqlx::Error> {
        // WeChat did not take this attempt: the credit it reserved goes back.
        // (Long-term subscriptions reserve nothing: `adjust` leaves them alone.)
        credits::adjust(tx, c.account(), 1).await?;
        let (code, text) = (e.errcode(), e.to_string());
        let failed = |state, event| Outcome::new(state, event).errcode(code).errmsg(&text);
        let retrying_since = now.retrying_since.unwrap_or_else(Utc::now);
        let budget = ChronoDuration::from_std(self.config.retry_for).unwrap_or(ChronoDuration::MAX);
        let outcome = if now.msgid.is_some() {
            // An earlier attempt, presumed abandoned, was delivered after all (its late answer
            // left the msgid): this one failing changes nothing for the advisor.
            failed(NotificationState::Sent, "sent").detail("delivered by an earlier attempt")
        } else if code == Some(ande_wechat::error::ERRCODE_NO_SUBSCRIPTION) {
            // Traffic, not an error: the user's credits ran out at WeChat before ours did.
            // Counted in `andectl status` (from the delivery log).
            tracing::debug!(notification = %c.id, "43101: no credit at WeChat; waiting");
            credits::no_credit_at_wechat(tx, c.account(), c.accepts_at_claim).await?;
            failed(NotificationState::WaitingCredit, "no_credit_at_wechat")
                .detail("credit count set to zero")
        } else if code == Some(ERRCODE_DAILY_QUOTA) {
            let until = next_quota_reset(Utc::now());
            store::pause_until(tx, Some(until), "45009 daily quota reached").await?;
            tracing::warn!(until = %until, "daily quota reached; sending paused");
            failed(NotificationState::Queued, "paused_daily_quota").next(until)
        } else if retryable(&e) && Utc::now() - retrying_since < budget {
            let delay = jittered(backoff(self.config.retry_backoff, c.attempts));
            let next = Utc::now() + ChronoDuration::from_std(delay).unwrap_or_default();
            tracing::info!(notification = %c.id, error = %text, "send failed; will retry");
            let mut retry = failed(NotificationState::Queued, "retry").next(next);
            retry.retrying = true;
            retry
        } else {
            tracing::warn!(notification = %c.id, error = %text, "send failed for good");
            failed(NotificationState::Failed, "failed")
        };
        outcome.record(tx, c).await
    }

    /// The answer to an attempt that was presumed abandoned (`stale_after`) and re-queued, which
    /// gave its credit back. Nothing here may overwrite what a later attempt recorded.
    async fn record_late(
        &self,
        tx: &mut sqlx::PgConnection,
        c: &Claimed,
        result: Result<ande_wechat::SendReceipt, WechatError>,
        state: NotificationState,
    ) -> Result<(), sqlx::Error> {
        const LATE: &str = "answer came after the attempt was presumed abandoned";
        match result {
            Ok(receipt) => {
                // WeChat spent a credit: take back the one given back at re-queueing.
                credits::adjust(tx, c.account(), -1).await?;
                let delivered = Outcome::new(NotificationState::Sent, "sent")
                    .msgid(&receipt.msgid)
                    .errcode(Some(0));
                use NotificationState::{Failed, Queued, WaitingCredit};
                if matches!(state, Queued | WaitingCredit | Failed) {
                    // Nobody is sending it now (not claimed again yet, or a later attempt was
                    // refused): it was delivered, so it is sent and nobody sends it again.
                    delivered.detail(LATE).record(tx, c).await?;
                } else {
                    // Remember the delivery: if the attempt now in flight fails, the
                    // notification was delivered all the same.
                    store::note_msgid(tx, c.id, &receipt.msgid).await?;
                    let mut late = delivered
                        .detail("WeChat accepted an attempt presumed abandoned; it was sent again");
                    late.event = "late_sent";
                    late.log(tx, c).await?;
                    tracing::warn!(msgid = %receipt.msgid, "an attempt presumed abandoned was delivered; the advisor got this notification twice");
                }
            }
            Err(e) => {
                let text = e.to_string();
                let late = Outcome::new(state, "late_failure")
                    .errcode(e.errcode())
                    .errmsg(&text)
                    .detail(LATE);
                late.log(tx, c).await?;
            }
        }
        Ok(())
    }

    async fn sweeper(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "sweep failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.sweep_now.notified() => {}
                _ = tokio::time::sleep(self.config.sweep_every) => {}
            }
        }
    }

    /// Release waiting notifications that have a credit now; recover abandoned sends.
    pub async fn sweep(&self) -> Result<(), sqlx::Error> {
        // Re-queueing and giving the credit back must be one transaction: a worker claiming the
        // re-queued row before the credit is back would park it for want of a credit, and a
        // crash in between would lose the credit.
        let mut tx = self.pool.begin().await?;
        store::requeue_stale(&mut tx, self.config.stale_after, self.config.max_attempts).await?;
        tx.commit().await?;
        let mut conn = self.pool.acquire().await?;
        let advisors = store::advisors_to_release(&mut conn).await?;
        drop(conn);
        for (advisor, template) in advisors {
            self.release(&advisor, &template).await?;
        }
        Ok(())
    }

    async fn release(&self, advisor_id: &str, template_id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // In the advisor's quiet hours, or with their hourly cap reached, what waits keeps
        // waiting: it goes, as one digest, when the window ends or the cap frees.
        if store::release_held(&mut tx, advisor_id, &self.policy())
            .await?
            .is_some()
        {
            return Ok(());
        }
        let waiting = store::take_waiting(&mut tx, advisor_id, template_id).await?;
        // Only anonymous notifications wait and their budget is spent: they keep waiting, for a
        // verified one to carry them in a digest or for the budget to free up.
        if waiting.iter().all(|w| w.anonymous)
            && store::anonymous_spent(&mut tx, advisor_id).await? >= self.config.anonymous_per_hour
        {
            return Ok(());
        }
        match waiting.as_slice() {
            [] => return Ok(()),
            [w] => requeue(&mut tx, w, advisor_id, "released_on_credit").await?,
            _ => {
                // Fewer credits than waiting notifications: the most valuable goes on its own,
                // the rest as one digest (which waits for the next credit if none is left).
                let credits = store::usable_credits(&mut tx, advisor_id, template_id).await?;
                let scarce = credits.is_some_and(|c| c < waiting.len() as i64);
                match scarce.then(|| self.most_valuable(&waiting)).flatten() {
                    Some(i) => {
                        let (first, rest) = (&waiting[i], without(&waiting, i));
                        requeue(&mut tx, first, advisor_id, "released_first_by_priority").await?;
                        if rest.len() > 1 {
                            self.digest(&mut tx, advisor_id, template_id, &rest).await?
                        }
                    }
                    None => {
                        self.digest(&mut tx, advisor_id, template_id, &waiting)
                            .await?
                    }
                }
            }
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The waiting notification to send on its own: the most valuable verified action
    /// (`NOTIFIER_PRIORITY`, the oldest among equals), if it is worth more than another waiting
    /// action. All actions of equal worth: none, they go together in the digest. (A digest
    /// already waiting is neither: it is folded with the rest.)
    fn most_valuable(&self, waiting: &[store::Waiting]) -> Option<usize> {
        let ranked: Vec<(usize, usize, bool)> = waiting
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match &w.summary.0 {
                Summary::Action(a) if w.kind == NotificationKind::Action => {
                    let rank = self
                        .config
                        .priority
                        .rank(a.action_type.as_str(), a.new_customer);
                    Some((i, rank, w.anonymous))
                }
                _ => None,
            })
            .collect();
        let lowest = ranked.iter().map(|r| r.1).min()?;
        let &(i, best, _) = ranked
            .iter()
            .filter(|r| !r.2) // anonymous ones wait for the digest (their budget)
            .max_by_key(|r| (r.1, std::cmp::Reverse(r.0)))?;
        (best > lowest).then_some(i)
    }

    /// Fold several waiting notifications into one digest. A waiting digest (one that found no
    /// credit at WeChat either) counts for the actions it stands for, and its members move to
    /// the new digest.
    async fn digest(
        &self,
        tx: &mut sqlx::PgConnection,
        advisor_id: &str,
        template_id: &str,
        waiting: &[store::Waiting],
    ) -> Result<(), sqlx::Error> {
        let n: usize = waiting.iter().map(|w| w.summary.actions()).sum();
        let digest_id = Uuid::now_v7();
        let latest = waiting.iter().rev().find_map(|w| match &w.summary.0 {
            Summary::Action(a) if w.kind == NotificationKind::Action => Some(a),
            _ => None,
        });
        let (phone, name) = latest.map_or(("", ""), |a| (a.phone.as_str(), a.name.as_str()));
        let (data, page) = content::for_digest(
            &self.config,
            n,
            &digest_id.to_string(),
            phone,
            name,
            Utc::now(),
        );
        let new = store::NewNotification {
            id: digest_id,
            action_id: digest_id,
            advisor_id,
            kind: NotificationKind::Digest,
            template_id,
            data,
            page,
            summary: Summary::Digest {
                count: u32::try_from(n).unwrap_or(u32::MAX),
            },
            anonymous: waiting.iter().all(|w| w.anonymous),
            state: NotificationState::Queued,
            // A digest stands for many actions: its send starts a trace of its own.
            traceparent: None,
        };
        let id = store::enqueue(tx, &new)
            .await?
            .expect("a fresh digest id never conflicts");
        let ids: Vec<Uuid> = waiting.iter().map(|w| w.id).collect();
        let moved = store::fold_into_digest(tx, &ids, id).await?;
        // The waiting notifications, and those earlier digests stood for, now belong here.
        let folded = waiting.iter().map(|w| (w.id, w.action_id)).chain(moved);
        let digest_ref = id.to_string();
        for (fid, action_id) in folded {
            LogEntry::about(fid, action_id, advisor_id, "folded_into_digest")
                .detail(&digest_ref)
                .write(tx)
                .await?;
        }
        let what = format!("{n} waiting actions");
        LogEntry {
            notification_id: Some(id),
            advisor_id,
            event: "digest_queued",
            detail: Some(&what),
            ..LogEntry::default()
        }
        .write(tx)
        .await
    }
}

/// A waiting notification queued again, in its place in line (before a digest made now).
async fn requeue(
    tx: &mut sqlx::PgConnection,
    w: &store::Waiting,
    advisor_id: &str,
    why: &str,
) -> Result<(), sqlx::Error> {
    store::requeue_waiting(tx, w.id).await?;
    LogEntry::about(w.id, w.action_id, advisor_id, why)
        .write(tx)
        .await
}

/// All but the `i`-th.
fn without(waiting: &[store::Waiting], i: usize) -> Vec<store::Waiting> {
    waiting
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, w)| w.clone())
        .collect()
}

/// What becomes of a notification after an attempt: its new state, and the delivery-log entry.
struct Outcome<'a> {
    state: NotificationState,
    event: &'a str,
    next: Option<DateTime<Utc>>,
    msgid: Option<&'a str>,
    errcode: Option<i64>,
    errmsg: Option<&'a str>,
    detail: Option<String>,
    /// A transient failure: the retry budget runs from the first one.
    retrying: bool,
}

impl<'a> Outcome<'a> {
    fn new(state: NotificationState, event: &'a str) -> Self {
        Self {
            state,
            event,
            next: None,
            msgid: None,
            errcode: None,
            errmsg: None,
            detail: None,
            retrying: false,
        }
    }
    fn msgid(mut self, m: &'a str) -> Self {
        self.msgid = Some(m);
        self
    }
    fn errcode(mut self, c: Option<i64>) -> Self {
        self.errcode = c;
        self
    }
    fn errmsg(mut self, m: &'a str) -> Self {
        self.errmsg = Some(m);
        self
    }
    fn detail(mut self, d: &str) -> Self {
        self.detail = Some(d.to_string());
        self
    }
    /// Retry (or resume) at `at`; the log says when.
    fn next(mut self, at: DateTime<Utc>) -> Self {
        self.next = Some(at);
        self.detail = Some(at.to_rfc3339());
        self
    }

    /// Set the notification's state and log the event.
    async fn record(&self, tx: &mut sqlx::PgConnection, c: &Claimed) -> Result<(), sqlx::Error> {
        // A sent notification carries no error, even when this attempt's answer was one.
        let (errcode, errmsg) = if self.state == NotificationState::Sent {
            (None, None)
        } else {
            (self.errcode, self.errmsg)
        };
        let change = store::StateChange {
            next_attempt_at: self.next,
            msgid: self.msgid,
            errcode,
            errmsg,
            retrying: self.retrying,
        };
        store::set_state(tx, c.id, self.state, change).await?;
        self.log(tx, c).await
    }

    /// Only log the event; the notification's state stays as it is.
    async fn log(&self, tx: &mut sqlx::PgConnection, c: &Claimed) -> Result<(), sqlx::Error> {
        LogEntry {
            errcode: self.errcode,
            errmsg: self.errmsg,
            msgid: self.msgid,
            detail: self.detail.as_deref(),
            ..LogEntry::about(c.id, c.action_id, &c.advisor_id, self.event)
        }
        .write(tx)
        .await
    }
}

/// Time from the action's acceptance to WeChat's: the gateway's action ids are UUIDv7, minted
/// when it accepts the action, so the id carries that moment. (A digest's id is its own: not
/// counted.)
fn observe_end_to_end(action_id: Uuid) {
    let Some((secs, nanos)) = action_id.get_timestamp().map(|t| t.to_unix()) else {
        return;
    };
    let accepted = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(accepted) {
        ande_platform::metrics::END_TO_END_SECONDS.observe(elapsed.as_secs_f64());
    }
}

fn retryable(e: &WechatError) -> bool {
    // A token error that survived the client's one refresh-and-retry is worth another go later.
    e.is_retryable() || e.is_token_error()
}

/// After the n-th attempt: `first`, then twice as long each time, capped at 5 minutes.
fn backoff(first: Duration, attempts: i32) -> Duration {
    first
        .saturating_mul(1u32 << (attempts.clamp(1, 16) - 1))
        .min(MAX_BACKOFF)
}

/// ±20 %, so that notifications that failed together (an outage) do not all retry together.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

fn quota_reached(result: &Result<Result<SendReceipt, WechatError>, &str>) -> bool {
    matches!(result, Ok(Err(e)) if e.errcode() == Some(ERRCODE_DAILY_QUOTA))
}

/// One permit per slot of `many`.
fn split(mut many: OwnedSemaphorePermit) -> Vec<OwnedSemaphorePermit> {
    let mut one_each = Vec::with_capacity(many.num_permits());
    while many.num_permits() > 1 {
        one_each.push(many.split(1).expect("more than one permit left"));
    }
    one_each.push(many);
    one_each
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// WeChat's daily quotas reset at midnight Beijing time (UTC+8, no daylight saving).
pub fn next_quota_reset(now: DateTime<Utc>) -> DateTime<Utc> {
    let beijing = FixedOffset::east_opt(8 * 3600).expect("valid offset");
    let local = now.with_timezone(&beijing).date_naive();
    let midnight = local
        .succ_opt()
        .unwrap_or(local)
        .and_hms_opt(0, 0, 0)
        .expect("valid time");
    beijing
        .from_local_datetime(&midnight)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resets_at_beijing_midnight() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 17, 30, 0).unwrap(); // 01:30 on the 26th in Beijing
        assert_eq!(
            next_quota_reset(now),
            Utc.with_ymd_and_hms(2026, 11, 26, 16, 0, 0).unwrap()
        );
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 15, 59, 0).unwrap(); // 23:59 on the 25th
        assert_eq!(
            next_quota_reset(now),
            Utc.with_ymd_and_hms(2026, 11, 25, 16, 0, 0).unwrap()
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = Duration::from_secs(2);
        assert_eq!(backoff(first, 1), Duration::from_secs(2));
        assert_eq!(backoff(first, 2), Duration::from_secs(4));
        assert!(backoff(first, 3) > backoff(first, 2));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_millis(50), 1),
            Duration::from_millis(50)
        );
    }
}
