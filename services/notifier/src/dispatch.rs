//! Sending: workers claim due notifications from the queue table and send them to WeChat.
//!
//! The queue is the `notifications` table, claimed with `FOR UPDATE SKIP LOCKED`, so any number
//! of workers in any number of processes send each notification once. A credit is reserved in
//! the same transaction as the claim and given back if WeChat does not accept the message.
//!
//! Failures:
//! - retryable (-1 busy, 45011 minute quota, HTTP 5xx, timeouts, transport errors): back to the
//!   queue with exponential backoff, up to `max_attempts`, then failed;
//! - 43101 (the user has no credit left at WeChat): our count is wrong, so it is set to zero and
//!   the notification waits for the next accept;
//! - 45009 (daily quota): sending pauses for everyone until midnight Asia/Shanghai (when the
//!   quota resets) or until an operator resumes; the backlog stays queued;
//! - anything else (40003, 40037, 47003, 41030, 48001, …): failed, with WeChat's errcode and errmsg.
//!
//! Where WeChat's outcome is unknown we choose to send again rather than lose the notification:
//! a timeout is retried, and a notification a crashed worker left in `sending` is re-queued after
//! `stale_after`. These are the only ways an advisor can receive a message twice; a missed
//! customer costs the company more than a duplicate message. Every such case is in the delivery log.
//!
//! Credits in those cases: the reservation is given back when the attempt ends without WeChat's
//! "ok" (timeout, crash) and taken again by the next attempt, so our count follows the attempts
//! whose "ok" we saw. If an unknown attempt did go through, WeChat spent one credit more than we
//! counted; the next send beyond WeChat's real count gets 43101, which sets our count to zero and
//! parks that notification until the next accept (self-correcting, never a lost notification).
//!
//! `stale_after` is kept at or above five WeChat timeouts (see `crate::run`), so a live worker's send is
//! never presumed abandoned while WeChat may still answer it. Should an answer still arrive after
//! the row was re-queued (a worker stalled on the database, or processes configured differently),
//! the attempt no longer owns the row ([`store::ownership`]): it records what WeChat said without
//! overwriting a later attempt, and an "ok" takes back the credit given back at re-queueing.
//!
//! The sweep also releases notifications waiting for credit once a credit exists: one waiting
//! notification is simply re-queued; several become one digest that says how many customer
//! actions wait. A digest that found no credit either (43101) waits like any notification and is
//! folded into the next digest with its count and its members. Parking is serialised per advisor
//! so that `max_waiting` holds with any number of workers.

use std::sync::Arc;
use std::time::Duration;

use ande_wechat::{SubscribeMessage, WechatClient, WechatError};
use chrono::{DateTime, Duration as ChronoDuration, FixedOffset, TimeZone, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::NotifierConfig;
use crate::content;
use crate::credits;
use crate::store::{self, Claim, Claimed, LogEntry, NotificationKind, NotificationState, Summary};

/// WeChat's "daily API quota reached": pause until it resets.
pub const ERRCODE_DAILY_QUOTA: i64 = 45009;

/// Retry delays never exceed this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Retrying to record WeChat's answer: the first pause, and the longest.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

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

impl Dispatcher {
    /// Run `config.workers` workers and the sweep until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = Vec::new();
        for _ in 0..self.config.workers {
            let (me, stop) = (self.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move { me.worker(stop).await }));
        }
        let (me, stop) = (self.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { me.sweeper(stop).await }));
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn worker(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "dispatch step failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_every) => {}
            }
        }
    }

    /// Claim and handle one notification. `Ok(true)` when there may be more work right away.
    pub async fn step(&self) -> Result<bool, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        match store::claim(&mut conn, self.config.max_waiting).await? {
            Claim::Nothing | Claim::Paused => Ok(false),
            Claim::Parked => Ok(true),
            Claim::Send(c) => {
                drop(conn);
                self.send(c).await?;
                Ok(true)
            }
        }
    }

    #[tracing::instrument(skip_all, fields(notification = %c.id, action_id = %c.action_id, advisor = %c.advisor_id, attempt = c.attempts))]
    async fn send(&self, c: Claimed) -> Result<(), sqlx::Error> {
        let msg = SubscribeMessage {
            touser: c.openid.clone(),
            template_id: c.template_id.clone(),
            page: c.page.clone(),
            data: c.data.clone(),
            miniprogram_state: Some(self.config.miniprogram_state.clone()),
            lang: Some(self.config.lang.clone()),
        };
        let result = self.wechat.send_subscribe(&msg).await;
        // WeChat has answered: what it said must be recorded. Losing it would leave the row in
        // `sending` for the sweep to re-queue, sending an accepted message a second time; so a
        // database hiccup here is retried for as long as the claim is not presumed abandoned.
        let started = std::time::Instant::now();
        let mut pause = RECORD_RETRY_FIRST;
        loop {
            match self.record(&c, result.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() + pause < self.config.stale_after / 2 => {
                    tracing::warn!(error = %e, "cannot record WeChat's answer yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECORD_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Record WeChat's answer to an attempt, in one transaction.
    async fn record(
        &self,
        c: &Claimed,
        result: Result<ande_wechat::SendReceipt, WechatError>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (owned, state) = store::ownership(&mut tx, c.id, c.attempts).await?;
        if !owned {
            self.record_late(&mut tx, c, result, state).await?;
            return tx.commit().await;
        }
        let e = match result {
            Ok(receipt) => {
                tracing::info!(msgid = %receipt.msgid, "sent");
                let sent = Outcome::new(NotificationState::Sent, "sent")
                    .msgid(&receipt.msgid)
                    .errcode(Some(0));
                sent.record(&mut tx, c).await?;
                return tx.commit().await;
            }
            Err(e) => e,
        };
        // WeChat did not take this attempt: the credit it reserved goes back.
        // (Long-term subscriptions reserve nothing: `adjust` leaves them alone.)
        credits::adjust(&mut tx, c.account(), 1).await?;
        let (code, text) = (e.errcode(), e.to_string());
        let failed = |state, event| Outcome::new(state, event).errcode(code).errmsg(&text);
        let outcome = if store::msgid(&mut tx, c.id).await?.is_some() {
            // An earlier attempt, presumed abandoned, was delivered after all (its late answer
            // left the msgid): this one failing changes nothing for the advisor.
            failed(NotificationState::Sent, "sent").detail("delivered by an earlier attempt")
        } else if code == Some(ande_wechat::error::ERRCODE_NO_SUBSCRIPTION) {
            credits::no_credit_at_wechat(&mut tx, c.account(), c.accepts_at_claim).await?;
            failed(NotificationState::WaitingCredit, "no_credit_at_wechat")
                .detail("credit count set to zero")
        } else if code == Some(ERRCODE_DAILY_QUOTA) {
            let until = next_quota_reset(Utc::now());
            store::pause_until(&mut tx, Some(until), "45009 daily quota reached").await?;
            tracing::warn!(until = %until, "daily quota reached; sending paused");
            failed(NotificationState::Queued, "paused_daily_quota").next(until)
        } else if retryable(&e) && c.attempts < self.config.max_attempts {
            let delay = backoff(self.config.retry_backoff, c.attempts);
            let next = Utc::now() + ChronoDuration::from_std(delay).unwrap_or_default();
            tracing::info!(error = %text, "send failed; will retry");
            failed(NotificationState::Queued, "retry").next(next)
        } else {
            tracing::warn!(error = %text, "send failed for good");
            failed(NotificationState::Failed, "failed")
        };
        outcome.record(&mut tx, c).await?;
        tx.commit().await
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
            [w] => {
                let now = Some(Utc::now());
                store::set_state(
                    &mut tx,
                    w.id,
                    NotificationState::Queued,
                    now,
                    None,
                    None,
                    None,
                )
                .await?;
                LogEntry::about(w.id, w.action_id, advisor_id, "released_on_credit")
                    .write(&mut tx)
                    .await?;
            }
            _ => {
                self.digest(&mut tx, advisor_id, template_id, &waiting)
                    .await?
            }
        }
        tx.commit().await?;
        self.wake.notify_waiters();
        Ok(())
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
            data: &data,
            page: &page,
            summary: Summary::Digest {
                count: u32::try_from(n).unwrap_or(u32::MAX),
            },
            anonymous: waiting.iter().all(|w| w.anonymous),
            state: NotificationState::Queued,
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

/// What becomes of a notification after an attempt: its new state, and the delivery-log entry.
struct Outcome<'a> {
    state: NotificationState,
    event: &'a str,
    next: Option<DateTime<Utc>>,
    msgid: Option<&'a str>,
    errcode: Option<i64>,
    errmsg: Option<&'a str>,
    detail: Option<String>,
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
        store::set_state(tx, c.id, self.state, self.next, self.msgid, errcode, errmsg).await?;
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
