//! The gRPC edge: validates and translates requests, proposes commands, reads the ledger
//! after a linearizable barrier, and maps every outcome to one status. Decides nothing.
//! Two listeners: clients (`serve_clients`) and peers (`serve_peers`, Raft only).

mod admin_service;
mod call;
mod cluster_service;
pub mod convert;
mod keys_service;
mod prices_service;
pub mod quorum;
mod raft_service;
mod tollgate_service;

pub use admin_service::FREEZE_LEASES_WAIT;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::auth::Authenticator;
use crate::node::Node;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;
use crate::traces::Traced;

/// Largest client or admin request a node decodes: ids are at most 128 bytes, so a reserve is
/// well under 1 KiB; anything near this bound is garbage or an attack. The Tollgate service
/// decodes up to `tollgate_proto::BATCH_REQUEST_BYTES_MAX` (1 MiB) instead, for `Batch`:
/// tonic bounds message size per service, not per method, so its unary calls share that
/// bound (and their fields are still checked one by one).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Largest response (audit pages, usage lists).
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most streams one connection may have open at once; the peer is told in SETTINGS and a
/// stream beyond it is refused (RST_STREAM REFUSED_STREAM) before any body is read. Every
/// open stream may buffer up to its service's decode bound before a credential is checked,
/// so this is what caps one connection's memory; the load bench's 4,096 clients over 64
/// connections need 64, and a client over fewer connections queues rather than fails.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Requests one connection may have in service at once: the same bound as streams, so a
/// stream the peer was allowed to open is never parked behind another.
pub const REQUESTS_PER_CONNECTION_MAX: usize = STREAMS_PER_CONNECTION_MAX as usize;
/// Longest a request may take, body included: an unfinished stream is cut at this point and
/// its buffer freed. Above openraft's `install_snapshot_timeout` (30 s, set in `start.rs`),
/// the longest any legitimate call waits, so no chunk openraft still waits for is cut; a
/// shorter `grpc-timeout` from the caller applies as well.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// How often an idle connection is pinged, and how long the ping may go unanswered before
/// the connection (and every stream it holds) is dropped: a vanished peer frees its streams
/// within a minute instead of when the kernel gives up on TCP.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block a request may carry: the few gRPC headers and a bearer token fit in
/// well under 1 KiB; h2's own default (16 MiB) would let headers alone hold memory.
pub const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
/// Largest HTTP/2 frame the peer may send: the protocol's minimum (RFC 9113 §4.2), so one
/// frame never makes the node buffer more than this before flow control applies.
pub const FRAME_BYTES_MAX: u32 = 16 * 1024;

/// How often a node looks at its quorum to report its health: well under the bound of
/// `quorum::QUORUM_CONTACT_ELECTION_TIMEOUTS`, so health follows the quorum within a poll.
pub const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Sets the health of the node (`""`) and of its Tollgate service to `status`.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    type Tollgate = pb::tollgate_server::TollgateServer<tollgate_service::TollgateService>;
    let tollgate = <Tollgate as tonic::server::NamedService>::NAME;
    reporter.set_service_status(tollgate, status).await;
    reporter.set_service_status("", status).await;
}

/// Reports the node SERVING only while it is in touch with a quorum (`quorum::quorum`), and
/// NOT_SERVING for good once its Raft core has failed: a node that cannot commit (a leader
/// cut off from its followers, a follower that lost its leader) or can no longer apply
/// entries must not look healthy to a balancer. Ends when the core stops.
async fn report_health(reporter: HealthReporter, raft: crate::raft::Raft) {
    let metrics = raft.metrics();
    let mut reported = None;
    let mut poll = tokio::time::interval(HEALTH_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let running = metrics.borrow().running_state.clone();
        match running {
            Err(openraft::error::Fatal::Stopped) => return,
            Err(fatal) => {
                tracing::error!(%fatal, "raft core failed: health is NOT_SERVING");
                set_health(&reporter, ServingStatus::NotServing).await;
                return;
            }
            Ok(()) => {}
        }
        let quorum = quorum::quorum(&raft).await;
        let status = if quorum.reachable() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if reported != Some(status) {
            tracing::info!(?quorum, ?status, "health");
            set_health(&reporter, status).await;
            reported = Some(status);
        }
    }
}

/// A server with the transport bounds both listeners share, and TLS when `tls` is set.
/// Built before the node starts, so bad TLS material stops the start with its reason.
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server, tonic::transport::Error> {
    let server = Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .timeout(REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(HEADER_LIST_BYTES_MAX)
        .max_frame_size(FRAME_BYTES_MAX);
    match tls {
        Some(tls) => server.tls_config(tls),
        None => Ok(server),
    }
}

/// With a listener of our own, the builder's `tcp_nodelay` is ignored: set it on the
/// incoming stream, or Nagle holds back small answers until the peer's delayed ACK
/// (~40 ms on Linux), which was the p99 of every operation.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves the client services (Tollgate, Admin, Cluster, health, reflection) on `listener`
/// until `stopped` turns true. Never the Raft service: that is `serve_peers`' alone.
pub async fn serve_clients(
    node: Arc<Node>,
    listener: TcpListener,
    mut server: Server,
    mut stopped: watch::Receiver<bool>,
) {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Not serving until the node has found its quorum.
    set_health(&health_reporter, ServingStatus::NotServing).await;
    tokio::spawn(report_health(health_reporter, node.raft.clone()));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha beside v1: older tools (grpcurl before 1.8.8, grpcio-reflection's client)
    // ask only for it.
    let (reflection, reflection_alpha) =
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "reflection service could not be built");
                return;
            }
        };
    // The client-facing services authenticate in an interceptor, on the headers, so a
    // request without a valid key is refused before its body is read.
    let authenticator = Authenticator {
        auth: node.auth.clone(),
        keys: node.keys.clone(),
    };
    let tollgate = pb::tollgate_server::TollgateServer::new(tollgate_service::TollgateService {
        node: node.clone(),
    })
    .max_decoding_message_size(tollgate_proto::BATCH_REQUEST_BYTES_MAX)
    .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let tollgate = InterceptedService::new(tollgate, authenticator.clone());
    let admin =
        pb::admin_server::AdminServer::new(admin_service::AdminService { node: node.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let admin = Traced::new(
        InterceptedService::new(admin, authenticator.clone()),
        node.id,
    );
    let cluster = pb::cluster_server::ClusterServer::new(cluster_service::ClusterService {
        node: node.clone(),
    })
    .max_decoding_message_size(REQUEST_BYTES_MAX)
    .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let cluster = Traced::new(InterceptedService::new(cluster, authenticator), node.id);
    let result = server
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(tollgate)
        .add_service(admin)
        .add_service(cluster)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(node = node.id, %error, "client gRPC server stopped");
    }
}

/// Serves the internal Raft service, and nothing else, on the peer `listener` until
/// `stopped` turns true. `mutual_tls` says `server` requires node certificates, whose
/// identity the service then checks on every message.
pub async fn serve_peers(
    node: Arc<Node>,
    listener: TcpListener,
    mut server: Server,
    mutual_tls: bool,
    mut stopped: watch::Receiver<bool>,
) {
    let raft = raft_service::RaftService {
        node: node.clone(),
        mutual_tls,
    };
    let raft = pb::raft_server::RaftServer::new(raft)
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let result = server
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(node = node.id, %error, "peer gRPC server stopped");
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::server::HealthService;

    use super::*;

    async fn status(reporter: &HealthReporter, service: &str) -> WireStatus {
        let health = HealthService::from_health_reporter(reporter.clone());
        let request = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        let response = health.check(request).await.expect("service is known");
        response.into_inner().status()
    }

    #[tokio::test]
    async fn health_is_set_for_the_node_and_its_tollgate_service() {
        let reporter = HealthReporter::new();
        for expected in [ServingStatus::NotServing, ServingStatus::Serving] {
            set_health(&reporter, expected).await;
            for service in ["", "tollgate.v1.Tollgate"] {
                let expected = WireStatus::from(expected);
                assert_eq!(status(&reporter, service).await, expected, "{service:?}");
            }
        }
    }
}
