//! Questions other services ask the leads service over NATS request/reply
//! (`<prefix>.rpc.leads.<method>`, contracts in `ande_contracts::leads`): an action's journey, a
//! lead by id or phone, a page of leads, and the staff console's questions ([`console`]).

use ande_contracts::leads::{
    ActionQuery, ActionStats, GetLead, Journey, Lead, LeadJourney, LeadKey, LeadTimeline,
    ListLeads, ListQuery, SearchLeads,
};
use ande_platform::rpc::{self, Failure, RpcError};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::console;
use crate::phone;
use crate::store;

/// Leads per page when the caller does not say, and at most.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// The action as stored and its lead outcome.
pub async fn journey(pool: &PgPool, q: ActionQuery) -> Result<LeadJourney, Failure> {
    let mut conn = pool.acquire().await?;
    let Some(action) = store::action_detail(&mut conn, q.action_id).await? else {
        return Err(RpcError::not_found("action not recorded by leads (yet)").into());
    };
    let outcome = store::load_outcome(&mut conn, q.action_id).await?;
    Ok(LeadJourney { action, outcome })
}

pub async fn lead(pool: &PgPool, key: LeadKey) -> Result<Lead, Failure> {
    lead_in(&mut *pool.acquire().await?, key).await
}

/// A lead by id or phone on `conn` (inside a caller's transaction, say).
pub async fn lead_in(conn: &mut sqlx::PgConnection, key: LeadKey) -> Result<Lead, Failure> {
    let found = match key {
        LeadKey::Id(id) => store::lead_by_id(conn, id).await?,
        LeadKey::Phone(p) => {
            let p = phone::mainland_mobile(Some(&p))
                .map_err(|r| RpcError::invalid_field("phone", r.as_str()))?;
            store::lead_by_phone(conn, &p).await?
        }
    };
    found.ok_or_else(|| RpcError::not_found("no such lead").into())
}

pub async fn list(pool: &PgPool, q: ListQuery) -> Result<Vec<Lead>, Failure> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let mut conn = pool.acquire().await?;
    let page = store::list_leads(
        &mut conn,
        q.advisor_id.as_deref(),
        q.since,
        q.until,
        i64::from(limit),
    )
    .await?;
    Ok(page)
}

/// Serve all queries until shutdown.
pub async fn serve(
    client: async_nats::Client,
    subjects: ande_events::Subjects,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    rpc::Responder::new(client, subjects, shutdown, pool)
        .method::<Journey, _, _>(|p, q| async move { journey(&p, q).await })
        .method::<GetLead, _, _>(|p, k| async move { lead(&p, k).await })
        .method::<ListLeads, _, _>(|p, q| async move { list(&p, q).await })
        .method::<SearchLeads, _, _>(|p, q| async move { console::search(&p, q).await })
        .method::<LeadTimeline, _, _>(|p, k| async move { console::timeline(&p, k).await })
        .method::<ActionStats, _, _>(|p, q| async move { console::stats(&p, q).await })
        .run()
        .await
}
