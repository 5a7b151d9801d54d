//! Prometheus metrics through the `metrics` crate. Labels are bounded: operation, outcome,
//! reason and node id; never a tenant, agent or tool (unbounded sets).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::node::Node;

/// How often the Raft gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The process's recorder, rendered by the HTTP listener's `/metrics`.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histograms drop samples older than their window (the exporter needs a caller).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder once; later calls are no-ops. Needs a Tokio runtime.
pub fn install_recorder() -> anyhow::Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ])
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    if HANDLE.set(handle).is_ok() {
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                timer.tick().await;
                upkeep.run_upkeep();
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

/// Samples term, leader, commit and apply index, and reservations in flight, per node.
pub fn spawn_raft_gauges(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(GAUGE_INTERVAL);
        loop {
            timer.tick().await;
            let labels = [("node", node.id.to_string())];
            let (term, leader, applied, last_log, is_leader) = {
                let metrics = node.raft.metrics();
                let m = metrics.borrow();
                (
                    m.current_term,
                    m.current_leader.unwrap_or(0),
                    m.last_applied.map_or(0, |id| id.index),
                    m.last_log_index.unwrap_or(0),
                    m.current_leader == Some(node.id),
                )
            };
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
            metrics::gauge!("tollgate_raft_term", &labels).set(term as f64);
            metrics::gauge!("tollgate_raft_leader_id", &labels).set(leader as f64);
            metrics::gauge!("tollgate_raft_is_leader", &labels).set(f64::from(u8::from(is_leader)));
            metrics::gauge!("tollgate_raft_commit_index", &labels).set(committed as f64);
            metrics::gauge!("tollgate_raft_applied_index", &labels).set(applied as f64);
            metrics::gauge!("tollgate_raft_last_log_index", &labels).set(last_log as f64);
            metrics::gauge!("tollgate_reservations_in_flight", &labels).set(in_flight as f64);
        }
    });
}
