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
//! The sweep also releases notifications waiting for credit once a credit exists: one waiting
//! notification is simply re-queued; several become one digest that says how many wait.

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
use crate::store::{self, Claim, Claimed};

/// Idle workers look at the queue this often (other processes' work, due retries).
const POLL: Duration = Duration::from_millis(500);
/// How often to release waiting notifications and recover abandoned ones.
const SWEEP: Duration = Duration::from_secs(2);

pub struct Dispatcher {
    pub pool: PgPool,
    pub wechat: WechatClient,
    pub config: Arc<NotifierConfig>,
    /// Woken when new work is queued in this process, so a send starts at once.
    pub wake: Arc<Notify>,
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
                _ = tokio::time::sleep(POLL) => {}
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
        let mut tx = self.pool.begin().await?;
        let (aid, adv) = (Some(c.action_id), c.advisor_id.as_str());
        match result {
            Ok(receipt) => {
                store::set_state(&mut tx, c.id, "sent", None, Some(&receipt.msgid), None, None).await?;
                store::log(&mut tx, Some(c.id), aid, adv, "sent", Some(0), None, Some(&receipt.msgid), None).await?;
                tracing::info!(msgid = %receipt.msgid, "sent");
            }
            Err(e) => {
                let (code, text) = (e.errcode(), e.to_string());
                store::refund(&mut tx, &c).await?;
                if code == Some(ande_wechat::error::ERRCODE_NO_SUBSCRIPTION) {
                    store::zero_credits(&mut tx, &c.openid, &c.template_id).await?;
                    store::set_state(&mut tx, c.id, "waiting_credit", None, None, code, Some(&text)).await?;
                    store::log(&mut tx, Some(c.id), aid, adv, "no_credit_at_wechat", code, Some(&text), None, Some("credit count set to zero")).await?;
                } else if code == Some(45009) {
                    let until = next_quota_reset(Utc::now());
                    store::pause_until(&mut tx, Some(until), "45009 daily quota reached").await?;
                    store::set_state(&mut tx, c.id, "queued", Some(until), None, code, Some(&text)).await?;
                    store::log(&mut tx, Some(c.id), aid, adv, "paused_daily_quota", code, Some(&text), None, Some(&until.to_rfc3339())).await?;
                    tracing::warn!(until = %until, "daily quota reached; sending paused");
                } else if retryable(&e) && c.attempts < self.config.max_attempts {
                    let next = Utc::now() + ChronoDuration::from_std(backoff(c.attempts)).unwrap_or_default();
                    store::set_state(&mut tx, c.id, "queued", Some(next), None, code, Some(&text)).await?;
                    store::log(&mut tx, Some(c.id), aid, adv, "retry", code, Some(&text), None, Some(&next.to_rfc3339())).await?;
                    tracing::info!(error = %text, "send failed; will retry");
                } else {
                    store::set_state(&mut tx, c.id, "failed", None, None, code, Some(&text)).await?;
                    store::log(&mut tx, Some(c.id), aid, adv, "failed", code, Some(&text), None, None).await?;
                    tracing::warn!(error = %text, "send failed for good");
                }
            }
        }
        tx.commit().await
    }

    async fn sweeper(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "sweep failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(SWEEP) => {}
            }
        }
    }

    /// Release waiting notifications that have a credit now; recover abandoned sends.
    pub async fn sweep(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        store::requeue_stale(&mut conn, self.config.stale_after).await?;
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
        match waiting.len() {
            0 => return Ok(()),
            1 => {
                let (id, action_id, _) = &waiting[0];
                store::set_state(&mut tx, *id, "queued", Some(Utc::now()), None, None, None).await?;
                store::log(&mut tx, Some(*id), Some(*action_id), advisor_id, "released_on_credit", None, None, None, None).await?;
            }
            n => {
                let digest_id = Uuid::now_v7();
                let latest = &waiting[n - 1].2;
                let text = |k: &str| latest.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                let (data, page) = content::for_digest(&self.config, n, &digest_id.to_string(), &text("phone"), &text("name"), Utc::now());
                let new = store::NewNotification {
                    action_id: digest_id,
                    advisor_id,
                    kind: "digest",
                    template_id,
                    data: &data,
                    page: &page,
                    summary: serde_json::json!({ "count": n }),
                };
                let id = store::enqueue(&mut tx, &new).await?.expect("a fresh digest id never conflicts");
                let ids: Vec<Uuid> = waiting.iter().map(|w| w.0).collect();
                sqlx::query("UPDATE notifications SET state = 'digested', digest_id = $2, updated_at = now() WHERE id = ANY($1)")
                    .bind(&ids)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                for (wid, action_id, _) in &waiting {
                    store::log(&mut tx, Some(*wid), Some(*action_id), advisor_id, "folded_into_digest", None, None, None, Some(&id.to_string())).await?;
                }
                store::log(&mut tx, Some(id), None, advisor_id, "digest_queued", None, None, None, Some(&format!("{n} waiting actions"))).await?;
            }
        }
        tx.commit().await?;
        self.wake.notify_waiters();
        Ok(())
    }
}

fn retryable(e: &WechatError) -> bool {
    // A token error that survived the client's one refresh-and-retry is worth another go later.
    e.is_retryable() || e.is_token_error()
}

/// 2s, 4s, 8s … capped at 5 minutes.
fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(1, 8)).min(Duration::from_secs(300))
}

/// WeChat's daily quotas reset at midnight Beijing time (UTC+8, no daylight saving).
pub fn next_quota_reset(now: DateTime<Utc>) -> DateTime<Utc> {
    let beijing = FixedOffset::east_opt(8 * 3600).expect("valid offset");
    let local = now.with_timezone(&beijing).date_naive();
    let midnight = local.succ_opt().unwrap_or(local).and_hms_opt(0, 0, 0).expect("valid time");
    beijing.from_local_datetime(&midnight).single().map(|t| t.with_timezone(&Utc)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resets_at_beijing_midnight() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 17, 30, 0).unwrap(); // 01:30 on the 26th in Beijing
        assert_eq!(next_quota_reset(now), Utc.with_ymd_and_hms(2026, 11, 26, 16, 0, 0).unwrap());
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 15, 59, 0).unwrap(); // 23:59 on the 25th
        assert_eq!(next_quota_reset(now), Utc.with_ymd_and_hms(2026, 11, 25, 16, 0, 0).unwrap());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(40), Duration::from_secs(256));
    }
}
