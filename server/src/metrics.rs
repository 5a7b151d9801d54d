//! Prometheus metrics through the `metrics` crate. Labels are bounded: operation, outcome,
//! reason and node id; never a tenant, agent or tool (unbounded sets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::node::Node;

/// How often the Raft gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Serves `/metrics` on `addr`. One exporter per process.
pub fn install_exporter(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ])
        .context("metrics buckets")?
        .install()
        .with_context(|| format!("starting metrics endpoint on {addr}"))
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
