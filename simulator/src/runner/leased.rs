//! Agents of a tenant that lends leases: their calls go through the client's own
//! `reserve`, which decides a call inside a lease when it can and reserves it per call
//! otherwise, so the history records what the client decided, where it decided it.

use tollgate_client::{Amounts, Error, ReserveRequest};

use super::{error_result, lock, note_denial, CallNote, CallOutcome, Io, ReserveCall, Worker};
use crate::history::{Event, Op, OpResult};
use crate::scenario::AgentSpec;

/// One call of a leased agent: reserve, then at once commit `actual_pct` of the estimate
/// (or die mid-call, leaving the guard to settle at its estimate). Returns whether it was
/// granted.
pub(super) async fn call(
    io: &Io,
    spec: &AgentSpec,
    worker: &mut Worker,
    call: ReserveCall,
    notes: &std::sync::Mutex<Vec<CallNote>>,
) -> bool {
    let invoked_ms = io.clock.now_ms();
    let request = reserve_request(io, spec, worker, &call);
    let answer = io
        .client
        .reserve_with_call_id(call.request_id.clone(), request)
        .await;
    let completed_ms = io.clock.now_ms().max(invoked_ms);
    let (result, outcome) = match &answer {
        Ok(reservation) => (granted(reservation), CallOutcome::Granted),
        Err(error) => denied(error),
    };
    io.recorder.record(Event {
        client: worker.id,
        request_id: call.request_id.clone(),
        op: call.op.clone(),
        invoked_ms,
        completed_ms,
        result,
    });
    lock(notes).push(CallNote {
        agent: worker.name.clone(),
        role: worker.role,
        fingerprint: call.fingerprint.clone(),
        request_id: call.request_id.clone(),
        invoked_ms,
        outcome,
    });
    let Ok(reservation) = answer else {
        note_denial(spec, worker);
        return false;
    };
    worker.denials_in_row = 0;
    if spec.die_pct > 0 && rand::Rng::random_range(&mut worker.rng, 0..100) < spec.die_pct {
        // The worker dies mid-call: its guard settles at the estimate, flagged abandoned.
        drop(reservation);
        return true;
    }
    commit(io, spec, worker, reservation, call.estimate).await;
    true
}

fn reserve_request(
    io: &Io,
    spec: &AgentSpec,
    worker: &Worker,
    call: &ReserveCall,
) -> ReserveRequest {
    let mut request = ReserveRequest::new(
        io.tenant(&spec.tenant),
        worker.name.clone(),
        spec.tool.clone(),
    )
    .estimate(call.estimate)
    .ttl(std::time::Duration::from_millis(spec.ttl_ms));
    if let Some(fingerprint) = &call.fingerprint {
        request = request.fingerprint(fingerprint.clone());
    }
    request
}

fn granted(reservation: &tollgate_client::Reservation) -> OpResult {
    let info = reservation.info();
    match (info.lease_id, info.reservation_id) {
        (Some(lease_id), _) => OpResult::Local { lease_id },
        (None, reservation_id) => OpResult::Granted {
            reservation_id: reservation_id.unwrap_or_default(),
            log_index: reservation.applied().map_or(0, |a| a.log_index),
        },
    }
}

/// A refused reserve as the history and the simulator see it. The client's error carries
/// no log index (0: unknown), so the checker matches it by request id alone.
fn denied(error: &Error) -> (OpResult, CallOutcome) {
    let denied = |reason: &str, outcome| {
        let result = OpResult::Denied {
            reason: reason.into(),
            log_index: 0,
        };
        (result, outcome)
    };
    match error {
        Error::Denied { limit_id, .. } => denied(
            &format!("limit {limit_id}"),
            CallOutcome::DeniedByLimit(limit_id.clone()),
        ),
        Error::Frozen { .. } => denied("frozen", CallOutcome::Frozen),
        Error::Tripped { .. } => denied("tripped", CallOutcome::Tripped),
        other => (error_result(other), CallOutcome::Failed(other.to_string())),
    }
}

async fn commit(
    io: &Io,
    spec: &AgentSpec,
    worker: &mut Worker,
    reservation: tollgate_client::Reservation,
    estimate: Amounts,
) {
    let scale = |v: u64| v.saturating_mul(spec.actual_pct) / 100;
    let actual = Amounts::new(
        scale(estimate.tokens),
        scale(estimate.cost_micros),
        estimate.calls,
    );
    let request_id = super::new_request_id(&mut worker.rng);
    let info = reservation.info();
    let invoked_ms = io.clock.now_ms();
    let answer = reservation.commit_with_id(request_id.clone(), actual).await;
    let result = match (&answer, info.lease_id) {
        (Ok(_), Some(lease_id)) => OpResult::Local { lease_id },
        (Ok(committed), None) => OpResult::Done {
            log_index: committed.applied.map_or(0, |a| a.log_index),
        },
        (Err(error), _) => error_result(error),
    };
    io.recorder.record(Event {
        client: worker.id,
        request_id,
        op: Op::Commit {
            tenant: spec.tenant.clone(),
            reservation_id: info.lease_id.or(info.reservation_id).unwrap_or_default(),
            tokens: actual.tokens,
            cost_micros: actual.cost_micros,
            calls: actual.calls,
        },
        invoked_ms,
        completed_ms: io.clock.now_ms().max(invoked_ms),
        result,
    });
}
