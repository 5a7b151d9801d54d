//! A Tollgate node: `raft` orders, replicates and persists; `grpc` translates; the ledger
//! (`tollgate-ledger`) decides.
pub mod alerts;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod dev;
pub mod grpc;
pub mod http;
pub mod local_cluster;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod start;
pub mod tls;
pub mod traces;
