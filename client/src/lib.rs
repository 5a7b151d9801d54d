//! The Rust client that agent workers embed to ask a Tollgate cluster before they spend.
//!
//! Before every LLM or tool call, [`Client::reserve`] the estimated spend; the cluster
//! grants it against every limit that applies, or denies it with the reason. After the
//! call, [`Reservation::commit`] what was actually spent ([`Reservation::commit_usage`] for
//! model and tokens the cluster prices), or [`Reservation::release`] if the call did not
//! happen. A reservation dropped without either (an early return, a `?`, a panic) is
//! charged its estimate, flagged `abandoned` in the audit trail, because the call may have
//! happened; only `release` gives the estimate back. [`Client::guarded`] does all three
//! around a closure.
//!
//! The client finds the leader, follows its hints, reuses connections and retries with the
//! same request id, so a retry is never a second charge. Concurrent reserves, commits,
//! releases and records leave together in one `Batch` RPC per node
//! ([`ClientConfig::coalesce`], on by default), each with its own answer and retries.
//! When the cluster cannot be reached within the deadline it fails closed (an
//! [`Error::Unavailable`] that says why), unless configured to fail open up to a local cap;
//! when every node refuses the connection it says so at once, without waiting for the
//! deadline ([`ClientConfig::probe_interval`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate_client::{Amounts, CallError, Client, ClientConfig, Error, ReserveRequest, Usage};
//!
//! # struct Response { input_tokens: u64, output_tokens: u64 }
//! # async fn call_llm(_prompt: &str) -> Response { Response { input_tokens: 0, output_tokens: 0 } }
//! # async fn search(_query: &str) -> Result<Vec<String>, std::io::Error> { Ok(Vec::new()) }
//! /// Attempts one call site makes before it gives up on a rate limit.
//! const DENIED_RETRIES_MAX: u32 = 3;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::new(ClientConfig {
//!         // TOLLGATE_API_KEY, or the file TOLLGATE_API_KEY_FILE names.
//!         token: tollgate_client::api_key_from_env()?,
//!         ..ClientConfig::new(["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"])
//!     })?;
//!
//!     // An LLM call: reserve the worst case (the prompt and the max output tokens, priced by
//!     // the tenant's price table), then commit what the provider's response says was used.
//!     let request = ReserveRequest::new("acme", "support-bot", "llm:gpt-4o")
//!         .usage(Usage::new("gpt-4o", 3_000, 1_000))
//!         .ttl(Duration::from_secs(120));
//!     let mut attempt = 0;
//!     let reservation = loop {
//!         match client.reserve(request.clone()).await {
//!             Ok(reservation) => break reservation,
//!             // A rate limit says when the same request would fit: wait that long.
//!             Err(Error::Denied { retry_after: Some(wait), .. }) if attempt < DENIED_RETRIES_MAX => {
//!                 attempt += 1;
//!                 tokio::time::sleep(wait).await;
//!             }
//!             // A budget, a freeze, a trip or an outage: do not make the call.
//!             Err(error) => return Err(error.into()),
//!         }
//!     };
//!     // Were this to return early, the dropped reservation would be charged its estimate.
//!     let response = call_llm("Summarise the ticket").await;
//!     let committed = reservation
//!         .commit_usage(Usage::new("gpt-4o", response.input_tokens, response.output_tokens))
//!         .await?;
//!     tracing::info!(cost_micros = committed.cost_micros, overrun = committed.overrun, "LLM call");
//!
//!     // A tool call, guarded: one call, no tokens (the estimate's calls default to 1). A
//!     // failed search may have happened, so `?` settles at the estimate.
//!     let (hits, _committed) = client
//!         .guarded(ReserveRequest::new("acme", "support-bot", "search"), |_| async {
//!             let hits = search("order 1234").await?;
//!             Ok::<_, CallError<std::io::Error>>((hits, Amounts::new(0, 0, 1)))
//!         })
//!         .await?;
//!     println!("{} hits", hits.len());
//!     Ok(())
//! }
//! ```
//!
//! With the cargo feature `otel`, each RPC carries the W3C trace context of the calling code
//! (the current `tracing` span under tracing-opentelemetry, else the attached
//! `opentelemetry::Context`), so a node that exports traces makes its span a child of yours;
//! a call inside a sampled trace then leaves as its own RPC rather than in a `Batch`.
//!
//! Everything else (the Admin and Cluster services, or any RPC with this client's
//! leader-following and retry policy) goes through [`Client::call`], [`Client::call_node`]
//! and the typed wrappers built on them.
#![warn(missing_docs)]

mod admin;
mod breaker;
mod channel;
mod client;
mod coalescer;
mod config;
mod error;
mod fingerprint;
mod guarded;
mod lease;
mod local;
mod pool;
mod prices;
mod reservation;
mod tollgate;
mod trace;
mod types;

pub use admin::{AuditExport, AUDIT_QUERY_RECORDS_MAX};
pub use channel::{leader_hint, Auth, AuthChannel};
pub use client::{Client, ATTEMPTS_MAX};
pub use coalescer::{COALESCER_BATCHES_IN_FLIGHT_MAX, COALESCER_QUEUE_OPS_MAX};
pub use config::{
    api_key_from_env, normalise_endpoint, read_api_key_file, read_pem, Backoff, ClientConfig,
    FailMode, TlsConfig, API_KEY_ENV, API_KEY_FILE_ENV, ATTEMPT_TIMEOUT_DEFAULT,
    BACKOFF_INITIAL_DEFAULT, BACKOFF_MAX_DEFAULT, DEADLINE_DEFAULT, ENDPOINTS_MAX,
    PEM_FILE_BYTES_MAX, PROBE_INTERVAL_DEFAULT,
};
pub use error::{is_retryable, Error};
pub use fingerprint::{
    fingerprint, fingerprint_ignoring, fingerprint_shape, FingerprintError, FINGERPRINT_DEPTH_MAX,
};
pub use guarded::{CallError, GuardError};
pub use lease::{
    LEASES_PER_CLIENT_MAX, LEASE_ASK_INTERVAL, LEASE_MARGIN_MS, LEASE_OFF_MEMORY,
    LEASE_SETTLE_CALLS_MAX, LEASE_SLICE_CALLS_MAX, LEASE_UNITS_DEFAULT, LEASE_UNITS_MAX,
};
pub use local::OFFLINE_REPORTS_MAX;
pub use pool::{Rpc, CHANNELS_MAX, COALESCERS_PER_CHANNEL_MAX};
pub use reservation::{Reservation, ReservationInfo};
pub use tollgate::RESERVATIONS_LIST_MAX;
/// The wire types (`tollgate.v1`), re-exported so callers need no direct dependency.
pub use tollgate_proto::v1;
pub use types::{
    new_request_id, scope_to_string, Amounts, Applied, CommitInfo, Dimension, Recorded, Remaining,
    ReserveRequest, Spend, Usage, TTL_DEFAULT,
};
