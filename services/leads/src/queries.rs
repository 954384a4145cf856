//! Questions other services ask the leads service over NATS request/reply
//! (`<prefix>.rpc.leads.<method>`): an action's journey, a lead by id or phone, a page of leads.

use ande_platform::rpc::{self, ActionQuery, RpcError};
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::phone;
use crate::store;

pub const QUEUE_GROUP: &str = "leads";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadQuery {
    pub id: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub advisor_id: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: Option<i64>,
}

/// The action as stored and its lead outcome.
pub async fn journey(pool: &PgPool, q: ActionQuery) -> Result<serde_json::Value, RpcError> {
    let id = rpc::parse_id(&q.action_id)?;
    let mut conn = pool.acquire().await?;
    let Some(action) = store::action_detail(&mut conn, id).await? else {
        return Err(RpcError::not_found("action not recorded by leads (yet)"));
    };
    let outcome = store::load_outcome(&mut conn, id).await?;
    Ok(serde_json::json!({ "action": action, "outcome": outcome }))
}

pub async fn lead(pool: &PgPool, q: LeadQuery) -> Result<store::Lead, RpcError> {
    let mut conn = pool.acquire().await?;
    let found = match (q.id.as_deref(), q.phone.as_deref()) {
        (Some(id), _) => store::lead_by_id(&mut conn, rpc::parse_id(id)?).await,
        (None, Some(p)) => {
            let p =
                phone::mainland_mobile(Some(p)).map_err(|r| RpcError::bad_request(r.as_str()))?;
            store::lead_by_phone(&mut conn, &p).await
        }
        (None, None) => return Err(RpcError::bad_request("give id or phone")),
    };
    found?.ok_or_else(|| RpcError::not_found("no such lead"))
}

pub async fn list(pool: &PgPool, q: ListQuery) -> Result<Vec<store::Lead>, RpcError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let mut conn = pool.acquire().await?;
    store::list_leads(&mut conn, q.advisor_id.as_deref(), q.since, q.until, limit)
        .await
        .map_err(RpcError::from)
}

/// Serve all queries until shutdown.
pub async fn serve(
    client: async_nats::Client,
    subjects: ande_events::Subjects,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    rpc::Responder::new(client, subjects, QUEUE_GROUP, shutdown, pool)
        .method(
            "journey",
            |p: PgPool, q| async move { journey(&p, q).await },
        )
        .method("lead", |p: PgPool, q| async move { lead(&p, q).await })
        .method("list", |p: PgPool, q| async move { list(&p, q).await })
        .run()
        .await
}
