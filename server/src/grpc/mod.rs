//! The gRPC edge: validates and translates requests, proposes commands, reads the ledger
//! after a linearizable barrier, and maps every outcome to one status. Decides nothing.

mod admin_service;
mod cluster_service;
pub mod convert;
mod raft_service;
mod tollgate_service;

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_proto::v1 as pb;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use crate::node::Node;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;
use crate::raft::proposer::{AppliedOutcome, ProposeError};
use crate::raft::state_machine::{read_applied, Applied};
use tollgate_ledger::{Command, Rejection};

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

/// UNAVAILABLE, with the leader's address in the `tollgate-leader` metadata when known, so a
/// client can go straight there.
fn not_leader(node: &Node) -> Status {
    let leader = node.leader_addr();
    let message = match &leader {
        Some(addr) => format!(
            "node {} is not the leader; the leader is at {addr}",
            node.id
        ),
        None => format!(
            "node {} is not the leader and knows of none (election?)",
            node.id
        ),
    };
    let mut status = Status::unavailable(message);
    if let Some(addr) = leader.and_then(|addr| addr.parse().ok()) {
        status
            .metadata_mut()
            .insert(tollgate_proto::LEADER_METADATA_KEY, addr);
    }
    status
}

/// The one place a ledger rejection becomes a gRPC status: the code says what kind of
/// refusal it is, the message is the rejection's own text.
pub fn rejection_status(rejection: &Rejection) -> Status {
    let message = rejection.to_string();
    match rejection {
        Rejection::Invalid(_) => Status::invalid_argument(message),
        Rejection::UnknownTenant { .. }
        | Rejection::UnknownAgent { .. }
        | Rejection::UnknownLimit { .. }
        | Rejection::UnknownReservation { .. }
        | Rejection::ReservationEnded { .. } => Status::not_found(message),
        Rejection::WrongTenant { .. } => Status::permission_denied(message),
        Rejection::ReleaseAfterExpiry { .. } | Rejection::AnswerUnreadable { .. } => {
            Status::failed_precondition(message)
        }
        Rejection::BoundReached { .. } => Status::resource_exhausted(message),
        Rejection::RequestIdReused { .. } => Status::already_exists(message),
    }
}

/// Validates, proposes and waits for the command to be applied. Bad input never reaches the
/// log; a rejection by the ledger comes back as its status.
async fn propose(
    node: &Node,
    command: Command,
    op: &'static str,
) -> Result<AppliedOutcome, Status> {
    let started = Instant::now();
    command
        .validate()
        .map_err(|e| Status::invalid_argument(e.0))?;
    let result = node.proposer.propose(command).await;
    metrics::histogram!("tollgate_propose_seconds", "op" => op).record(started.elapsed());
    match result {
        Ok(applied) => match &applied.outcome {
            tollgate_ledger::Outcome::Rejected(rejection) => Err(rejection_status(rejection)),
            _ => Ok(applied),
        },
        Err(ProposeError::NotLeader { .. }) => Err(not_leader(node)),
        Err(ProposeError::Overloaded) => Err(Status::resource_exhausted(
            ProposeError::Overloaded.to_string(),
        )),
        Err(ProposeError::Raft(message)) => Err(Status::unavailable(message)),
    }
}

/// Runs `read` on the ledger once this node is sure it is the leader and has applied every
/// entry committed before the call began (openraft's read index): never a stale answer.
async fn read_linearizable<T>(
    node: &Node,
    read: impl FnOnce(&Applied) -> Result<T, Status>,
) -> Result<T, Status> {
    match node.raft.ensure_linearizable().await {
        Ok(_) => read(&read_applied(&node.applied)),
        Err(openraft::error::RaftError::APIError(
            openraft::error::CheckIsLeaderError::ForwardToLeader(_),
        )) => Err(not_leader(node)),
        Err(error) => Err(Status::unavailable(format!("read barrier: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_ledger::{
        AgentId, Bound, InvalidInput, LimitId, RequestId, ReservationId, TenantId,
    };
    use tonic::Code;

    use super::*;

    /// Every rejection has the status a client relies on, and a message that names what
    /// to look at.
    #[test]
    fn each_rejection_maps_to_its_status() {
        let tenant = TenantId::new("acme").unwrap();
        let agent = AgentId::new("bot").unwrap();
        let reservation = ReservationId(7);
        let request_id = RequestId::new("q-1").unwrap();
        let cases = [
            (
                Rejection::Invalid(InvalidInput("ttl_ms is 0".into())),
                Code::InvalidArgument,
                "ttl_ms",
            ),
            (
                Rejection::UnknownTenant {
                    tenant: tenant.clone(),
                },
                Code::NotFound,
                "`tollgate tenant put acme`",
            ),
            (
                Rejection::UnknownAgent {
                    tenant: tenant.clone(),
                    agent,
                },
                Code::NotFound,
                "no agent bot",
            ),
            (
                Rejection::UnknownLimit {
                    tenant: tenant.clone(),
                    limit: LimitId::new("daily").unwrap(),
                },
                Code::NotFound,
                "`tollgate limit list --tenant acme`",
            ),
            (
                Rejection::UnknownReservation { reservation },
                Code::NotFound,
                "never issued",
            ),
            (
                Rejection::ReservationEnded { reservation },
                Code::NotFound,
                "EXPIRED_RETENTION_MS",
            ),
            (
                Rejection::WrongTenant {
                    reservation,
                    tenant: tenant.clone(),
                },
                Code::PermissionDenied,
                "another tenant",
            ),
            (
                Rejection::ReleaseAfterExpiry {
                    reservation,
                    expired_at_ms: 5,
                    charged: true,
                },
                Code::FailedPrecondition,
                "charge stands",
            ),
            (
                Rejection::AnswerUnreadable {
                    request_id: request_id.clone(),
                },
                Code::FailedPrecondition,
                "q-1",
            ),
            (
                Rejection::bound_reached(Bound::AgentsPerTenant, &tenant),
                Code::ResourceExhausted,
                "AGENTS_PER_TENANT_MAX",
            ),
            (
                Rejection::bound_reached(Bound::Tenants, &tenant),
                Code::ResourceExhausted,
                "the ledger holds TENANTS_MAX",
            ),
            (
                Rejection::RequestIdReused {
                    tenant,
                    request_id,
                    first_at_ms: 5,
                },
                Code::AlreadyExists,
                "reused with a different payload",
            ),
        ];
        for (rejection, code, says) in cases {
            let status = rejection_status(&rejection);
            assert_eq!(status.code(), code, "{rejection:?}");
            assert!(status.message().contains(says), "{status:?}");
        }
    }
}
