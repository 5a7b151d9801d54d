//! Per-tenant limit gauges: used, held, remaining and capacity of each tenant-wide limit, as
//! `GetUsage` without an agent reports them, sampled from the applied ledger.
//!
//! Only the leader emits them, without a node label: every node applies the same state, so
//! one series per (tenant, limit) is enough, and sums and alerts need no de-duplication. A
//! node that stops leading stops setting them and they idle out of its exposition.
//!
//! Cardinality is bounded by `--metrics-tenants-max`: only the tenants closest to a limit
//! (highest fraction of any limit taken, then most used) are emitted; a tenant that drops
//! out of that set idles out after [`super::GAUGE_IDLE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use metrics::describe_gauge;
use tollgate_ledger::{Dimension, Ledger, LimitKind, LimitUsage, Scope, TenantId};

use crate::node::Node;
use crate::raft::state_machine::read_applied;

/// Tenants sampled unless `--metrics-tenants-max` says otherwise.
pub const METRICS_TENANTS_DEFAULT: usize = 50;
/// Most tenants `--metrics-tenants-max` may ask for: each brings up to five series per limit.
pub const METRICS_TENANTS_MAX: usize = 1_000;

/// How often the leader samples the tenants. Ranking every tenant costs a pass over the
/// ledger (about 80 ms on one core for `tollgate_ledger::TENANTS_MAX` tenants of three limits each), so
/// less often than the Raft gauges; a budget alert needs minutes, not seconds.
const TENANT_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Tenants ranked under one hold of the read lock, so applies wait at most for that many.
const TENANTS_PER_LOCK: usize = 256;

pub(super) fn describe() {
    let gauges = [
        (
            "tollgate_tenant_limit_used",
            "Committed spend in the window (budgets), bucket level (rates) or reservations in flight (concurrency), in the dimension's unit (cost in micro-units).",
        ),
        (
            "tollgate_tenant_limit_held",
            "Held by reservations in flight (budgets), in the dimension's unit.",
        ),
        (
            "tollgate_tenant_limit_remaining",
            "What a new reservation could still take; negative after overruns.",
        ),
        (
            "tollgate_tenant_limit_capacity",
            "The limit: a budget's amount, a rate's burst, a concurrency maximum.",
        ),
        (
            "tollgate_tenant_limit_used_ratio",
            "(capacity - remaining) / capacity: the fraction of the limit taken, held included.",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
    }
}

/// Samples the top `tenants_max` tenants while this node leads; 0 turns the gauges off.
pub fn spawn_tenant_gauges(node: Arc<Node>, tenants_max: usize) {
    debug_assert!(tenants_max <= METRICS_TENANTS_MAX);
    if tenants_max == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(TENANT_GAUGE_INTERVAL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            if !node.is_leader() {
                continue;
            }
            let sampling = node.clone();
            let sampled = tokio::task::spawn_blocking(move || sample(&sampling, tenants_max)).await;
            match sampled {
                Ok(rows) => emit(&rows),
                Err(error) => tracing::warn!(%error, "sampling the tenant gauges"),
            }
        }
    });
}

/// How close a tenant is to its limits: the largest fraction of any limit taken, in parts
/// per million, then the sum of its `used`.
type Score = (u64, u64);

fn score(rows: &[LimitUsage]) -> Score {
    let ratio_ppm = rows
        .iter()
        .map(|row| {
            let capacity = i128::from(capacity(&row.limit.kind).max(1));
            let taken = (capacity - i128::from(row.remaining)).max(0);
            u64::try_from(taken * 1_000_000 / capacity).unwrap_or(u64::MAX)
        })
        .max()
        .unwrap_or(0);
    let used = rows
        .iter()
        .fold(0u64, |sum, row| sum.saturating_add(row.used));
    (ratio_ppm, used)
}

/// The top `tenants_max` tenants' usage rows. The lock is taken per chunk of tenants: a
/// tenant created or changed between chunks is seen at the next pass.
fn sample(node: &Node, tenants_max: usize) -> Vec<(TenantId, Vec<LimitUsage>)> {
    let tenants = read_applied(&node.applied).ledger.tenants();
    let mut scored: Vec<(Score, TenantId)> = Vec::with_capacity(tenants.len());
    for chunk in tenants.chunks(TENANTS_PER_LOCK) {
        let applied = read_applied(&node.applied);
        for tenant in chunk {
            if let Some(rows) = usage(&applied.ledger, tenant) {
                scored.push((score(&rows), tenant.clone()));
            }
        }
    }
    let top = top(scored, tenants_max);
    let applied = read_applied(&node.applied);
    top.into_iter()
        .filter_map(|tenant| usage(&applied.ledger, &tenant).map(|rows| (tenant, rows)))
        .collect()
}

/// The `n` tenants of highest score, highest first; ties by tenant id, so the set is stable
/// from one pass to the next.
fn top(mut scored: Vec<(Score, TenantId)>, n: usize) -> Vec<TenantId> {
    let order = |a: &(Score, TenantId), b: &(Score, TenantId)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    if scored.len() > n {
        scored.select_nth_unstable_by(n, order);
        scored.truncate(n);
    }
    scored.sort_unstable_by(order);
    scored.into_iter().map(|(_, tenant)| tenant).collect()
}

/// The rows `GetUsage` reports for the tenant without an agent; None if it is gone.
fn usage(ledger: &Ledger, tenant: &TenantId) -> Option<Vec<LimitUsage>> {
    ledger.usage(tenant, None, None).ok()
}

fn emit(tenants: &[(TenantId, Vec<LimitUsage>)]) {
    for (tenant, rows) in tenants {
        for row in rows {
            let labels = [
                ("tenant", tenant.as_str().to_owned()),
                ("limit", row.limit.id.as_str().to_owned()),
                ("scope", scope_name(&row.limit.scope).to_owned()),
                ("dimension", dimension_name(row.limit.dimension).to_owned()),
                ("kind", kind_name(&row.limit.kind).to_owned()),
            ];
            let capacity = capacity(&row.limit.kind);
            metrics::gauge!("tollgate_tenant_limit_used", &labels).set(row.used as f64);
            metrics::gauge!("tollgate_tenant_limit_held", &labels).set(row.held as f64);
            metrics::gauge!("tollgate_tenant_limit_remaining", &labels).set(row.remaining as f64);
            metrics::gauge!("tollgate_tenant_limit_capacity", &labels).set(capacity as f64);
            metrics::gauge!("tollgate_tenant_limit_used_ratio", &labels).set(used_ratio(row));
        }
    }
}

/// What `remaining` is measured against.
fn capacity(kind: &LimitKind) -> u64 {
    match *kind {
        LimitKind::Budget { amount, .. } => amount,
        LimitKind::Rate { burst, .. } => burst,
        LimitKind::Concurrency { max } => max,
        LimitKind::Duration { ms } => ms,
    }
}

/// (capacity - remaining) / capacity. A limit of 0 counts as 1, as the ledger's
/// tightest-limit ranking does, so the ratio is always defined.
fn used_ratio(row: &LimitUsage) -> f64 {
    let capacity = capacity(&row.limit.kind).max(1) as f64;
    (capacity - row.remaining as f64) / capacity
}

fn scope_name(scope: &Scope) -> &'static str {
    match scope {
        Scope::Tenant => "tenant",
        Scope::EachAgent => "each_agent",
        Scope::Agent(_) => "agent",
        Scope::ToolPerAgent(_) => "tool_per_agent",
        Scope::ToolTenant(_) => "tool_tenant",
        Scope::EachSession => "each_session",
    }
}

fn dimension_name(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Tokens => "tokens",
        Dimension::Cost => "cost",
        Dimension::Calls => "calls",
        Dimension::Concurrency => "concurrency",
    }
}

fn kind_name(kind: &LimitKind) -> &'static str {
    match kind {
        LimitKind::Budget { .. } => "budget",
        LimitKind::Rate { .. } => "rate",
        LimitKind::Concurrency { .. } => "concurrency",
        LimitKind::Duration { .. } => "duration",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ledger::{LimitId, LimitSpec, Window};

    fn row(amount: u64, used: u64, held: u64) -> LimitUsage {
        LimitUsage {
            limit: LimitSpec {
                id: LimitId::new("budget").unwrap(),
                scope: Scope::Tenant,
                dimension: Dimension::Tokens,
                kind: LimitKind::Budget {
                    window: Window::Lifetime,
                    amount,
                },
                thresholds: Default::default(),
            },
            agent: None,
            used,
            held,
            remaining: amount as i64 - used as i64 - held as i64,
            window_start_ms: None,
            alerted_percent: 0,
        }
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn tenants_closest_to_a_limit_rank_first_whatever_their_size() {
        let small_nearly_spent = score(&[row(100, 85, 5)]);
        let large_barely_used = score(&[row(1_000_000, 100_000, 0)]);
        let idle = score(&[]);
        assert_eq!(small_nearly_spent.0, 900_000, "90 % taken, held included");
        let scored = vec![
            (large_barely_used, tenant("large")),
            (idle, tenant("idle")),
            (small_nearly_spent, tenant("small")),
        ];
        assert_eq!(top(scored.clone(), 2), [tenant("small"), tenant("large")]);
        assert_eq!(top(scored.clone(), 5).len(), 3);
        assert!(top(scored, 0).is_empty());
    }

    #[test]
    fn an_overrun_or_a_zero_limit_keeps_the_ratio_defined() {
        assert_eq!(used_ratio(&row(100, 150, 0)), 1.5);
        assert_eq!(used_ratio(&row(0, 0, 0)), 1.0);
        assert_eq!(score(&[row(0, 0, 0)]).0, 1_000_000);
    }
}
