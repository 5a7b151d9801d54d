//! `tollgate.v1.Tollgate`: what agent workers call, with their tenant's credentials.

use std::sync::Arc;

use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{self, applied};
use super::{propose, read_linearizable, rejection_status};
use crate::ledger::{Command, DenyReason, Outcome, ReservationId};
use crate::node::Node;

/// Most reservations one ListReservations call returns.
pub const RESERVATIONS_LISTED_MAX: usize = 10_000;

pub struct TollgateService {
    pub node: Arc<Node>,
}

fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!("unexpected ledger outcome {outcome:?}"))
}

/// Counts decisions by operation, outcome and reason: a bounded label set (no tenant).
fn count_decision(op: &'static str, outcome: &Outcome) {
    let (result, reason) = match outcome {
        Outcome::Granted { .. } => ("granted", "none"),
        Outcome::Denied(DenyReason::Limit { .. }) => ("denied", "limit"),
        Outcome::Denied(DenyReason::Frozen { .. }) => ("denied", "frozen"),
        Outcome::Denied(DenyReason::Tripped { .. }) => ("denied", "tripped"),
        Outcome::Committed { overrun: true, .. } => ("committed", "overrun"),
        Outcome::Committed { late: true, .. } => ("committed", "late"),
        Outcome::Committed { .. } => ("committed", "none"),
        Outcome::Released { .. } => ("released", "none"),
        Outcome::Recorded => ("recorded", "none"),
        Outcome::Done => ("done", "none"),
        Outcome::Rejected(_) => ("rejected", "none"),
    };
    metrics::counter!("tollgate_decisions_total", "op" => op, "outcome" => result, "reason" => reason)
        .increment(1);
}

#[tonic::async_trait]
impl pb::tollgate_server::Tollgate for TollgateService {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        self.node.auth.for_tenant(request.metadata(), &tenant)?;
        let request = request.into_inner();
        let command = Command::Reserve {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            agent: convert::agent(&request.agent)?,
            tool: convert::tool(&request.tool)?,
            estimate: convert::amounts(request.estimate, "estimate")?,
            ttl_ms: request.ttl_ms,
            fingerprint: (!request.fingerprint.is_empty()).then_some(request.fingerprint),
        };
        let result = propose(&self.node, command, "reserve").await?;
        count_decision("reserve", &result.outcome);
        let decision = match &result.outcome {
            Outcome::Granted {
                reservation_id,
                expires_at_ms,
                tightest,
            } => pb::reserve_response::Decision::Granted(pb::Granted {
                reservation_id: reservation_id.0,
                expires_at_ms: *expires_at_ms,
                tightest: tightest.as_ref().map(|t| pb::LimitRemaining {
                    limit_id: t.limit_id.to_string(),
                    dimension: convert::dimension_to_pb(t.dimension),
                    remaining: t.remaining,
                }),
            }),
            Outcome::Denied(reason) => convert::denial_to_pb(reason),
            other => return Err(unexpected(other)),
        };
        Ok(Response::new(pb::ReserveResponse {
            decision: Some(decision),
            applied: Some(applied(&result)),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        self.node.auth.for_tenant(request.metadata(), &tenant)?;
        let request = request.into_inner();
        let command = Command::Commit {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            reservation_id: ReservationId(request.reservation_id),
            actual: convert::amounts(request.actual, "actual")?,
        };
        let result = propose(&self.node, command, "commit").await?;
        count_decision("commit", &result.outcome);
        match result.outcome {
            Outcome::Committed { overrun, late, .. } => Ok(Response::new(pb::CommitResponse {
                overrun,
                late,
                applied: Some(applied(&result)),
            })),
            ref other => Err(unexpected(other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        self.node.auth.for_tenant(request.metadata(), &tenant)?;
        let request = request.into_inner();
        let command = Command::Release {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            reservation_id: ReservationId(request.reservation_id),
        };
        let result = propose(&self.node, command, "release").await?;
        count_decision("release", &result.outcome);
        match result.outcome {
            Outcome::Released { .. } => Ok(Response::new(pb::ReleaseResponse {
                applied: Some(applied(&result)),
            })),
            ref other => Err(unexpected(other)),
        }
    }

    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        self.node.auth.for_tenant(request.metadata(), &tenant)?;
        let request = request.into_inner();
        let command = Command::Record {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            agent: convert::agent(&request.agent)?,
            tool: convert::tool(&request.tool)?,
            actual: convert::amounts(request.actual, "actual")?,
        };
        let result = propose(&self.node, command, "record").await?;
        count_decision("record", &result.outcome);
        match result.outcome {
            Outcome::Recorded => Ok(Response::new(pb::RecordResponse {
                applied: Some(applied(&result)),
            })),
            ref other => Err(unexpected(other)),
        }
    }

    async fn get_usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        self.node.auth.for_tenant(request.metadata(), &tenant)?;
        let request = request.into_inner();
        let agent = convert::optional_agent(&request.agent)?;
        let tool = convert::optional_tool(&request.tool)?;
        let response = read_linearizable(&self.node, |applied| {
            let ledger = &applied.ledger;
            let usage = ledger
                .usage(&tenant, agent.as_ref(), tool.as_ref())
                .map_err(|r| rejection_status(&r))?;
            let mut response = pb::UsageResponse {
                usage: usage.iter().map(convert::usage_to_pb).collect(),
                ..Default::default()
            };
            // The tenant exists (usage answered); an agent that never called has no status
            // of its own yet: not frozen, not tripped.
            if let Some(Ok(status)) = agent.as_ref().map(|a| ledger.agent_status(&tenant, a)) {
                response.agent_frozen = status.frozen;
                response.agent_tripped = status.tripped.map(|(cause, until_ms)| pb::Tripped {
                    cause: Some(convert::trip_cause_to_pb(&cause)),
                    until_ms,
                });
            }
            Ok(response)
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        self.node.auth.for_tenant(request.metadata(), &tenant)?;
        let request = request.into_inner();
        let agent = convert::optional_agent(&request.agent)?;
        let limit = match request.limit {
            0 => RESERVATIONS_LISTED_MAX,
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(RESERVATIONS_LISTED_MAX),
        };
        let reservations = read_linearizable(&self.node, |applied| {
            applied
                .ledger
                .reservations(&tenant, agent.as_ref(), limit)
                .map_err(|r| rejection_status(&r))
        })
        .await?;
        Ok(Response::new(pb::ListReservationsResponse {
            reservations: reservations
                .iter()
                .map(convert::reservation_to_pb)
                .collect(),
        }))
    }
}
