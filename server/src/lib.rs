//! A Tollgate node. `ledger` decides; `raft` orders, replicates and persists; `grpc` translates.
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dev;
pub mod grpc;
pub mod ledger;
pub mod local_cluster;
pub mod metrics;
pub mod node;
pub mod raft;
