//! The gRPC edge: validates and translates requests, proposes commands, reads the ledger
//! after a linearizable barrier, and maps every outcome to one status. Decides nothing.

mod admin_service;
mod call;
mod cluster_service;
pub mod convert;
mod raft_service;
mod tollgate_service;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_proto::v1 as pb;
use tonic::transport::server::TcpIncoming;

use crate::node::Node;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;

/// Largest client or admin request a node decodes: ids are at most 128 bytes, so a reserve is
/// well under 1 KiB; anything near this bound is garbage or an attack. The Tollgate service
/// decodes up to `tollgate_proto::BATCH_REQUEST_BYTES_MAX` (1 MiB) instead, for `Batch`:
/// tonic bounds message size per service, not per method, so its unary calls share that
/// bound (and their fields are still checked one by one).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Largest response (audit pages, usage lists).
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Serves every service on `listener` until `stopped` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::tollgate_server::TollgateServer<tollgate_service::TollgateService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection = match reflection {
        Ok(reflection) => reflection,
        Err(error) => {
            tracing::error!(%error, "reflection service could not be built");
            return;
        }
    };
    let tollgate = pb::tollgate_server::TollgateServer::new(tollgate_service::TollgateService {
        node: node.clone(),
    })
    .max_decoding_message_size(tollgate_proto::BATCH_REQUEST_BYTES_MAX)
    .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let admin =
        pb::admin_server::AdminServer::new(admin_service::AdminService { node: node.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let cluster = pb::cluster_server::ClusterServer::new(cluster_service::ClusterService {
        node: node.clone(),
    })
    .max_decoding_message_size(REQUEST_BYTES_MAX)
    .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let raft = pb::raft_server::RaftServer::new(raft_service::RaftService { node: node.clone() })
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    // With a listener of our own, the builder's `tcp_nodelay` is ignored: set it on the
    // incoming stream, or Nagle holds back small answers until the peer's delayed ACK
    // (~40 ms on Linux), which was the p99 of every operation.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(tollgate)
        .add_service(admin)
        .add_service(cluster)
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(node = node.id, %error, "gRPC server stopped");
    }
}
