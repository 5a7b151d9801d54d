//! The reservation guard: spend held by the cluster (or, failing open, by this process)
//! until the caller commits what was spent or releases it. A guard dropped without either
//! (an early return, a `?`, a panic) settles at its estimate in the background, flagged
//! `abandoned`: the call may have happened, so it is never given back silently. Only an
//! explicit [`Reservation::release`] gives the estimate back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_proto::v1;

use std::sync::Arc;

use crate::client::Client;
use crate::error::Error;
use crate::lease::{clamp_amounts, Slot};
use crate::types::{
    duration_ms, new_request_id, Amounts, Applied, CommitInfo, Remaining, Spend, Usage,
};

/// Spend held against every limit that applies, until [`commit`](Self::commit),
/// [`release`](Self::release), or expiry.
///
/// Dropping it without either charges the estimate: in the background, on the current
/// tokio runtime, the guard sends a commit flagged `abandoned` (no actual), which the cluster
/// charges at the estimate and marks `abandoned` in the audit trail. Outside a runtime
/// nothing can be sent; the hold then expires and the tenant's expiry policy applies
/// (charged at the estimate by default). A local (fail-open) reservation dropped counts its
/// estimate as spent against the local cap.
#[derive(Debug)]
#[must_use = "a reservation holds budget until it is committed or released"]
pub struct Reservation {
    client: Client,
    tenant: String,
    request_id: String,
    estimate: Amounts,
    expires_at_ms: u64,
    tightest: Option<Remaining>,
    origin: Origin,
    /// Set once commit, release or abandon has been asked for: `Drop` then does nothing.
    settled: bool,
    /// The agent and tool of a local reservation, for the Record that reports its spend
    /// (boxed: cluster reservations, the common case, carry only the pointer).
    offline_call: Option<Box<OfflineCall>>,
    /// The slot of a reservation granted from a lease, and what its report names.
    lease: Option<LeaseHold>,
}

/// What a reservation granted from a lease needs to settle itself in its slot.
#[derive(Debug)]
struct LeaseHold {
    slot: Arc<Slot>,
    fingerprint: Option<String>,
    shape: Option<String>,
}

/// The call a local reservation stands for, as the Record that reports it names it.
#[derive(Debug)]
struct OfflineCall {
    agent: String,
    tool: String,
    session: Option<String>,
}

/// What a [`Reservation`] is, without the power to settle it: what
/// [`Client::guarded`] hands the call it guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationInfo {
    /// The cluster's id for the reservation; `None` for a local one.
    pub reservation_id: Option<u64>,
    /// The request id the reservation was made with.
    pub request_id: String,
    /// The tenant that pays.
    pub tenant: String,
    /// The estimate held.
    pub estimate: Amounts,
    /// When the hold expires, unix milliseconds.
    pub expires_at_ms: u64,
    /// What remains of the tightest limit after the grant.
    pub tightest: Option<Remaining>,
    /// Granted locally while failing open.
    pub local: bool,
    /// The lease it was granted from, decided by this client without a round trip; `None`
    /// for a reservation granted by the cluster per call (or failing open).
    pub lease_id: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Granted by the cluster.
    Cluster {
        reservation_id: u64,
        applied: Applied,
    },
    /// Granted by this process while failing open; the cluster never heard of it.
    Local,
    /// Granted by this process from a lease the cluster holds for it; settled in its slot
    /// and reported with the lease's next settle.
    Lease { lease_id: u64 },
}

impl Reservation {
    pub(crate) fn cluster(
        client: Client,
        tenant: String,
        request_id: String,
        estimate: Amounts,
        granted: v1::Granted,
        applied: Applied,
    ) -> Reservation {
        Reservation {
            client,
            tenant,
            request_id,
            estimate,
            expires_at_ms: granted.expires_at_ms,
            tightest: granted.tightest.map(Remaining::from),
            origin: Origin::Cluster {
                reservation_id: granted.reservation_id,
                applied,
            },
            settled: false,
            offline_call: None,
            lease: None,
        }
    }

    /// A reservation granted from the lease `lease_id` of `slot`, expiring with it.
    pub(crate) fn leased(
        client: Client,
        (request, request_id): (crate::types::ReserveRequest, String),
        (lease_id, expires_at_ms): (u64, u64),
        slot: Arc<Slot>,
    ) -> Reservation {
        Reservation {
            client,
            tenant: request.tenant,
            request_id,
            estimate: request.estimate,
            expires_at_ms,
            tightest: None,
            origin: Origin::Lease { lease_id },
            settled: false,
            offline_call: None,
            lease: Some(LeaseHold {
                slot,
                fingerprint: request.fingerprint,
                shape: request.shape,
            }),
        }
    }

    /// Names the session of a local reservation, for the Record that reports its spend.
    pub(crate) fn in_session(mut self, session: Option<String>) -> Self {
        if let Some(call) = self.offline_call.as_deref_mut() {
            call.session = session;
        }
        self
    }

    pub(crate) fn local(
        client: Client,
        (tenant, agent, tool): (String, String, String),
        request_id: String,
        estimate: Amounts,
        ttl: Duration,
    ) -> Reservation {
        debug_assert!(
            client.shared.local.is_some(),
            "local reservation without fail-open"
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(duration_ms)
            .unwrap_or(0);
        Reservation {
            client,
            tenant,
            request_id,
            estimate,
            expires_at_ms: now_ms.saturating_add(duration_ms(ttl)),
            tightest: None,
            origin: Origin::Local,
            settled: false,
            offline_call: Some(Box::new(OfflineCall {
                agent,
                tool,
                session: None,
            })),
            lease: None,
        }
    }

    /// The cluster's id for this reservation; `None` for a local one.
    pub fn reservation_id(&self) -> Option<u64> {
        match self.origin {
            Origin::Cluster { reservation_id, .. } => Some(reservation_id),
            Origin::Local | Origin::Lease { .. } => None,
        }
    }

    /// The lease this reservation was granted from (locally, without a round trip);
    /// `None` for one the cluster granted per call, or a fail-open one.
    pub fn lease_id(&self) -> Option<u64> {
        match self.origin {
            Origin::Lease { lease_id } => Some(lease_id),
            Origin::Cluster { .. } | Origin::Local => None,
        }
    }

    /// True when granted locally because the cluster was unreachable and the client fails
    /// open ([`FailMode::Open`](crate::FailMode::Open)). No limit of the cluster was checked.
    pub fn is_local(&self) -> bool {
        matches!(self.origin, Origin::Local)
    }

    /// When the hold expires and is charged at its estimate, unix milliseconds (the
    /// leader's clock; this process's clock for a local reservation).
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// What remains of the tightest limit after this grant; `None` when no limit applies
    /// or the reservation is local.
    pub fn tightest(&self) -> Option<&Remaining> {
        self.tightest.as_ref()
    }

    /// Where the grant was applied in the Raft log; `None` for a local reservation or one
    /// granted from a lease.
    pub fn applied(&self) -> Option<Applied> {
        match self.origin {
            Origin::Cluster { applied, .. } => Some(applied),
            Origin::Local | Origin::Lease { .. } => None,
        }
    }

    /// The request id the reservation was made with.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The tenant that pays.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The estimate held, as asked (the cost of a usage estimate is the cluster's to price
    /// and not known here).
    pub fn estimate(&self) -> Amounts {
        self.estimate
    }

    /// A copy of what this reservation is, for code that runs while it is held.
    pub fn info(&self) -> ReservationInfo {
        ReservationInfo {
            reservation_id: self.reservation_id(),
            request_id: self.request_id.clone(),
            tenant: self.tenant.clone(),
            estimate: self.estimate,
            expires_at_ms: self.expires_at_ms,
            tightest: self.tightest.clone(),
            local: self.is_local(),
            lease_id: self.lease_id(),
        }
    }

    /// Records what the call actually spent and ends the hold. Spend above the estimate
    /// is charged anyway and flagged as an overrun.
    ///
    /// If this fails (e.g. the cluster stays unreachable past the deadline) the hold is
    /// *not* released: it expires and is charged at its estimate, because the call did
    /// happen.
    pub async fn commit(mut self, actual: Amounts) -> Result<CommitInfo, Error> {
        if let Origin::Lease { lease_id } = self.origin {
            // Decided locally: no request id to make, nothing to send.
            self.settled = true;
            return Ok(self.settle_in_lease(lease_id, actual));
        }
        // Boxed: the per-call future is large, and a local commit should not carry it.
        Box::pin(self.commit_with_id(new_request_id(), actual)).await
    }

    /// [`commit`](Self::commit) with a caller-chosen request id (for replaying histories).
    /// A reservation granted from a lease is reported under its own request id, and the
    /// commit returns at once: the lease's next settle carries it.
    pub async fn commit_with_id(
        mut self,
        request_id: String,
        actual: Amounts,
    ) -> Result<CommitInfo, Error> {
        self.settled = true;
        match self.origin {
            Origin::Cluster { reservation_id, .. } => {
                self.client
                    .commit_reservation(request_id, &self.tenant, reservation_id, actual)
                    .await
            }
            Origin::Local => self.settle_locally(actual, None),
            Origin::Lease { lease_id } => Ok(self.settle_in_lease(lease_id, actual)),
        }
    }

    /// Records a call granted from a lease in its slot: no network; the lease's next settle
    /// reports it (request id, estimate, actual, fingerprint, shape).
    fn settle_in_lease(&mut self, lease_id: u64, actual: Amounts) -> CommitInfo {
        let actual = clamp_amounts(actual);
        if let Some(hold) = self.lease.take() {
            let call = v1::LeaseCall {
                request_id: std::mem::take(&mut self.request_id),
                estimate: Some(self.estimate.into()),
                actual: Some(actual.into()),
                fingerprint: hold.fingerprint.unwrap_or_default(),
                shape: hold.shape.unwrap_or_default(),
            };
            self.client
                .lease_call_done(&hold.slot, lease_id, self.estimate, call);
        }
        CommitInfo {
            overrun: !actual.fits_within(self.estimate),
            late: false,
            cost_micros: actual.cost_micros,
            applied: None,
        }
    }

    /// Records what an LLM call used and ends the hold: the cluster prices `usage` with the
    /// tenant's price table, and [`CommitInfo::cost_micros`] says what it charged. As with
    /// [`commit`](Self::commit), a failure leaves the hold to expire at its estimate.
    ///
    /// A local (fail-open) reservation has no price table at hand: it counts the usage's
    /// tokens and the estimate's cost and calls. One granted from a lease gives its estimate
    /// back to the lease and records the usage with the cluster, which prices it.
    pub async fn commit_usage(self, usage: Usage) -> Result<CommitInfo, Error> {
        self.commit_spend(Spend::Usage(usage)).await
    }

    /// Commits `spend` in whichever form it comes.
    pub(crate) async fn commit_spend(mut self, spend: Spend) -> Result<CommitInfo, Error> {
        let usage = match spend {
            Spend::Amounts(actual) => return self.commit(actual).await,
            Spend::Usage(usage) => usage,
        };
        self.settled = true;
        match self.origin {
            Origin::Cluster { reservation_id, .. } => {
                self.client
                    .commit_reservation_usage(new_request_id(), &self.tenant, reservation_id, usage)
                    .await
            }
            Origin::Local => {
                let actual = Amounts {
                    tokens: usage.tokens(),
                    ..self.estimate
                };
                self.settle_locally(actual, Some(usage))
            }
            Origin::Lease { lease_id } => self.commit_usage_from_lease(lease_id, usage).await,
        }
    }

    /// Usage needs the tenant's price table: the lease takes the estimate back and the
    /// cluster records the usage (always charged), priced.
    async fn commit_usage_from_lease(
        &mut self,
        lease_id: u64,
        usage: Usage,
    ) -> Result<CommitInfo, Error> {
        let Some(hold) = self.lease.take() else {
            return Err(Error::Internal(
                "a lease reservation without its slot".into(),
            ));
        };
        hold.slot.state().release(lease_id, self.estimate);
        let tokens = usage.tokens();
        let (agent, tool) = (hold.slot.agent.clone(), hold.slot.tool.clone());
        let recorded = self
            .client
            .record_usage(&self.tenant, &agent, &tool, usage)
            .await?;
        Ok(CommitInfo {
            overrun: tokens > self.estimate.tokens
                || recorded.cost_micros > self.estimate.cost_micros,
            late: false,
            cost_micros: recorded.cost_micros,
            applied: Some(recorded.applied),
        })
    }

    /// Counts what a local reservation spent and queues the Record (flagged offline) that
    /// reports it to the cluster once it answers again; with usage, the cluster prices it.
    fn settle_locally(&self, actual: Amounts, usage: Option<Usage>) -> Result<CommitInfo, Error> {
        if let (Some(local), Some(call)) = (&self.client.shared.local, &self.offline_call) {
            let OfflineCall {
                agent,
                tool,
                session,
            } = &**call;
            let reported = match usage {
                Some(_) => Amounts {
                    tokens: 0,
                    cost_micros: 0,
                    calls: actual.calls,
                },
                None => actual,
            };
            let report = v1::RecordRequest {
                request_id: format!("offline-{}", new_request_id()),
                tenant: self.tenant.clone(),
                agent: agent.clone(),
                tool: tool.clone(),
                actual: Some(reported.into()),
                usage: usage.map(Into::into),
                offline: true,
                session: session.clone().unwrap_or_default(),
            };
            local.settle(self.estimate, actual, report);
            self.client.report_offline_spend();
        }
        Ok(CommitInfo {
            overrun: !actual.fits_within(self.estimate),
            late: false,
            cost_micros: actual.cost_micros,
            applied: None,
        })
    }

    /// Settles at the estimate, flagged abandoned, and waits for the answer: what `Drop`
    /// sends in the background, for a caller that can await it.
    pub(crate) async fn commit_abandoned(mut self) -> Result<CommitInfo, Error> {
        self.settled = true;
        match self.origin {
            Origin::Cluster { reservation_id, .. } => {
                self.client
                    .commit_abandoned(new_request_id(), &self.tenant, reservation_id)
                    .await
            }
            Origin::Local => self.settle_locally(self.estimate, None),
            Origin::Lease { lease_id } => Ok(self.settle_in_lease(lease_id, self.estimate)),
        }
    }

    /// Ends the hold without charging anything: the call did not happen. This is the only
    /// way to give the estimate back; a guard merely dropped is charged it. Returns where the
    /// release was applied (`None` for a local reservation). A release after expiry is
    /// refused by the cluster with [`Error::FailedPrecondition`] and the expiry charge stands.
    pub async fn release(self) -> Result<Option<Applied>, Error> {
        self.release_with_id(new_request_id()).await
    }

    /// [`release`](Self::release) with a caller-chosen request id.
    pub async fn release_with_id(mut self, request_id: String) -> Result<Option<Applied>, Error> {
        self.settled = true;
        match self.origin {
            Origin::Cluster { reservation_id, .. } => self
                .client
                .release_reservation(request_id, &self.tenant, reservation_id)
                .await
                .map(Some),
            Origin::Local => {
                if let Some(local) = &self.client.shared.local {
                    local.give_back(self.estimate);
                }
                Ok(None)
            }
            Origin::Lease { lease_id } => {
                if let Some(hold) = self.lease.take() {
                    hold.slot.state().release(lease_id, self.estimate);
                }
                Ok(None)
            }
        }
    }

    /// Walks away without a word, as a worker that died would: unlike a drop, nothing is
    /// sent; the hold expires and the tenant's expiry policy applies (charged at the estimate
    /// by default). For simulators and tests. Returns the reservation id. One granted from
    /// a lease is counted at its estimate in its slot, as the lease's expiry would.
    pub fn abandon(mut self) -> Option<u64> {
        self.settled = true;
        if let Origin::Lease { lease_id } = self.origin {
            self.settle_in_lease(lease_id, self.estimate);
        }
        self.reservation_id()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let reservation_id = match self.origin {
            // Spent at its estimate, as a dropped cluster guard is: the call may have
            // happened. Reported like any local spend.
            Origin::Local => {
                let _ = self.settle_locally(self.estimate, None);
                return;
            }
            // Abandoned: spent at its estimate, recorded in the slot like any commit.
            Origin::Lease { lease_id } => {
                self.settle_in_lease(lease_id, self.estimate);
                return;
            }
            Origin::Cluster { reservation_id, .. } => reservation_id,
        };
        // Drop cannot await; hand the abandoned commit to the runtime if there is one.
        // Without a runtime nothing can be sent, and the hold expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                reservation_id,
                tenant = %self.tenant,
                "reservation dropped outside a tokio runtime; it will expire and be charged per the tenant's expiry policy"
            );
            return;
        };
        let client = self.client.clone();
        let tenant = std::mem::take(&mut self.tenant);
        runtime.spawn(async move {
            // One request id for every retry, so the estimate is charged once.
            let outcome = client
                .commit_abandoned(new_request_id(), &tenant, reservation_id)
                .await;
            if let Err(error) = outcome {
                tracing::warn!(reservation_id, %tenant, %error, "settling a dropped reservation at its estimate failed; it will expire");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientConfig, FailMode};

    #[test]
    fn dropping_a_reservation_without_a_runtime_does_not_panic() {
        let client = Client::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let reservation = Reservation::cluster(
            client,
            "acme".into(),
            new_request_id(),
            Amounts::new(1, 1, 1),
            v1::Granted {
                reservation_id: 42,
                expires_at_ms: 0,
                tightest: None,
            },
            Applied::default(),
        );
        drop(reservation);
    }

    #[test]
    fn dropping_a_local_reservation_counts_its_estimate_as_spent() {
        let config = ClientConfig {
            fail_mode: FailMode::Open {
                local_cap: Amounts::new(10, 10, 10),
            },
            ..ClientConfig::new(["127.0.0.1:1"])
        };
        let client = Client::new(config).unwrap();
        let local = || client.shared.local.as_ref().unwrap();
        local().try_hold(Amounts::new(5, 5, 1)).unwrap();
        let reservation = Reservation::local(
            client.clone(),
            ("acme".into(), "bot".into(), "llm".into()),
            new_request_id(),
            Amounts::new(5, 5, 1),
            Duration::from_secs(1),
        );
        assert!(reservation.is_local());
        assert_eq!(reservation.reservation_id(), None);
        drop(reservation);
        assert_eq!(local().used(), Amounts::new(5, 5, 1));
        assert!(
            local().try_hold(Amounts::new(6, 0, 0)).is_err(),
            "the dropped estimate still counts against the cap"
        );
        // ...and waits to be reported as spent offline, at its estimate.
        let report = local().next_report().unwrap();
        assert!(report.offline && report.request_id.starts_with("offline-"));
        assert_eq!(
            (report.tenant.as_str(), report.agent.as_str()),
            ("acme", "bot")
        );
        assert_eq!(report.actual, Some(Amounts::new(5, 5, 1).into()));
    }
}
