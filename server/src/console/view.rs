//! What the console's JSON calls answer: the cluster's wire types reduced to what the page
//! shows, amounts both exact (integers) and as people read them (`$49.04`).

use serde::Serialize;
use serde_json::Value;
use tollgate_client::{scope_to_string, v1};

use crate::cli::render::{amount_text, describe_event, dimension_name, limit_kind};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Whoami {
    /// Authentication is on (a key is needed).
    pub auth: bool,
    pub admin: bool,
    /// The tenant of a tenant key.
    pub tenant: Option<String>,
}

/// One node as it reports itself; `error` when it did not answer.
#[derive(Debug, Default, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Entries behind the highest commit index any node reports.
    pub lag: u64,
    pub quorum: bool,
    pub reservations_in_flight: u64,
    pub chain_head_seq: u64,
    pub error: Option<String>,
}

impl NodeView {
    pub fn of(member: &v1::Member, status: Result<v1::StatusResponse, String>) -> Self {
        let base = Self {
            id: member.node_id,
            addr: member.addr.clone(),
            voter: member.voter,
            ..Self::default()
        };
        match status {
            Ok(s) => Self {
                role: s.role,
                term: s.term,
                leader_id: s.leader_id,
                commit_index: s.commit_index,
                applied_index: s.applied_index,
                last_log_index: s.last_log_index,
                quorum: s.quorum,
                reservations_in_flight: s.reservations_in_flight,
                chain_head_seq: s.chain_head_seq,
                ..base
            },
            Err(error) => Self {
                role: "unreachable".into(),
                error: Some(error),
                ..base
            },
        }
    }
}

/// Sets each node's lag behind the highest commit index among them.
pub fn set_lag(nodes: &mut [NodeView]) {
    let commit_max = nodes.iter().map(|n| n.commit_index).max().unwrap_or(0);
    for node in nodes.iter_mut().filter(|n| n.error.is_none()) {
        node.lag = commit_max.saturating_sub(node.applied_index);
    }
}

/// One limit's spend: `used + held` of `amount` is what the bar shows.
#[derive(Debug, Serialize)]
pub struct LimitBar {
    pub id: String,
    pub scope: String,
    pub agent: Option<String>,
    pub dimension: String,
    pub kind: String,
    pub amount: Option<u64>,
    pub used: u64,
    pub held: u64,
    pub remaining: i64,
    pub amount_text: Option<String>,
    pub used_text: String,
    pub held_text: String,
    pub remaining_text: String,
}

impl LimitBar {
    pub fn of(row: &v1::LimitUsage) -> Self {
        let limit = row.limit.clone().unwrap_or_default();
        let (kind, amount) = limit_kind(&limit);
        let dimension = limit.dimension;
        Self {
            scope: scope_to_string(limit.scope.as_ref()),
            agent: Some(row.agent.clone()).filter(|agent| !agent.is_empty()),
            dimension: dimension_name(dimension),
            kind,
            amount,
            used: row.used,
            held: row.held,
            remaining: row.remaining,
            amount_text: amount.map(|a| amount_text(dimension, a)),
            used_text: amount_text(dimension, row.used),
            held_text: amount_text(dimension, row.held),
            remaining_text: crate::cli::render::signed_amount_text(dimension, row.remaining),
            id: limit.id,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReservationView {
    pub id: u64,
    pub agent: String,
    pub tool: String,
    pub tokens: u64,
    pub cost_text: String,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
}

impl ReservationView {
    pub fn of(r: &v1::Reservation) -> Self {
        let estimate = r.estimate.unwrap_or_default();
        Self {
            id: r.reservation_id,
            agent: r.agent.clone(),
            tool: r.tool.clone(),
            tokens: estimate.tokens,
            cost_text: crate::cli::render::amount_text(
                i32::from(v1::Dimension::Cost),
                estimate.cost_micros,
            ),
            granted_at_ms: r.granted_at_ms,
            expires_at_ms: r.expires_at_ms,
        }
    }
}

/// One agent's own view: its limits, and whether it may reserve at all.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub agent: String,
    pub frozen: bool,
    pub tripped: Option<String>,
    pub limits: Vec<LimitBar>,
}

impl AgentView {
    pub fn of(agent: &str, usage: &v1::UsageResponse) -> Self {
        Self {
            agent: agent.to_owned(),
            frozen: usage.agent_frozen,
            tripped: usage
                .agent_tripped
                .as_ref()
                .map(crate::cli::render::describe_trip),
            limits: usage.usage.iter().map(LimitBar::of).collect(),
        }
    }
}

/// A part of a page that may fail on its own (a worker key may not read the audit trail).
#[derive(Debug, Serialize)]
pub struct Part<T> {
    pub data: Option<T>,
    pub error: Option<String>,
}

impl<T> From<Result<T, tollgate_client::Error>> for Part<T> {
    fn from(result: Result<T, tollgate_client::Error>) -> Self {
        match result {
            Ok(data) => Self {
                data: Some(data),
                error: None,
            },
            Err(error) => Self {
                data: None,
                error: Some(error.to_string()),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TenantView {
    pub tenant: String,
    pub limits: Vec<LimitBar>,
    pub reservations: Part<Vec<ReservationView>>,
    pub agent: Option<Part<AgentView>>,
}

#[derive(Debug, Serialize)]
pub struct AuditView {
    pub seq: u64,
    pub at_ms: u64,
    pub tenant: String,
    pub agent: String,
    pub tool: String,
    /// The event's variant, lower case (`grant`, `deny`, `commit`, `trip`, `freeze`...),
    /// for the page's filter.
    pub kind: String,
    /// The event in one short line.
    pub event: String,
    pub tokens: u64,
    pub cost_text: String,
}

impl AuditView {
    pub fn of(record: &v1::AuditRecord) -> Self {
        let amounts = record.amounts.unwrap_or_default();
        Self {
            seq: record.seq,
            at_ms: record.at_ms,
            tenant: record.tenant.clone(),
            agent: record.agent.clone(),
            tool: record.tool.clone(),
            kind: event_kind(&record.event_json),
            event: short_event(&record.event_json),
            tokens: amounts.tokens,
            cost_text: amount_text(i32::from(v1::Dimension::Cost), amounts.cost_micros),
        }
    }
}

/// An audit event in one short line, without the fields that say nothing (false, null,
/// empty): `{"commit":{"late":false,"overrun":true}}` → `commit(overrun=true)`.
pub fn short_event(event_json: &str) -> String {
    match serde_json::from_str::<Value>(event_json) {
        Ok(value) => describe_event(&prune(value).to_string()),
        Err(_) => describe_event(event_json),
    }
}

fn prune(value: Value) -> Value {
    let Value::Object(map) = value else {
        return value;
    };
    let says_nothing = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    let kept: serde_json::Map<String, Value> = map
        .into_iter()
        .map(|(key, field)| (key, prune(field)))
        .filter(|(_, field)| !says_nothing(field))
        .collect();
    // A variant left with no fields is its name alone.
    match kept.iter().next() {
        Some((variant, Value::Object(fields))) if kept.len() == 1 && fields.is_empty() => {
            Value::String(variant.clone())
        }
        _ => Value::Object(kept),
    }
}

/// The variant of an audit event (`"grant"`, `{"deny": ...}`), lower case.
pub fn event_kind(event_json: &str) -> String {
    let kind = match serde_json::from_str::<Value>(event_json) {
        Ok(Value::String(variant)) => variant,
        Ok(Value::Object(map)) => map.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    kind.to_ascii_lowercase()
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    /// The newest records read, oldest first.
    pub records: Vec<AuditView>,
    /// Where the next poll resumes (`after_seq`).
    pub next_after_seq: Option<u64>,
    /// False when more records wait than one call reads: poll again at once.
    pub caught_up: bool,
}
