//! How the wire types look to a person (aligned tables, short descriptions) and to a script
//! (`serde_json` values; the proto types do not derive `Serialize`). Pure: builds strings
//! and values, prints nothing.

use serde_json::{json, Value};
use tollgate_client::{scope_to_string, v1, Applied, Dimension};

use super::money::{decimal_micros, decimal_micros_signed, format_micros, format_micros_signed};
use super::parse::{format_duration_ms, format_time_ms};

/// Spaces between table columns.
const TABLE_COLUMN_GAP: u16 = 2;
/// Hex digits of a hash shown in tables; `--json` shows all of them.
pub const HASH_HEX_SHORT: usize = 12;

/// Rows under a header, printed by `comfy-table` with each column as wide as its widest
/// cell, without borders or colour, so the output reads the same in a terminal, a pipe and
/// a test.
#[derive(Debug)]
pub struct Table {
    table: comfy_table::Table,
    columns: usize,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        let mut table = comfy_table::Table::new();
        table
            .load_style(comfy_table::presets::NOTHING)
            .set_header(headers.to_vec());
        for column in table.column_iter_mut() {
            column.set_padding((0, TABLE_COLUMN_GAP));
        }
        Table {
            table,
            columns: headers.len(),
        }
    }

    /// Adds a row; it must have one cell per header.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.columns, "one cell per column");
        self.table
            .add_row(cells.iter().map(|cell| printable(cell)).collect::<Vec<_>>());
    }

    /// The header and the rows, left-aligned, one line each, no trailing spaces.
    pub fn render(&self) -> String {
        let mut text = self.table.trim_fmt();
        text.push('\n');
        text
    }
}

/// A cell that cannot break the table: control characters (newlines, escapes from a
/// hostile name) become `?`.
fn printable(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `key  value` lines with the values aligned, for one object (a policy, a summary).
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(key, _)| key.chars().count())
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|(key, value)| format!("{key:width$}  {}\n", printable(value)))
        .collect()
}

/// `-` for an absent value, so no cell is empty.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `seq:first-12-hex-digits`, or `0:-` before the first record.
pub fn chain_head_short(seq: u64, hash: &[u8]) -> String {
    let hex = hex::encode(hash);
    let short = hex.get(..HASH_HEX_SHORT).unwrap_or(&hex);
    if short.is_empty() {
        format!("{seq}:-")
    } else {
        format!("{seq}:{short}")
    }
}

pub fn dimension_name(wire: i32) -> String {
    Dimension::from(wire).to_string()
}

pub fn window_name(wire: i32) -> String {
    match v1::Window::try_from(wire) {
        Ok(v1::Window::Lifetime) => "lifetime".into(),
        Ok(v1::Window::Hour) => "hour".into(),
        Ok(v1::Window::Day) => "day".into(),
        Ok(v1::Window::Week) => "week".into(),
        Ok(v1::Window::Month) => "month".into(),
        Ok(v1::Window::Unspecified) | Err(_) => format!("window #{wire}"),
    }
}

pub fn expiry_name(wire: i32) -> String {
    match v1::ExpiryPolicy::try_from(wire) {
        Ok(v1::ExpiryPolicy::Charge | v1::ExpiryPolicy::Unspecified) => "charge".into(),
        Ok(v1::ExpiryPolicy::Release) => "release".into(),
        Err(_) => format!("expiry #{wire}"),
    }
}

/// A limit's kind in a few words (`budget/day`, `rate/1m burst 10`, `concurrency`) and
/// its amount (the budget, the rate per period, the most in flight).
pub fn limit_kind(limit: &v1::Limit) -> (String, Option<u64>) {
    use v1::limit::Kind;
    match &limit.kind {
        Some(Kind::Budget(budget)) => (
            format!("budget/{}", window_name(budget.window)),
            Some(budget.amount),
        ),
        Some(Kind::Rate(rate)) => (
            format!(
                "rate/{} burst {}",
                format_duration_ms(rate.period_ms),
                amount_text(limit.dimension, rate.burst)
            ),
            Some(rate.amount),
        ),
        Some(Kind::Concurrency(concurrency)) => ("concurrency".into(), Some(concurrency.max)),
        Some(Kind::Duration(duration)) => (
            format!("duration {}", format_duration_ms(duration.ms)),
            None,
        ),
        None => ("unknown kind".into(), None),
    }
}

fn is_cost(dimension: i32) -> bool {
    dimension == i32::from(v1::Dimension::Cost)
}

/// An amount of `dimension` for people: money for cost (`$49.04`), else the count.
pub fn amount_text(dimension: i32, amount: u64) -> String {
    if is_cost(dimension) {
        format_micros(amount)
    } else {
        amount.to_string()
    }
}

/// A signed amount of `dimension` (what remains after an overrun is negative).
pub fn signed_amount_text(dimension: i32, amount: i64) -> String {
    if is_cost(dimension) {
        format_micros_signed(amount)
    } else {
        amount.to_string()
    }
}

/// Adds `{key}_usd` beside each `key` of `object` that holds micro-units, when the
/// dimension is cost: scripts keep exact integers, people get a decimal string.
fn add_usd(object: &mut Value, dimension: i32, keys: &[&str]) {
    let Some(object) = object.as_object_mut().filter(|_| is_cost(dimension)) else {
        return;
    };
    for key in keys {
        let decimal = match object.get(*key) {
            Some(Value::Number(n)) if n.is_u64() => n.as_u64().map(decimal_micros),
            Some(Value::Number(n)) => n.as_i64().map(decimal_micros_signed),
            _ => None,
        };
        if let Some(decimal) = decimal {
            object.insert(format!("{key}_usd"), Value::String(decimal));
        }
    }
}

pub fn limits_table(limits: &[v1::Limit]) -> Table {
    let mut table = Table::new(&["ID", "SCOPE", "DIMENSION", "KIND", "AMOUNT", "THRESHOLDS"]);
    for limit in limits {
        let (kind, amount) = limit_kind(limit);
        table.row(vec![
            limit.id.clone(),
            scope_to_string(limit.scope.as_ref()),
            dimension_name(limit.dimension),
            kind,
            or_dash(amount.map(|amount| amount_text(limit.dimension, amount))),
            thresholds_text(limit),
        ]);
    }
    table
}

/// A budget's soft thresholds as `50,80,95 %`, `off`, or a dash for other kinds.
fn thresholds_text(limit: &v1::Limit) -> String {
    if !matches!(limit.kind, Some(v1::limit::Kind::Budget(_))) {
        return "-".into();
    }
    let percents = thresholds_of(limit);
    if percents.is_empty() {
        return "off".into();
    }
    let list: Vec<String> = percents.iter().map(u32::to_string).collect();
    format!("{} %", list.join(","))
}

/// The limit's thresholds; absent on the wire means the defaults.
fn thresholds_of(limit: &v1::Limit) -> Vec<u32> {
    match &limit.thresholds {
        Some(t) => t.percent.clone(),
        None => tollgate_ledger::THRESHOLDS_DEFAULT_PERCENT
            .iter()
            .map(|&p| u32::from(p))
            .collect(),
    }
}

pub fn limit_json(limit: &v1::Limit) -> Value {
    use v1::limit::Kind;
    let mut value = json!({
        "id": limit.id,
        "scope": scope_to_string(limit.scope.as_ref()),
        "dimension": dimension_name(limit.dimension),
    });
    let kind = match &limit.kind {
        Some(Kind::Budget(budget)) => json!({
            "kind": "budget", "window": window_name(budget.window), "amount": budget.amount,
        }),
        Some(Kind::Rate(rate)) => json!({
            "kind": "rate", "amount": rate.amount, "period_ms": rate.period_ms,
            "burst": rate.burst,
        }),
        Some(Kind::Concurrency(concurrency)) => {
            json!({ "kind": "concurrency", "max": concurrency.max })
        }
        Some(Kind::Duration(duration)) => json!({ "kind": "duration", "ms": duration.ms }),
        None => json!({ "kind": Value::Null }),
    };
    if let (Some(object), Value::Object(kind)) = (value.as_object_mut(), kind) {
        object.extend(kind);
        if matches!(limit.kind, Some(Kind::Budget(_))) {
            object.insert("thresholds".into(), json!(thresholds_of(limit)));
        }
    }
    add_usd(&mut value, limit.dimension, &["amount", "burst"]);
    value
}

/// A policy as `key  value` lines: what trips an agent and for how long.
pub fn policy_fields(policy: &v1::TenantPolicy) -> Vec<(&'static str, String)> {
    let repetition = if policy.repeat_max == 0 {
        "off".to_owned()
    } else {
        format!(
            "trip after {} identical fingerprints within {}",
            policy.repeat_max,
            format_duration_ms(policy.repeat_window_ms)
        )
    };
    let velocity = if policy.velocity_factor == 0 {
        "off".to_owned()
    } else {
        format!(
            "trip at {}x the recent rate of {} within {} (not below {})",
            policy.velocity_factor,
            dimension_name(policy.velocity_dimension),
            format_duration_ms(policy.velocity_window_ms),
            amount_text(policy.velocity_dimension, policy.velocity_floor)
        )
    };
    let shape_velocity = if policy.velocity_factor == 0 || policy.shape_floor == 0 {
        "off".to_owned()
    } else {
        format!(
            "trip at {}x the recent calls of one argument shape within {} (not below {} calls)",
            policy.velocity_factor,
            format_duration_ms(policy.velocity_window_ms),
            policy.shape_floor
        )
    };
    let cooldown = if policy.trip_cooldown_ms == 0 {
        "none: a trip lasts until reset-trip".to_owned()
    } else {
        format_duration_ms(policy.trip_cooldown_ms)
    };
    let quotas = policy.quotas.as_ref().map_or_else(
        || "the defaults".to_owned(),
        |q| {
            format!(
                "{} agents, {} tools, {} limits, {} keys, {} reservations in flight, \
                 {} remembered answers, {} queued proposals, {} sessions",
                q.agents,
                q.tools,
                q.limits,
                q.keys,
                q.reservations_in_flight,
                q.answers,
                q.proposals_queued,
                q.sessions
            )
        },
    );
    vec![
        ("expiry", expiry_name(policy.expiry)),
        ("repetition", repetition),
        ("velocity", velocity),
        ("shape velocity", shape_velocity),
        ("trip cool-down", cooldown),
        ("leases", leases_text(policy.leases).to_owned()),
        ("quotas", quotas),
    ]
}

fn leases_text(leases: bool) -> &'static str {
    match leases {
        true => "on: clients may decide calls locally inside budget leases",
        false => "off: every call goes to the cluster",
    }
}

pub fn policy_json(policy: &v1::TenantPolicy) -> Value {
    let mut value = json!({
        "expiry": expiry_name(policy.expiry),
        "repeat_max": policy.repeat_max,
        "repeat_window_ms": policy.repeat_window_ms,
        "velocity_factor": policy.velocity_factor,
        "velocity_window_ms": policy.velocity_window_ms,
        "velocity_dimension": dimension_name(policy.velocity_dimension),
        "velocity_floor": policy.velocity_floor,
        "shape_floor": policy.shape_floor,
        "trip_cooldown_ms": policy.trip_cooldown_ms,
        "leases": policy.leases,
        "quotas": policy.quotas.as_ref().map(|q| json!({
            "agents": q.agents,
            "tools": q.tools,
            "limits": q.limits,
            "keys": q.keys,
            "reservations_in_flight": q.reservations_in_flight,
            "answers": q.answers,
            "proposals_queued": q.proposals_queued,
            "sessions": q.sessions,
        })),
    });
    add_usd(&mut value, policy.velocity_dimension, &["velocity_floor"]);
    value
}

pub fn applied_json(applied: Applied) -> Value {
    json!({ "log_index": applied.log_index, "term": applied.term, "at_ms": applied.at_ms })
}

/// Why an agent is tripped, e.g. `repetition: fingerprint "ab12" seen 20 times`, and until
/// when.
pub fn describe_trip(tripped: &v1::Tripped) -> String {
    use v1::trip_cause::Cause;
    let cause = match tripped.cause.as_ref().and_then(|c| c.cause.as_ref()) {
        Some(Cause::Repetition(r)) => format!(
            "repetition: fingerprint {:?} seen {} times",
            r.fingerprint, r.count
        ),
        Some(Cause::Velocity(v)) => format!(
            "velocity: spent {} against a recent baseline of {}",
            v.spent, v.baseline
        ),
        Some(Cause::ShapeVelocity(s)) => format!(
            "shape velocity: argument shape {:?} called {} times against a recent baseline of {}",
            s.shape, s.calls, s.baseline
        ),
        None => "unknown cause".into(),
    };
    match tripped.until_ms {
        Some(until_ms) => format!("{cause}; until {}", format_time_ms(until_ms)),
        None => format!("{cause}; until an operator runs reset-trip"),
    }
}

pub fn tripped_json(tripped: &v1::Tripped) -> Value {
    use v1::trip_cause::Cause;
    let cause = match tripped.cause.as_ref().and_then(|c| c.cause.as_ref()) {
        Some(Cause::Repetition(r)) => {
            json!({ "repetition": { "fingerprint": r.fingerprint, "count": r.count } })
        }
        Some(Cause::Velocity(v)) => {
            json!({ "velocity": { "spent": v.spent, "baseline": v.baseline } })
        }
        Some(Cause::ShapeVelocity(s)) => json!({
            "shape_velocity": { "shape": s.shape, "calls": s.calls, "baseline": s.baseline }
        }),
        None => Value::Null,
    };
    json!({ "cause": cause, "until_ms": tripped.until_ms })
}

pub fn usage_table(usage: &[v1::LimitUsage]) -> Table {
    let mut table = Table::new(&[
        "LIMIT",
        "SCOPE",
        "DIMENSION",
        "KIND",
        "AMOUNT",
        "USED",
        "HELD",
        "REMAINING",
        "ALERTED",
        "WINDOW-START",
    ]);
    for row in usage {
        let limit = row.limit.clone().unwrap_or_default();
        let (kind, amount) = limit_kind(&limit);
        table.row(vec![
            limit.id.clone(),
            scope_to_string(limit.scope.as_ref()),
            dimension_name(limit.dimension),
            kind,
            or_dash(amount.map(|amount| amount_text(limit.dimension, amount))),
            amount_text(limit.dimension, row.used),
            amount_text(limit.dimension, row.held),
            signed_amount_text(limit.dimension, row.remaining),
            or_dash((row.alerted_percent > 0).then(|| format!("{}%", row.alerted_percent))),
            or_dash(row.window_start_ms.map(format_time_ms)),
        ]);
    }
    table
}

pub fn usage_json(row: &v1::LimitUsage) -> Value {
    let mut value = json!({
        "limit": row.limit.as_ref().map(limit_json),
        "agent": Some(&row.agent).filter(|agent| !agent.is_empty()),
        "used": row.used,
        "held": row.held,
        "remaining": row.remaining,
        "alerted_percent": row.alerted_percent,
        "window_start_ms": row.window_start_ms,
    });
    let dimension = row.limit.as_ref().map_or(0, |limit| limit.dimension);
    add_usd(&mut value, dimension, &["used", "held", "remaining"]);
    value
}

pub fn reservations_table(reservations: &[v1::Reservation]) -> Table {
    let mut table = Table::new(&[
        "ID", "AGENT", "TOOL", "TOKENS", "COST", "CALLS", "GRANTED", "EXPIRES",
    ]);
    for r in reservations {
        let estimate = r.estimate.unwrap_or_default();
        table.row(vec![
            r.reservation_id.to_string(),
            r.agent.clone(),
            r.tool.clone(),
            estimate.tokens.to_string(),
            format_micros(estimate.cost_micros),
            estimate.calls.unwrap_or_default().to_string(),
            format_time_ms(r.granted_at_ms),
            format_time_ms(r.expires_at_ms),
        ]);
    }
    table
}

pub fn reservation_json(r: &v1::Reservation) -> Value {
    json!({
        "reservation_id": r.reservation_id,
        "tenant": r.tenant,
        "agent": r.agent,
        "tool": r.tool,
        "estimate": amounts_json(r.estimate.as_ref()),
        "granted_at_ms": r.granted_at_ms,
        "expires_at_ms": r.expires_at_ms,
    })
}

pub fn amounts_json(amounts: Option<&v1::Amounts>) -> Value {
    let a = amounts.copied().unwrap_or_default();
    json!({
        "tokens": a.tokens,
        "cost_micros": a.cost_micros,
        "cost_usd": decimal_micros(a.cost_micros),
        "calls": a.calls.unwrap_or_default(),
    })
}

pub fn members_table(members: &[v1::Member]) -> Table {
    let mut table = Table::new(&["NODE", "ADDR", "PEER-ADDR", "ROLE"]);
    for member in members {
        let role = if member.voter { "voter" } else { "learner" };
        table.row(vec![
            member.node_id.to_string(),
            member.addr.clone(),
            member.peer_addr.clone(),
            role.to_owned(),
        ]);
    }
    table
}

pub fn member_json(member: &v1::Member) -> Value {
    json!({
        "node_id": member.node_id,
        "addr": member.addr,
        "peer_addr": member.peer_addr,
        "voter": member.voter,
    })
}

pub fn status_json(asked_addr: &str, status: &v1::StatusResponse) -> Value {
    json!({
        "addr": asked_addr,
        "reachable": true,
        "node_id": status.node_id,
        "advertised_addr": status.addr,
        "role": status.role,
        "term": status.term,
        "leader_id": status.leader_id,
        "leader_addr": Some(&status.leader_addr).filter(|addr| !addr.is_empty()),
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_log_index": status.last_log_index,
        "snapshot_index": status.snapshot_index,
        "chain_head_seq": status.chain_head_seq,
        "chain_head_hash": hex::encode(&status.chain_head_hash),
        "reservations_in_flight": status.reservations_in_flight,
        "members": status.members.iter().map(member_json).collect::<Vec<_>>(),
        "trail": {
            "first_seq": status.trail_first_seq,
            "last_seq": status.trail_last_seq,
            "anchor": hex::encode(&status.trail_anchor),
            "missing": status.trail_missing.iter().map(|r| json!([r.from, r.to])).collect::<Vec<_>>(),
            "bytes": status.trail_bytes,
            "retention_ms": status.audit_retention_ms,
            "retention_configured_ms": status.audit_retention_configured_ms,
        },
        "answers": {
            "horizon_ms": status.answer_horizon_ms,
            "horizon_configured_ms": status.answer_horizon_configured_ms,
            "bytes": status.answers_bytes,
            "copying": status.answers_copying,
        },
    })
}

/// A node's trail on disk in one line: its records, the anchor the oldest links to, what it
/// is missing, its size, and the retention and exactly-once horizon in force (with the
/// configured one where a size bound cut it short).
pub fn trail_line(status: &v1::StatusResponse) -> String {
    let in_force = |ms: u64, configured: u64| {
        let shown = humantime::format_duration(std::time::Duration::from_secs(ms / 1_000));
        if ms < configured {
            let configured = std::time::Duration::from_secs(configured / 1_000);
            format!(
                "{shown} (cut by size from {})",
                humantime::format_duration(configured)
            )
        } else {
            shown.to_string()
        }
    };
    let missing = if status.trail_missing.is_empty() {
        "none".to_owned()
    } else {
        let ranges: Vec<String> = (status.trail_missing.iter())
            .map(|r| format!("{}..={}", r.from, r.to))
            .collect();
        ranges.join(", ")
    };
    format!(
        "node {}: records {}..={}, anchor {}, missing {missing}, {} MiB; retention {}; \
         answers {} MiB, exactly-once horizon {}",
        status.node_id,
        status.trail_first_seq,
        status.trail_last_seq,
        chain_head_short(
            status.trail_first_seq.saturating_sub(1),
            &status.trail_anchor
        ),
        status.trail_bytes >> 20,
        in_force(
            status.audit_retention_ms,
            status.audit_retention_configured_ms
        ),
        status.answers_bytes >> 20,
        in_force(
            status.answer_horizon_ms,
            status.answer_horizon_configured_ms
        ),
    ) + if status.answers_copying {
        " (copying answers from a peer)"
    } else {
        ""
    }
}

/// An audit event (the ledger's `AuditEvent` as JSON) in one short line:
/// `"grant"` → `grant`, `{"commit":{"late":false,"overrun":true}}` →
/// `commit(late=false, overrun=true)`. Text that is not JSON is shown as it is.
pub fn describe_event(event_json: &str) -> String {
    match serde_json::from_str::<Value>(event_json) {
        Ok(value) => compact(&value),
        Err(_) => event_json.to_owned(),
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        // serde's externally tagged enum variant: {"variant": content}. Its content is an
        // object, a string or a list; a one-field struct ({"charged": true}) has a scalar,
        // or a CamelCase key in exports before the snake_case schema.
        Value::Object(map)
            if map.len() == 1
                && map.iter().all(|(k, v)| {
                    k.starts_with(char::is_uppercase)
                        || matches!(v, Value::Object(_) | Value::String(_) | Value::Array(_))
                }) =>
        {
            map.iter()
                .map(|(variant, content)| format!("{variant}({})", compact(content)))
                .collect()
        }
        Value::Object(map) => map
            .iter()
            .map(|(key, field)| format!("{key}={}", compact(field)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(compact).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

pub fn audit_table(records: &[v1::AuditRecord]) -> Table {
    let mut table = Table::new(&[
        "SEQ",
        "TIME",
        "TENANT",
        "AGENT",
        "TOOL",
        "EVENT",
        "TOKENS",
        "COST",
        "CALLS",
        "RESERVATION",
        "REQUEST-ID",
    ]);
    let text = |value: &str| {
        if value.is_empty() {
            "-".to_owned()
        } else {
            value.to_owned()
        }
    };
    for record in records {
        let amounts = record.amounts.unwrap_or_default();
        table.row(vec![
            record.seq.to_string(),
            format_time_ms(record.at_ms),
            text(&record.tenant),
            text(&record.agent),
            text(&record.tool),
            describe_event(&record.event_json),
            amounts.tokens.to_string(),
            format_micros(amounts.cost_micros),
            amounts.calls.unwrap_or_default().to_string(),
            or_dash(record.reservation_id),
            text(&record.request_id),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let mut table = Table::new(&["NODE", "ADDR", "ROLE"]);
        table.row(vec!["1".into(), "127.0.0.1:7001".into(), "leader".into()]);
        table.row(vec!["22".into(), "n2:7001".into(), "follower".into()]);
        assert_eq!(
            table.render(),
            "NODE  ADDR            ROLE\n\
             1     127.0.0.1:7001  leader\n\
             22    n2:7001         follower\n"
        );
    }

    #[test]
    fn tables_have_no_trailing_spaces_and_survive_hostile_cells() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x\ny\x1b[31m".into(), String::new()]);
        let text = table.render();
        assert_eq!(text, "A         B\nx?y?[31m\n");
        assert!(text.lines().all(|line| !line.ends_with(' ')));
        assert_eq!(Table::new(&["A", "BB"]).render(), "A  BB\n");
    }

    #[test]
    #[should_panic(expected = "one cell per column")]
    fn a_row_needs_one_cell_per_column() {
        Table::new(&["A", "B"]).row(vec!["1".into()]);
    }

    #[test]
    fn fields_align_their_values() {
        let text = render_fields(&[("expiry", "charge".into()), ("velocity", "off".into())]);
        assert_eq!(text, "expiry    charge\nvelocity  off\n");
    }

    /// `tenant get` shows whether clients may hold leases, in words and in JSON.
    #[test]
    fn policies_say_whether_leases_are_on() {
        let mut policy = crate::grpc::convert::policy_to_pb(&tollgate_ledger::TenantPolicy {
            leases: true,
            ..Default::default()
        });
        let shown = |policy: &v1::TenantPolicy| {
            policy_fields(policy)
                .into_iter()
                .find(|(key, _)| *key == "leases")
                .map(|(_, value)| value)
        };
        assert!(shown(&policy).unwrap().starts_with("on"));
        assert_eq!(policy_json(&policy)["leases"], json!(true));
        policy.leases = false;
        assert!(shown(&policy).unwrap().starts_with("off"));
        assert_eq!(policy_json(&policy)["leases"], json!(false));
    }

    #[test]
    fn chain_heads_are_short() {
        assert_eq!(chain_head_short(57, &[0xab; 32]), "57:abababababab");
        assert_eq!(chain_head_short(0, &[]), "0:-");
        assert_eq!(chain_head_short(3, &[0x01, 0x02]), "3:0102");
    }

    #[test]
    fn limits_describe_their_kind_and_amount() {
        use v1::limit::Kind;
        let limit = |kind| v1::Limit {
            id: "l".into(),
            scope: Some(super::super::parse::parse_scope("tool:llm:gpt-x").unwrap()),
            dimension: v1::Dimension::Tokens.into(),
            kind: Some(kind),
            thresholds: None,
        };
        let rate = limit(Kind::Rate(v1::Rate {
            amount: 100_000,
            period_ms: 60_000,
            burst: 10,
        }));
        assert_eq!(
            limit_kind(&rate),
            ("rate/1m burst 10".to_owned(), Some(100_000))
        );
        assert_eq!(
            limit_json(&rate),
            json!({"id": "l", "scope": "tool-per-agent:llm:gpt-x", "dimension": "tokens",
                   "kind": "rate", "amount": 100_000, "period_ms": 60_000, "burst": 10})
        );
        let budget = limit(Kind::Budget(v1::Budget {
            window: v1::Window::Day.into(),
            amount: 5,
        }));
        assert_eq!(limit_kind(&budget), ("budget/day".to_owned(), Some(5)));
        let table = limits_table(&[budget]).render();
        assert!(
            table.contains("tool-per-agent:llm:gpt-x  tokens     budget/day  5"),
            "{table}"
        );
    }

    #[test]
    fn audit_events_read_as_one_short_line() {
        assert_eq!(describe_event(r#""Grant""#), "Grant");
        assert_eq!(
            describe_event(r#"{"Commit":{"overrun":true,"late":false}}"#),
            "Commit(late=false, overrun=true)"
        );
        assert_eq!(
            describe_event(r#"{"Expire":{"charged":true}}"#),
            "Expire(charged=true)"
        );
        assert_eq!(describe_event(r#"{"Deny":"Frozen"}"#), "Deny(Frozen)");
        assert_eq!(
            describe_event(r#"{"LimitDelete":"daily"}"#),
            "LimitDelete(daily)"
        );
        assert_eq!(
            describe_event(r#"{"commit":{"late":false,"overrun":true}}"#),
            "commit(late=false, overrun=true)"
        );
        assert_eq!(
            describe_event(r#"{"expire":{"charged":true}}"#),
            "expire(charged=true)"
        );
        assert_eq!(
            describe_event(r#"{"deny":{"frozen":{"agent":null}}}"#),
            "deny(frozen(agent=null))"
        );
        assert_eq!(
            describe_event(r#"{"limit_delete":"daily"}"#),
            "limit_delete(daily)"
        );
        assert_eq!(describe_event("not json"), "not json");
    }

    #[test]
    fn trips_say_why_and_until_when() {
        let tripped = v1::Tripped {
            cause: Some(v1::TripCause {
                cause: Some(v1::trip_cause::Cause::Repetition(v1::Repetition {
                    fingerprint: "ab12".into(),
                    count: 20,
                })),
            }),
            until_ms: None,
        };
        assert_eq!(
            describe_trip(&tripped),
            "repetition: fingerprint \"ab12\" seen 20 times; until an operator runs reset-trip"
        );
        assert_eq!(
            tripped_json(&tripped),
            json!({"cause": {"repetition": {"fingerprint": "ab12", "count": 20}}, "until_ms": null})
        );
        let tripped = v1::Tripped {
            cause: Some(v1::TripCause {
                cause: Some(v1::trip_cause::Cause::ShapeVelocity(v1::ShapeVelocity {
                    shape: "5e1f".into(),
                    calls: 61,
                    baseline: 0,
                })),
            }),
            until_ms: None,
        };
        assert_eq!(
            describe_trip(&tripped),
            "shape velocity: argument shape \"5e1f\" called 61 times against a recent baseline \
             of 0; until an operator runs reset-trip"
        );
        assert_eq!(
            tripped_json(&tripped),
            json!({"cause": {"shape_velocity": {"shape": "5e1f", "calls": 61, "baseline": 0}},
                   "until_ms": null})
        );
    }

    #[test]
    fn cost_reads_as_money_for_people_and_stays_exact_for_scripts() {
        let limit = v1::Limit {
            id: "daily".into(),
            scope: Some(super::super::parse::parse_scope("tenant").unwrap()),
            dimension: v1::Dimension::Cost.into(),
            kind: Some(v1::limit::Kind::Budget(v1::Budget {
                window: v1::Window::Day.into(),
                amount: 50_000_000,
            })),
            thresholds: None,
        };
        let usage = v1::LimitUsage {
            limit: Some(limit.clone()),
            used: 49_040_000,
            held: 1,
            remaining: -1_500_000,
            ..v1::LimitUsage::default()
        };
        let table = usage_table(std::slice::from_ref(&usage)).render();
        assert!(
            table.contains("budget/day  $50.00  $49.04  $0.000001  -$1.50"),
            "{table}"
        );
        let value = usage_json(&usage);
        assert_eq!(value["used"], json!(49_040_000));
        assert_eq!(value["used_usd"], json!("49.04"));
        assert_eq!(value["remaining_usd"], json!("-1.50"));
        assert_eq!(value["limit"]["amount_usd"], json!("50.00"));
        let amounts = v1::Amounts {
            cost_micros: 250_000,
            ..v1::Amounts::default()
        };
        assert_eq!(
            amounts_json(Some(&amounts)),
            json!({"tokens": 0, "cost_micros": 250_000, "cost_usd": "0.25", "calls": 0})
        );
        let tokens = v1::LimitUsage {
            limit: Some(v1::Limit {
                dimension: v1::Dimension::Tokens.into(),
                ..limit
            }),
            used: 7,
            ..v1::LimitUsage::default()
        };
        assert_eq!(usage_json(&tokens).get("used_usd"), None);
        assert!(usage_table(&[tokens]).render().contains("  7  "));
    }
}
