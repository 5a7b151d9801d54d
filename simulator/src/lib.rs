//! The Tollgate simulator: runaway agents replayed against a real cluster, and the checker
//! that holds the cluster's answers to its promises.
//!
//! - `history`: what clients saw, and the linear-time checker (no cluster, no I/O but
//!   JSON lines; fault tests elsewhere reuse it).
//! - `scenario`: the TOML scenario files.
//! - `runner`: drives one scenario against an embedded or external cluster.
//! - `evaluate`: metrics and expectations of a run; `report` and `chart` present them,
//!   `table` is the one table style of the human output (report and bench).
//! - `bench`: `tollgate-sim bench`, throughput and latency against Tollgate, etcd and Redis.

pub mod bench;
pub mod chart;
pub mod evaluate;
pub mod history;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod table;
