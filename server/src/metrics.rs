//! Prometheus metrics through the `metrics` crate: the process-wide recorder, the description
//! of every metric, and the samplers that turn node state into gauges. Labels are bounded:
//! operation, outcome, reason, node id, limit id (capped, see [`count_denial`]) and the
//! tenants of the top-N sample (see [`tenants`]); never an agent, tool or request.
//! Sampling runs on its own tasks: the decision path only increments counters.

pub mod tenants;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tollgate_ledger::DenyReason;

use crate::node::Node;

/// How often the Raft gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The process's recorder, rendered by the HTTP listener's `/metrics`.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histograms drop samples older than their window, and the process gauges are
/// sampled (the exporter needs a caller for its upkeep).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A gauge not set for this long leaves the exposition: a tenant out of the top N, a node
/// no longer leader. Several sampling intervals, so a slow pass never drops a live series.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Latency histograms' buckets, in seconds: from a tenth of a millisecond (one fsync on a
/// good disk) to a second (an election).
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Operations per batch: powers of two up to `BATCH_OPS_MAX`.
const BATCH_BUCKETS_OPERATIONS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const _: () = assert!(
    tollgate_proto::BATCH_OPS_MAX == 1024,
    "the last batch bucket"
);

/// Distinct limit ids the denials counter labels; a denial by any further id is counted
/// under `limit="other"`. Limit ids are chosen per tenant, so their union is unbounded.
pub const DENIAL_LIMIT_LABELS_MAX: usize = 256;

/// Installs the process-wide recorder once; later calls are no-ops. Needs a Tokio runtime.
pub fn install_recorder() -> anyhow::Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_SECONDS)
        .context("metrics buckets")?
        .set_buckets_for_metric(
            Matcher::Full("tollgate_batch_operations".into()),
            &BATCH_BUCKETS_OPERATIONS,
        )
        .context("batch buckets")?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    if HANDLE.set(handle).is_ok() {
        describe();
        let process = metrics_process::Collector::default();
        process.describe();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                timer.tick().await;
                upkeep.run_upkeep();
                process.collect();
                // Re-set each round: a gauge left alone would idle out.
                metrics::gauge!("tollgate_build_info", "version" => env!("CARGO_PKG_VERSION"))
                    .set(1.0);
            }
        });
    }
    Ok(())
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// HELP and TYPE of every metric this crate emits (the `process_*` ones describe themselves).
fn describe() {
    describe_gauge!(
        "tollgate_build_info",
        "Always 1; the version label names the running build."
    );
    describe_counter!(
        "tollgate_decisions_total",
        Unit::Count,
        "Answers to reserve, commit, release, record, lease and settle, by operation, outcome and reason."
    );
    describe_counter!(
        "tollgate_lease_calls_charged_total",
        Unit::Count,
        "Calls decided inside leases and charged by their settles."
    );
    describe_counter!(
        "tollgate_denials_total",
        Unit::Count,
        "Denied reservations by the denying limit id (limit=\"none\" when frozen or tripped) and reason."
    );
    describe_counter!(
        "tollgate_threshold_crossings_total",
        Unit::Count,
        "Soft-threshold crossings of budgets applied, by threshold percent; every replica counts the same ones."
    );
    describe_counter!(
        "tollgate_clock_jumps_clamped_total",
        Unit::Count,
        "Times the leader's clock went backwards and the command time was held still instead."
    );
    describe_histogram!(
        "tollgate_propose_seconds",
        Unit::Seconds,
        "From receiving a command to its applied outcome, by operation."
    );
    describe_histogram!(
        "tollgate_batch_operations",
        Unit::Count,
        "Operations per Batch call."
    );
    describe_histogram!(
        "tollgate_raft_log_sync_seconds",
        Unit::Seconds,
        "From handing a Raft log write to the flush thread to its fdatasync completing."
    );
    describe_raft();
    tenants::describe();
}

fn describe_raft() {
    let gauges = [
        ("tollgate_raft_term", "The node's current Raft term."),
        (
            "tollgate_raft_leader_id",
            "The leader the node knows of; 0 if none.",
        ),
        ("tollgate_raft_is_leader", "1 on the leader, 0 elsewhere."),
        (
            "tollgate_raft_commit_index",
            "The node's committed log index.",
        ),
        (
            "tollgate_raft_applied_index",
            "The node's last applied log index.",
        ),
        ("tollgate_raft_last_log_index", "The node's last log index."),
        (
            "tollgate_raft_apply_lag_entries",
            "Committed entries the node has not applied yet.",
        ),
        (
            "tollgate_raft_follower_lag_entries",
            "On the leader: its last log index minus what the follower has matched.",
        ),
        (
            "tollgate_reservations_in_flight",
            "Reservations held and not yet committed, released or expired.",
        ),
        (
            "tollgate_leases_live",
            "Leases held and not yet returned or expired.",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
    }
    describe_counter!(
        "tollgate_raft_leader_changes_total",
        Unit::Count,
        "Times the node saw the cluster's leader change (including to no leader)."
    );
}

/// Counts a denial by its limit and reason. The counter of each limit id is looked up by
/// `&str`: no allocation, except once for each new id (at most [`DENIAL_LIMIT_LABELS_MAX`]).
pub fn count_denial(reason: &DenyReason) {
    let limit_id = match reason {
        DenyReason::Limit { limit_id, .. } => limit_id.as_str(),
        DenyReason::Frozen { .. } => {
            metrics::counter!("tollgate_denials_total", "limit" => "none", "reason" => "frozen")
                .increment(1);
            return;
        }
        DenyReason::Tripped { .. } => {
            metrics::counter!("tollgate_denials_total", "limit" => "none", "reason" => "tripped")
                .increment(1);
            return;
        }
    };
    static BY_LIMIT: OnceLock<Mutex<HashMap<Box<str>, Counter>>> = OnceLock::new();
    let by_limit = BY_LIMIT.get_or_init(Mutex::default);
    let mut by_limit = by_limit.lock().unwrap_or_else(|p| p.into_inner());
    let label = match by_limit.contains_key(limit_id) || by_limit.len() < DENIAL_LIMIT_LABELS_MAX {
        true => limit_id,
        false => "other",
    };
    if let Some(counter) = by_limit.get(label) {
        counter.increment(1);
        return;
    }
    let counter = metrics::counter!("tollgate_denials_total", "limit" => label.to_owned(), "reason" => "limit");
    counter.increment(1);
    by_limit.insert(label.into(), counter);
    debug_assert!(
        by_limit.len() <= DENIAL_LIMIT_LABELS_MAX + 1,
        "the ids and \"other\""
    );
}

/// One sample of a node's Raft state.
struct RaftSample {
    term: u64,
    leader: u64,
    is_leader: bool,
    applied: u64,
    last_log: u64,
    /// On the leader: each follower's lag behind the leader's last log index.
    follower_lags: Vec<(u64, u64)>,
}

fn raft_sample(node: &Node) -> RaftSample {
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    let last_log = m.last_log_index.unwrap_or(0);
    let follower_lags = m
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != node.id)
        .map(|(id, matched)| {
            let matched = matched.map_or(0, |log_id| log_id.index);
            (*id, last_log.saturating_sub(matched))
        })
        .collect();
    RaftSample {
        term: m.current_term,
        leader: m.current_leader.unwrap_or(0),
        is_leader: m.current_leader == Some(node.id),
        applied: m.last_applied.map_or(0, |id| id.index),
        last_log,
        follower_lags,
    }
}

/// Samples term, leader, commit and apply index, lags, reservations in flight and live
/// leases, per node; counts leader changes as they happen.
pub fn spawn_raft_gauges(node: Arc<Node>) {
    spawn_leader_changes(node.clone());
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(GAUGE_INTERVAL);
        let labels = [("node", node.id.to_string())];
        loop {
            timer.tick().await;
            let sample = raft_sample(&node);
            let committed = node
                .raft
                .with_raft_state(|state| state.committed.map_or(0, |id| id.index))
                .await;
            let Ok(committed) = committed else {
                return; // raft stopped
            };
            let in_flight = crate::raft::state_machine::read_applied(&node.applied)
                .ledger
                .stats()
                .reservations_in_flight;
            let leases = node.leases_live();
            let leader = u8::from(sample.is_leader);
            metrics::gauge!("tollgate_raft_term", &labels).set(sample.term as f64);
            metrics::gauge!("tollgate_raft_leader_id", &labels).set(sample.leader as f64);
            metrics::gauge!("tollgate_raft_is_leader", &labels).set(f64::from(leader));
            metrics::gauge!("tollgate_raft_commit_index", &labels).set(committed as f64);
            metrics::gauge!("tollgate_raft_applied_index", &labels).set(sample.applied as f64);
            metrics::gauge!("tollgate_raft_last_log_index", &labels).set(sample.last_log as f64);
            let apply_lag = committed.saturating_sub(sample.applied);
            metrics::gauge!("tollgate_raft_apply_lag_entries", &labels).set(apply_lag as f64);
            for (follower, lag) in sample.follower_lags {
                let labels = [
                    ("node", node.id.to_string()),
                    ("follower", follower.to_string()),
                ];
                metrics::gauge!("tollgate_raft_follower_lag_entries", &labels).set(lag as f64);
            }
            metrics::gauge!("tollgate_reservations_in_flight", &labels).set(in_flight as f64);
            metrics::gauge!("tollgate_leases_live", &labels).set(leases as f64);
        }
    });
}

/// Counts each change of the leader this node sees, from openraft's server metrics (which
/// change only with the vote, state, leader or membership, not with every entry).
fn spawn_leader_changes(node: Arc<Node>) {
    let mut server = node.raft.server_metrics();
    tokio::spawn(async move {
        let changes =
            metrics::counter!("tollgate_raft_leader_changes_total", "node" => node.id.to_string());
        // Zero is a sample too: a node that never saw a change still has the series.
        changes.increment(0);
        let mut leader = server.borrow_and_update().current_leader;
        while server.changed().await.is_ok() {
            let now = server.borrow_and_update().current_leader;
            if now != leader {
                changes.increment(1);
                leader = now;
            }
        }
    });
}
