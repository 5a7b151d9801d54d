//! What every service does with the ledger: propose a command, or read after the read
//! index, and turn what came back into a gRPC status. The one place a ledger rejection
//! becomes a status.

use std::time::Instant;

use tonic::Status;

use crate::auth::Caller;
use crate::node::Node;
use crate::raft::proposer::{AppliedOutcome, ProposeError};
use crate::raft::state_machine::{read_applied, Applied};
use tollgate_ledger::{Command, Rejection};

/// UNAVAILABLE, with the leader's address in the `tollgate-leader` metadata when known, so a
/// client can go straight there.
pub(super) fn not_leader(node: &Node) -> Status {
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
        | Rejection::ReservationEnded { .. }
        | Rejection::UnknownKey { .. }
        | Rejection::UnknownPrice { .. } => Status::not_found(message),
        Rejection::ReleaseAfterExpiry { .. }
        | Rejection::Unpriced { .. }
        | Rejection::AnswerUnreadable { .. }
        | Rejection::KeyRevoked { .. } => Status::failed_precondition(message),
        Rejection::BoundReached { .. } => Status::resource_exhausted(message),
        Rejection::RequestIdReused { .. } | Rejection::KeyIdTaken { .. } => {
            Status::already_exists(message)
        }
    }
}

/// Validates, proposes and waits for the command to be applied. Bad input never reaches the
/// log; a rejection by the ledger comes back as its status.
pub(super) async fn propose(
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
        Err(ProposeError::QuotaReached(rejection)) => Err(rejection_status(&rejection)),
        Err(ProposeError::Raft(message)) => Err(Status::unavailable(message)),
    }
}

/// Runs `read` on the ledger once this node is sure it is the leader and has applied every
/// entry committed before the call began (openraft's read index): never a stale answer.
/// The caller's key is checked again after the barrier, so a read that began before a
/// revocation or rotation returned is refused once it has been applied.
pub(super) async fn read_linearizable<T>(
    node: &Node,
    caller: &Caller,
    read: impl FnOnce(&Applied) -> Result<T, Status>,
) -> Result<T, Status> {
    match node.raft.ensure_linearizable().await {
        Ok(_) => {
            let applied = read_applied(&node.applied);
            caller.still_valid(&applied.ledger)?;
            read(&applied)
        }
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
                Rejection::quota_reached(Bound::AnswersPerTenant, 20, &tenant),
                Code::ResourceExhausted,
                "--quota-answers",
            ),
            (
                Rejection::quota_reached(Bound::ProposalsQueuedPerTenant, 9, &tenant),
                Code::ResourceExhausted,
                "PROPOSALS_QUEUED_PER_TENANT_MAX",
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
