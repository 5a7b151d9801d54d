//! `tollgate.v1.Tollgate`: what agent workers call, with their tenant's credentials.
//!
//! Each mutating operation (reserve, commit, release, record, lease, settle) is one function
//! here: convert, authorise for the operation's tenant, propose, and map the outcome to the
//! response or a status. The first four are shared by their unary RPC and by `Batch`, which
//! runs them concurrently so its operations land in the same Raft entries, and answers each
//! on its own.

use std::future::Future;
use std::sync::Arc;

use futures::future::join_all;
use tollgate_proto::v1 as pb;
use tollgate_proto::{BATCH_OPS_MAX, LEADER_METADATA_KEY};
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use super::call::{propose, read_linearizable, rejection_status};
use super::convert::{self, applied};
use crate::auth::Caller;
use crate::node::Node;
use crate::raft::state_machine::read_applied;
use crate::traces;
use tollgate_ledger::{Amounts, Command, DenyReason, LeaseRefusal, Outcome, ReservationId};
/// Most reservations one ListReservations call returns.
pub const RESERVATIONS_LISTED_MAX: usize = 10_000;

pub struct TollgateService {
    pub node: Arc<Node>,
}

fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!("unexpected ledger outcome {outcome:?}"))
}

/// Counts decisions by operation, outcome and reason, and denials by limit: bounded label
/// sets (no tenant). The current RPC's span, when traces are on, records the same outcome
/// and reason.
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
        Outcome::Recorded { .. } => ("recorded", "none"),
        Outcome::Done => ("done", "none"),
        Outcome::Rejected(_) => ("rejected", "none"),
        Outcome::Leased(_) => ("leased", "none"),
        Outcome::LeaseRefused(refusal) => ("lease_refused", lease_refusal_reason(*refusal)),
        Outcome::Settled { .. } => ("settled", settled_reason(outcome)),
    };
    traces::record_decision(result, reason);
    metrics::counter!("tollgate_decisions_total", "op" => op, "outcome" => result, "reason" => reason)
        .increment(1);
    match outcome {
        Outcome::Denied(reason) => crate::metrics::count_denial(reason),
        Outcome::Settled { charged_calls, .. } => {
            metrics::counter!("tollgate_lease_calls_charged_total")
                .increment(u64::from(*charged_calls));
        }
        _ => {}
    }
}

fn lease_refusal_reason(refusal: LeaseRefusal) -> &'static str {
    match refusal {
        LeaseRefusal::Off => "off",
        LeaseRefusal::Frozen => "frozen",
        LeaseRefusal::Tripped => "tripped",
        LeaseRefusal::Room => "room",
    }
}

/// How a settle left its lease: renewed, or ended by expiry, a recall or its holder.
fn settled_reason(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Settled { expired: true, .. } => "expired",
        Outcome::Settled { recalled: true, .. } => "recalled",
        Outcome::Settled { lease: Some(_), .. } => "renewed",
        _ => "ended",
    }
}

/// Validates the batch as a whole: at least one operation, at most [`BATCH_OPS_MAX`].
fn check_batch_len(ops: usize) -> Result<(), Status> {
    if ops == 0 {
        return Err(convert::invalid("batch has no operations"));
    }
    if ops > BATCH_OPS_MAX {
        return Err(convert::invalid(format!(
            "batch has {ops} operations, more than BATCH_OPS_MAX ({BATCH_OPS_MAX}); nothing was done"
        )));
    }
    Ok(())
}

async fn reserve(
    node: &Node,
    caller: &Caller,
    request: pb::ReserveRequest,
) -> Result<pb::ReserveResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    let agent = convert::agent(&request.agent)?;
    caller.for_worker(&tenant, Some(&agent))?;
    let usage = convert::usage(request.usage)?;
    let command = Command::Reserve {
        request_id: convert::request_id(&request.request_id)?,
        tenant,
        agent,
        tool: convert::tool(&request.tool)?,
        estimate: convert::spent(request.estimate, &usage, "estimate")?,
        ttl_ms: request.ttl_ms,
        fingerprint: (!request.fingerprint.is_empty()).then_some(request.fingerprint),
        shape: (!request.shape.is_empty()).then_some(request.shape),
        usage,
        session: convert::optional_session(&request.session)?,
    };
    let result = propose(node, command, "reserve").await?;
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
    Ok(pb::ReserveResponse {
        decision: Some(decision),
        applied: Some(applied(&result)),
    })
}

async fn commit(
    node: &Node,
    caller: &Caller,
    request: pb::CommitRequest,
) -> Result<pb::CommitResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    caller.for_worker(&tenant, None)?;
    check_reservation_agent(node, caller, &tenant, request.reservation_id)?;
    let usage = convert::usage(request.usage)?;
    let actual = if request.abandoned && request.actual.is_none() {
        // The ledger charges the reservation's estimate; there is no actual to read.
        Amounts::default()
    } else {
        convert::spent(request.actual, &usage, "actual")?
    };
    let command = Command::Commit {
        request_id: convert::request_id(&request.request_id)?,
        tenant,
        reservation_id: ReservationId(request.reservation_id),
        actual,
        usage,
        abandoned: request.abandoned,
    };
    let result = propose(node, command, "commit").await?;
    count_decision("commit", &result.outcome);
    match result.outcome {
        Outcome::Committed {
            overrun,
            late,
            cost_micros,
            ..
        } => Ok(pb::CommitResponse {
            overrun,
            late,
            cost_micros,
            applied: Some(applied(&result)),
        }),
        ref other => Err(unexpected(other)),
    }
}

async fn release(
    node: &Node,
    caller: &Caller,
    request: pb::ReleaseRequest,
) -> Result<pb::ReleaseResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    caller.for_worker(&tenant, None)?;
    check_reservation_agent(node, caller, &tenant, request.reservation_id)?;
    let command = Command::Release {
        request_id: convert::request_id(&request.request_id)?,
        tenant,
        reservation_id: ReservationId(request.reservation_id),
    };
    let result = propose(node, command, "release").await?;
    count_decision("release", &result.outcome);
    match result.outcome {
        Outcome::Released { .. } => Ok(pb::ReleaseResponse {
            applied: Some(applied(&result)),
        }),
        ref other => Err(unexpected(other)),
    }
}

async fn record(
    node: &Node,
    caller: &Caller,
    request: pb::RecordRequest,
) -> Result<pb::RecordResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    let agent = convert::agent(&request.agent)?;
    caller.for_worker(&tenant, Some(&agent))?;
    let usage = convert::usage(request.usage)?;
    let command = Command::Record {
        request_id: convert::request_id(&request.request_id)?,
        tenant,
        agent,
        tool: convert::tool(&request.tool)?,
        actual: convert::spent(request.actual, &usage, "actual")?,
        usage,
        offline: request.offline,
        session: convert::optional_session(&request.session)?,
    };
    let result = propose(node, command, "record").await?;
    count_decision("record", &result.outcome);
    match result.outcome {
        Outcome::Recorded { cost_micros } => Ok(pb::RecordResponse {
            cost_micros,
            applied: Some(applied(&result)),
        }),
        ref other => Err(unexpected(other)),
    }
}

/// A lease ask: for the caller's tenant, and for one of its agents if the key is limited to
/// some (such a key is refused OFF for now). A refusal is an answer (`refused`), not an
/// error.
async fn lease(
    node: &Node,
    caller: &Caller,
    request: pb::LeaseRequest,
) -> Result<pb::LeaseResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    let agent = convert::agent(&request.agent)?;
    caller.for_worker(&tenant, Some(&agent))?;
    let ttl_ms = request.ttl_ms;
    let command = convert::lease(request)?;
    if caller.agent_limited() {
        // Such a key could not settle the lease (see `settle`): it goes per call, where
        // every call is checked against its agents.
        let refused = Outcome::LeaseRefused(LeaseRefusal::Off);
        count_decision("lease", &refused);
        return Ok(pb::LeaseResponse {
            decision: Some(pb::lease_response::Decision::Refused(
                pb::LeaseRefusal::Off.into(),
            )),
            applied: None,
        });
    }
    let result = propose(node, command, "lease").await?;
    count_decision("lease", &result.outcome);
    let decision = match &result.outcome {
        Outcome::Leased(terms) => {
            pb::lease_response::Decision::Granted(convert::lease_terms_to_pb(terms, ttl_ms))
        }
        Outcome::LeaseRefused(refusal) => {
            pb::lease_response::Decision::Refused(convert::lease_refusal_to_pb(*refusal).into())
        }
        other => return Err(unexpected(other)),
    };
    Ok(pb::LeaseResponse {
        decision: Some(decision),
        applied: Some(applied(&result)),
    })
}

/// A settle: charges the calls reported and renews, resizes or ends the lease.
async fn settle(
    node: &Node,
    caller: &Caller,
    request: pb::SettleRequest,
) -> Result<pb::SettleResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    caller.for_worker(&tenant, None)?;
    if caller.agent_limited() {
        // The ledger does not tell which agent holds a lease, so such a key could settle
        // (and end, or charge) another agent's; it is never granted one (see `lease`).
        return Err(Status::permission_denied(
            "a key limited to agents holds no leases (its lease asks are refused OFF); \
             reserve per call, or settle with a key for the whole tenant",
        ));
    }
    let ttl_ms = request.ttl_ms;
    let command = convert::settle(request)?;
    let result = propose(node, command, "settle").await?;
    count_decision("settle", &result.outcome);
    match &result.outcome {
        Outcome::Settled {
            lease,
            recalled,
            expired,
            charged_calls,
        } => Ok(pb::SettleResponse {
            lease: lease
                .as_ref()
                .map(|terms| convert::lease_terms_to_pb(terms, ttl_ms)),
            recalled: *recalled,
            expired: *expired,
            charged_calls: *charged_calls,
            applied: Some(applied(&result)),
        }),
        other => Err(unexpected(other)),
    }
}

/// An agent-limited key may commit or release only its agents' reservations. A reservation
/// this node does not know is left to the ledger, which answers as for any unknown id.
fn check_reservation_agent(
    node: &Node,
    caller: &Caller,
    tenant: &tollgate_ledger::TenantId,
    reservation_id: u64,
) -> Result<(), Status> {
    if !caller.agent_limited() {
        return Ok(());
    }
    let holder = read_applied(&node.applied)
        .ledger
        .reservation_agent(tenant, ReservationId(reservation_id));
    match holder {
        Some(agent) if !caller.allows_agent(&agent) => Err(Status::permission_denied(
            "this key cannot act for a reservation held by an agent it is not limited to",
        )),
        _ => Ok(()),
    }
}

/// One operation of a batch, answered exactly as its unary call would be; its failure is its
/// own result, never the batch's.
async fn batch_op(node: &Node, caller: &Caller, op: pb::BatchOp) -> pb::BatchResult {
    use pb::batch_op::Op;
    use pb::batch_result::Result as Answer;
    let answer = match op.op {
        Some(Op::Reserve(request)) => {
            let span = op_span("reserve", &reserve_names(&request));
            traced(span, reserve(node, caller, request))
                .await
                .map(Answer::Reserve)
        }
        Some(Op::Commit(request)) => {
            let span = op_span("commit", &commit_names(&request));
            traced(span, commit(node, caller, request))
                .await
                .map(Answer::Commit)
        }
        Some(Op::Release(request)) => {
            let span = op_span("release", &release_names(&request));
            traced(span, release(node, caller, request))
                .await
                .map(Answer::Release)
        }
        Some(Op::Record(request)) => {
            let span = op_span("record", &record_names(&request));
            traced(span, record(node, caller, request))
                .await
                .map(Answer::Record)
        }
        None => Err(convert::invalid(
            "batch operation is empty: expected one of reserve, commit, release, record",
        )),
    };
    pb::BatchResult {
        result: Some(answer.unwrap_or_else(|status| Answer::Error(batch_error(&status)))),
    }
}

/// A status as one operation's error, keeping the leader hint of a not-leader status.
fn batch_error(status: &Status) -> pb::BatchError {
    pb::BatchError {
        code: status.code().into(),
        message: status.message().to_owned(),
        leader: status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|leader| leader.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Every operation is started before any is awaited, so all of them reach the proposer's
/// queue together and share its next entries.
async fn batch(
    node: &Node,
    caller: &Caller,
    request: pb::BatchRequest,
) -> Result<pb::BatchResponse, Status> {
    check_batch_len(request.ops.len())?;
    metrics::histogram!("tollgate_batch_operations").record(request.ops.len() as f64);
    let results = join_all(request.ops.into_iter().map(|op| batch_op(node, caller, op))).await;
    debug_assert!(results.len() <= BATCH_OPS_MAX);
    Ok(pb::BatchResponse { results })
}

async fn get_usage(
    node: &Node,
    caller: &Caller,
    request: pb::UsageRequest,
) -> Result<pb::UsageResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    let agent = convert::optional_agent(&request.agent)?;
    caller.for_reader(&tenant, agent.as_ref())?;
    let tool = convert::optional_tool(&request.tool)?;
    let session = convert::optional_session(&request.session)?;
    read_linearizable(node, caller, |applied| {
        let ledger = &applied.ledger;
        let mut usage = ledger
            .usage(&tenant, agent.as_ref(), tool.as_ref())
            .map_err(|r| rejection_status(&r))?;
        if let Some(session) = &session {
            let rows = ledger.session_usage(&tenant, session);
            usage.extend(rows.map_err(|r| rejection_status(&r))?);
        }
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
    .await
}

async fn list_reservations(
    node: &Node,
    caller: &Caller,
    request: pb::ListReservationsRequest,
) -> Result<pb::ListReservationsResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    let agent = convert::optional_agent(&request.agent)?;
    caller.for_reader(&tenant, agent.as_ref())?;
    let limit = match request.limit {
        0 => RESERVATIONS_LISTED_MAX,
        n => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(RESERVATIONS_LISTED_MAX),
    };
    let reservations = read_linearizable(node, caller, |applied| {
        applied
            .ledger
            .reservations(&tenant, agent.as_ref(), limit)
            .map_err(|r| rejection_status(&r))
    })
    .await?;
    Ok(pb::ListReservationsResponse {
        reservations: reservations
            .iter()
            .map(convert::reservation_to_pb)
            .collect(),
    })
}

/// Runs one RPC's (or batch operation's) work inside `span`, and records a refusal on it.
/// With traces off the span is disabled and the work runs as it is.
async fn traced<T>(span: Span, work: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    if span.is_disabled() {
        return work.await;
    }
    let result = work.instrument(span.clone()).await;
    if let Err(status) = &result {
        traces::record_status(&span, status);
    }
    result
}

/// A span's attributes: the names a request carries, as the client sent them.
type Names<'a, const N: usize> = [(&'static str, &'a str); N];

fn reserve_names(request: &pb::ReserveRequest) -> Names<'_, 4> {
    [
        ("tollgate.tenant", &request.tenant),
        ("tollgate.agent", &request.agent),
        ("tollgate.tool", &request.tool),
        ("tollgate.request_id", &request.request_id),
    ]
}

fn record_names(request: &pb::RecordRequest) -> Names<'_, 4> {
    [
        ("tollgate.tenant", &request.tenant),
        ("tollgate.agent", &request.agent),
        ("tollgate.tool", &request.tool),
        ("tollgate.request_id", &request.request_id),
    ]
}

fn commit_names(request: &pb::CommitRequest) -> Names<'_, 2> {
    [
        ("tollgate.tenant", &request.tenant),
        ("tollgate.request_id", &request.request_id),
    ]
}

fn release_names(request: &pb::ReleaseRequest) -> Names<'_, 2> {
    [
        ("tollgate.tenant", &request.tenant),
        ("tollgate.request_id", &request.request_id),
    ]
}

fn lease_names(request: &pb::LeaseRequest) -> Names<'_, 4> {
    [
        ("tollgate.tenant", &request.tenant),
        ("tollgate.agent", &request.agent),
        ("tollgate.tool", &request.tool),
        ("tollgate.request_id", &request.request_id),
    ]
}

fn settle_names(request: &pb::SettleRequest) -> Names<'_, 2> {
    [
        ("tollgate.tenant", &request.tenant),
        ("tollgate.request_id", &request.request_id),
    ]
}

/// A batch operation's span, described by its request's names.
fn op_span(op: &'static str, names: &[(&'static str, &str)]) -> Span {
    let span = traces::batch_op_span(op);
    traces::describe(&span, names);
    span
}

impl TollgateService {
    /// The span of an RPC of this service, described by `names`.
    fn span<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        names: &[(&'static str, &str)],
    ) -> Span {
        let span = traces::rpc_span(method, request.metadata(), self.node.id);
        traces::describe(&span, names);
        span
    }
}

#[tonic::async_trait]
impl pb::tollgate_server::Tollgate for TollgateService {
    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let span = self.span(
            "tollgate.v1.Tollgate/Lease",
            &request,
            &lease_names(request.get_ref()),
        );
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            lease(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        let span = self.span(
            "tollgate.v1.Tollgate/Settle",
            &request,
            &settle_names(request.get_ref()),
        );
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            settle(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let span = self.span(
            "tollgate.v1.Tollgate/Reserve",
            &request,
            &reserve_names(request.get_ref()),
        );
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            reserve(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let span = self.span(
            "tollgate.v1.Tollgate/Commit",
            &request,
            &commit_names(request.get_ref()),
        );
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            commit(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let span = self.span(
            "tollgate.v1.Tollgate/Release",
            &request,
            &release_names(request.get_ref()),
        );
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            release(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let span = self.span(
            "tollgate.v1.Tollgate/Record",
            &request,
            &record_names(request.get_ref()),
        );
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            record(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let span = self.span("tollgate.v1.Tollgate/Batch", &request, &[]);
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            batch(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn get_usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let names = [
            ("tollgate.tenant", request.get_ref().tenant.as_str()),
            ("tollgate.agent", &request.get_ref().agent),
            ("tollgate.tool", &request.get_ref().tool),
        ];
        let span = self.span("tollgate.v1.Tollgate/GetUsage", &request, &names);
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            get_usage(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let names = [
            ("tollgate.tenant", request.get_ref().tenant.as_str()),
            ("tollgate.agent", &request.get_ref().agent),
        ];
        let span = self.span("tollgate.v1.Tollgate/ListReservations", &request, &names);
        traced(span, async move {
            let caller = Caller::of(&request)?.clone();
            list_reservations(&self.node, &caller, request.into_inner()).await
        })
        .await
        .map(Response::new)
    }
}
