//! `andectl leads`: the leads service's queries (`<prefix>.rpc.leads.*`) from the command line,
//! printed as JSON: a lead by id or phone, a page of leads, an action's journey.

use std::io::Write;

use ande_contracts::leads::{ActionQuery, GetLead, Journey, LeadKey, ListLeads, ListQuery};
use ande_platform::bus::Bus;

use crate::conn::ask;

/// One lead, by its id or its phone number.
pub async fn show(
    bus: &Bus,
    id: Option<&str>,
    phone: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let key = match (id, phone) {
        (Some(id), _) => LeadKey::Id(parse_id(id)?),
        (None, Some(p)) => LeadKey::Phone(p.to_string()),
        (None, None) => anyhow::bail!("give a lead id or --phone"),
    };
    let lead = ask::<GetLead>(bus, &key).await?;
    writeln!(out, "{}", serde_json::to_string_pretty(&lead)?)?;
    Ok(())
}

/// Newest first, one JSON line per lead.
pub async fn list(
    bus: &Bus,
    advisor: Option<&str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: u32,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let q = ListQuery {
        advisor_id: advisor.map(String::from),
        since,
        until,
        limit: Some(limit),
    };
    for lead in ask::<ListLeads>(bus, &q).await? {
        writeln!(out, "{}", serde_json::to_string(&lead)?)?;
    }
    Ok(())
}

/// The action as leads stored it, and its lead outcome.
pub async fn journey(bus: &Bus, action_id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let q = ActionQuery {
        action_id: parse_id(action_id)?,
    };
    let j = ask::<Journey>(bus, &q).await?;
    writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?;
    Ok(())
}

fn parse_id(s: &str) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(s.trim()).map_err(|_| anyhow::anyhow!("{s:?} is not a valid id"))
}
