//! `andectl leads`: the leads service's queries (`<prefix>.rpc.leads.*`) from the command line,
//! printed as JSON: a lead by id or phone, a page of leads, an action's journey.

use std::io::Write;
use std::time::Duration;

use ande_platform::bus::Bus;
use serde_json::{json, Value};

/// The leads service answers from its database; this is plenty.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

async fn ask(bus: &Bus, method: &str, query: Value) -> anyhow::Result<Value> {
    ande_platform::rpc::call(
        &bus.client,
        bus.subjects.rpc("leads", method),
        &query,
        QUERY_TIMEOUT,
    )
    .await
    .map_err(|e| anyhow::anyhow!("leads service: {e}"))
}

/// One lead, by its id or its phone number.
pub async fn show(
    bus: &Bus,
    id: Option<&str>,
    phone: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let lead = ask(bus, "lead", json!({ "id": id, "phone": phone })).await?;
    writeln!(out, "{}", serde_json::to_string_pretty(&lead)?)?;
    Ok(())
}

/// Newest first, one JSON line per lead.
pub async fn list(
    bus: &Bus,
    advisor: Option<&str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: i64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let page = ask(
        bus,
        "list",
        json!({ "advisorId": advisor, "since": since, "until": until, "limit": limit }),
    )
    .await?;
    for lead in page.as_array().into_iter().flatten() {
        writeln!(out, "{lead}")?;
    }
    Ok(())
}

/// The action as leads stored it, and its lead outcome.
pub async fn journey(bus: &Bus, action_id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let j = ask(bus, "journey", json!({ "actionId": action_id })).await?;
    writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?;
    Ok(())
}
