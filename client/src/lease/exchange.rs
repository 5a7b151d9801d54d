//! The network side of leases: the reserve path that grants from a slot, the Lease ask,
//! the Settle exchange, the background task that settles every slot in time, and
//! `Client::return_leases`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tollgate_proto::v1;
use tollgate_proto::v1::lease_response::Decision;
use tonic::{Code, Response};

use super::{
    fingerprint_key, scale, settle_wire, Completed, Due, Grant, Lane, LeaseBook, Slot, TaskClaim,
    LEASE_ASK_INTERVAL, LEASE_OFF_MEMORY,
};
use crate::client::{Client, Shared};
use crate::error::Error;
use crate::reservation::Reservation;
use crate::types::{new_request_id, Amounts, ReserveRequest};

/// Shortest pause between two rounds of the background task, so a slot whose settle keeps
/// failing is retried at this pace rather than in a busy loop.
const TASK_ROUND_MIN: Duration = Duration::from_millis(5);
/// Longest pause between two rounds: how soon the task notices its client is gone.
const TASK_ROUND_MAX: Duration = Duration::from_secs(1);

/// How the lease path ended for one reserve.
pub(crate) enum Leased {
    /// Granted from the slot's lease.
    Granted(Reservation),
    /// Reserve this call per call.
    PerCall(ReserveRequest),
    /// The cluster could not be reached to ask for a lease: what a per-call reserve
    /// would have met too, without spending the deadline twice.
    Unavailable(ReserveRequest, String),
}

/// Most grant decisions one reserve makes before it goes per call (each after waiting for
/// an exchange).
const GRANT_TRIES_MAX: u32 = 8;

/// How waiting for the lane ended.
enum Waited {
    /// This caller asked or settled.
    Own,
    /// Another exchange was answered meanwhile (or the lease ended): decide again.
    Other,
    /// The lease's deadline passed first.
    TimedOut,
}

/// What a caller waits on the lane for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Exchange {
    Ask,
    Settle,
}

impl Client {
    /// The lease path of `reserve`: a local grant when the slot of (tenant, agent, tool)
    /// can give one, after asking for a lease or settling when that can help.
    pub(crate) async fn reserve_leased(&self, request: ReserveRequest, request_id: &str) -> Leased {
        let book = &self.shared.leases;
        let now = Instant::now();
        let key = (&*request.tenant, &*request.agent, &*request.tool);
        let Some(slot) = book.slot(key, self.auth(), now) else {
            return Leased::PerCall(request);
        };
        self.ensure_lease_task();
        let fingerprint = request.fingerprint.as_deref().map(fingerprint_key);
        // One exchange of its own at most; exchanges of others it waited for (a background
        // settle) do not count, up to a bound.
        let mut own = false;
        let mut now = now;
        for _ in 0..GRANT_TRIES_MAX {
            let (decision, seen, wake) = {
                let mut state = slot.state();
                let decision = state.grant(request.estimate, fingerprint, now);
                (decision, state.exchanges(), state.wants_settle())
            };
            if wake {
                book.wake.notify_one();
            }
            let exchange = match decision {
                Grant::Granted {
                    lease_id,
                    expires_at_ms,
                } => {
                    return Leased::Granted(Reservation::leased(
                        self.clone(),
                        (request, request_id.to_owned()),
                        (lease_id, expires_at_ms),
                        slot,
                    ))
                }
                Grant::PerCall => return Leased::PerCall(request),
                Grant::SettleThenPerCall => {
                    // The cluster must have seen the earlier repetitions before this one.
                    let settle = self.exchange(&slot, seen, Exchange::Settle, request.estimate);
                    let _ = Box::pin(settle).await;
                    return Leased::PerCall(request);
                }
                _ if own => return Leased::PerCall(request),
                Grant::Ask => Exchange::Ask,
                Grant::Settle => Exchange::Settle,
            };
            // Boxed: the exchange's future is large, and a local grant should not move it.
            let waited = Box::pin(self.exchange(&slot, seen, exchange, request.estimate));
            let waited = waited.await;
            now = Instant::now();
            match waited {
                Ok(Waited::Own) => own = true,
                Ok(Waited::Other) => {}
                Ok(Waited::TimedOut) => return Leased::PerCall(request),
                Err(reason) => return Leased::Unavailable(request, reason),
            }
        }
        Leased::PerCall(request)
    }

    /// Waits for the slot's lane (bounded by the lease's deadline) and, unless another
    /// exchange was answered meanwhile, asks for a lease or settles; says which. `Err` only
    /// when a lease ask could not reach the cluster.
    async fn exchange(
        &self,
        slot: &Arc<Slot>,
        seen: u64,
        exchange: Exchange,
        estimate: Amounts,
    ) -> Result<Waited, String> {
        let bound = slot
            .state()
            .deadline()
            .unwrap_or_else(|| Instant::now() + self.shared.config.deadline);
        let Ok(mut lane) = timeout_at(bound, Arc::clone(&slot.lane).lock_owned()).await else {
            return Ok(Waited::TimedOut);
        };
        let has_lease = {
            let state = slot.state();
            if state.exchanges() != seen {
                return Ok(Waited::Other);
            }
            state.has_lease()
        };
        match (exchange, has_lease) {
            (Exchange::Ask, false) => self.ask(slot, estimate).await.map(|()| Waited::Own),
            (_, true) => {
                self.settle_slot(slot, &mut lane, false).await;
                Ok(Waited::Own)
            }
            // The lease ended while this call waited: it asks anew next.
            (Exchange::Settle, false) => Ok(Waited::Other),
        }
    }

    /// Asks the cluster for a lease on the slot's key and applies the answer.
    async fn ask(&self, slot: &Slot, estimate: Amounts) -> Result<(), String> {
        let wire = v1::LeaseRequest {
            request_id: new_request_id(),
            tenant: slot.tenant.clone(),
            agent: slot.agent.clone(),
            tool: slot.tool.clone(),
            want: Some(super::clamp_amounts(scale(estimate, 8, 1)).into()),
            units: self.shared.config.lease_units,
            floor: Some(estimate.into()),
            ttl_ms: 0,
        };
        let sent = Instant::now();
        let answer = self
            .call(|rpc| {
                let wire = wire.clone();
                async move {
                    match rpc.tollgate().lease(wire).await {
                        // A cluster without leases: as if the tenant had them off.
                        Err(status) if status.code() == Code::Unimplemented => {
                            Ok(Response::new(v1::LeaseResponse {
                                decision: Some(Decision::Refused(v1::LeaseRefusal::Off.into())),
                                applied: None,
                            }))
                        }
                        other => other,
                    }
                }
            })
            .await;
        let now = Instant::now();
        match answer.map(|response| response.decision) {
            Ok(Some(Decision::Granted(terms))) => {
                slot.state().leased(terms.into(), sent, now);
                Ok(())
            }
            Ok(Some(Decision::Refused(refusal))) if refusal == i32::from(v1::LeaseRefusal::Off) => {
                slot.state().refused(now + LEASE_OFF_MEMORY);
                self.shared
                    .leases
                    .tenant_off(&slot.tenant, now + LEASE_OFF_MEMORY, now);
                Ok(())
            }
            Ok(_) => {
                slot.state().refused(now + LEASE_ASK_INTERVAL);
                Ok(())
            }
            Err(Error::Unavailable { reason }) => {
                slot.state().refused(now + LEASE_ASK_INTERVAL);
                Err(reason)
            }
            Err(error) => {
                // The per-call reserve meets the same cause and reports it.
                tracing::debug!(%error, tenant = %slot.tenant, "lease ask failed; reserving per call");
                slot.state().refused(now + LEASE_ASK_INTERVAL);
                Ok(())
            }
        }
    }

    /// Sends the slot's report (or resends the unanswered one, same request id) and applies
    /// the answer; `returning` gives the lease back. Retries until the lease's local
    /// deadline; past it the slot stops granting (the cluster charges the slice at expiry).
    async fn settle_slot(&self, slot: &Slot, lane: &mut Lane, returning: bool) {
        let (wire, sent) = match lane.pending.take() {
            Some(pending) => pending,
            None => {
                let now = Instant::now();
                let Some(report) = slot.state().take_report(returning, now) else {
                    return;
                };
                let units = if returning {
                    0
                } else {
                    self.shared.config.lease_units
                };
                (settle_wire(slot, report, units), now)
            }
        };
        // Kept before sending: a caller cancelled mid-settle leaves it to be resent.
        let (wire, sent) = &*lane.pending.insert((wire, sent));
        let sent = *sent;
        let deadline = slot.state().deadline().unwrap_or(sent);
        let bound = deadline.max(Instant::now() + self.shared.config.attempt_timeout);
        let (lease_id, calls) = (wire.lease_id, wire.calls.len());
        let answer = timeout_at(
            bound,
            self.call(|rpc| {
                let wire = wire.clone();
                async move { rpc.tollgate().settle(wire).await }
            }),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable {
                reason: "the lease's deadline passed".into(),
            })
        });
        let orphans = match answer {
            Ok(answer) => {
                lane.pending = None;
                if answer.expired {
                    tracing::warn!(tenant = %slot.tenant, lease_id, "lease expired before its settle; the cluster charged its whole slice");
                }
                slot.state().settled(&answer, sent, Instant::now())
            }
            Err(Error::Unavailable { reason }) if Instant::now() < deadline => {
                tracing::debug!(%reason, tenant = %slot.tenant, "settle not answered; will resend");
                return;
            }
            Err(error) => {
                // Past the deadline the cluster charges the slice at expiry; any other error
                // says the lease is not there to settle. Either way it is over here.
                lane.pending = None;
                let expired = matches!(error, Error::Unavailable { .. });
                tracing::warn!(%error, tenant = %slot.tenant, lease_id, calls, "settling a lease failed; it stops granting");
                slot.state().end(expired)
            }
        };
        self.record_orphans(slot, orphans);
    }

    /// Reports calls whose lease ended before they could be settled inside it, as Records
    /// (always charged), each with its own request id.
    pub(crate) fn record_orphans(&self, slot: &Slot, calls: Vec<v1::LeaseCall>) {
        if calls.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(tenant = %slot.tenant, calls = calls.len(), "calls of an ended lease cannot be reported outside a runtime");
            return;
        };
        let client = self.clone();
        let key = (slot.tenant.clone(), slot.agent.clone(), slot.tool.clone());
        runtime.spawn(async move {
            let (tenant, agent, tool) = &key;
            for call in calls {
                let actual = call.actual.map(Amounts::from).unwrap_or_default();
                let id = call.request_id;
                if let Err(error) = client.record_with_id(id, tenant, agent, tool, actual).await {
                    tracing::error!(%error, %tenant, "reporting a call of an ended lease failed");
                }
            }
        });
    }

    /// A local grant of `slot` completed: kept for the next settle, or reported now.
    pub(crate) fn lease_call_done(
        &self,
        slot: &Slot,
        lease_id: u64,
        estimate: Amounts,
        call: v1::LeaseCall,
    ) {
        let (completed, wake) = {
            let mut state = slot.state();
            let completed = state.complete(lease_id, estimate, call);
            (completed, state.wants_settle())
        };
        if wake {
            self.shared.leases.wake.notify_one();
        }
        match completed {
            Completed::Kept | Completed::Covered => {}
            Completed::Orphan(call) => self.record_orphans(slot, vec![call]),
        }
    }

    /// Gives every lease of this client (and its clones) back: reports the completed calls
    /// and returns the rest of each slice, so nothing is left for the cluster to charge at
    /// expiry. Call it before a process exits; a client dropped without it leaves its
    /// leases to expire, charged whole (the safe side). Calls still in flight are reported
    /// as Records when they complete.
    pub async fn return_leases(&self) {
        for slot in self.shared.leases.all() {
            let mut lane = Arc::clone(&slot.lane).lock_owned().await;
            if !slot.state().has_lease() {
                continue;
            }
            let client = self.for_slot(&slot);
            client.settle_slot(&slot, &mut lane, true).await;
            if lane.pending.is_some() {
                // Unanswered: one more try, then the cluster's expiry settles it.
                client.settle_slot(&slot, &mut lane, true).await;
            }
        }
    }

    /// This client with the credentials of the slot's opener.
    fn for_slot(&self, slot: &Slot) -> Client {
        Client::from_parts(Arc::clone(&self.shared), slot.auth.clone())
    }

    /// Starts the background task of this client's lease book, once, on the current runtime.
    fn ensure_lease_task(&self) {
        let book = &self.shared.leases;
        if book.task_running() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(claim) = TaskClaim::claim(book) else {
            return;
        };
        let shared = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            // Dropped when the task ends, or with its runtime: the next reserve starts another.
            let claim = claim;
            run_task(shared, &claim.0).await;
        });
    }
}

/// Settles every slot when due, returns idle leases and sweeps idle slots, until the client
/// is gone.
async fn run_task(shared: Weak<Shared>, book: &LeaseBook) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut wake_at = now + TASK_ROUND_MAX;
        for slot in book.all() {
            let (due, next) = {
                let state = slot.state();
                (state.due(now), state.wake_at())
            };
            if let Some(next) = next {
                wake_at = wake_at.min(next);
            }
            if due == Due::No {
                continue;
            }
            let Ok(mut lane) = Arc::clone(&slot.lane).try_lock_owned() else {
                continue;
            };
            let client = Client::from_parts(Arc::clone(&strong), slot.auth.clone());
            tokio::spawn(async move {
                client
                    .settle_slot(&slot, &mut lane, due == Due::Return)
                    .await;
            });
        }
        book.sweep(now);
        drop(strong);
        tokio::time::sleep(TASK_ROUND_MIN).await;
        let _ = timeout_at(wake_at, book.wake.notified()).await;
    }
}
