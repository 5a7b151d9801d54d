//! What agent workers call: reserve, commit, release, record, and the two queries.
//! Each is one `Client::call` plus the translation between wire and client types; the
//! fail-open decision is made here, on `Unavailable` from reserve and nothing else. The four
//! operations go through `call_op`, which coalesces concurrent ones into one `Batch` RPC
//! (`ClientConfig::coalesce`); the queries are unary.

use tollgate_proto::v1;
use tollgate_proto::v1::reserve_response::Decision;
use tollgate_proto::v1::trip_cause::Cause;

use crate::client::Client;
use crate::error::Error;
use crate::lease::{leasable, Leased};
use crate::reservation::Reservation;
use crate::types::{
    new_request_id, scope_to_string, Amounts, Applied, CommitInfo, Dimension, Recorded,
    ReserveRequest, Usage,
};

/// Most reservations one `reservations` query asks for; the server may cap lower.
pub const RESERVATIONS_LIST_MAX: u32 = 10_000;

impl Client {
    /// Reserves the estimate against every limit that applies to (tenant, agent, tool).
    ///
    /// `Ok` is a guard: commit the actual spend or release it. A denial is an error:
    /// [`Error::Denied`] (with `retry_after` for rate limits), [`Error::Frozen`] or
    /// [`Error::Tripped`]. When the cluster cannot be reached within the deadline this
    /// returns [`Error::Unavailable`], or a local reservation if the client fails open.
    ///
    /// With [`ClientConfig::leases`](crate::ClientConfig::leases) (the default) and a tenant
    /// that allows leases, a request naming no session and no usage is granted locally from
    /// the slice of (tenant, agent, tool) this client holds, when it fits: no network round
    /// trip, and the commit is reported in the background
    /// ([`Reservation::lease_id`] says so). Anything a lease cannot decide (a slice too
    /// short, a hot fingerprint, a tenant without leases) goes per call as before.
    pub async fn reserve(&self, request: ReserveRequest) -> Result<Reservation, Error> {
        self.reserve_with_call_id(new_request_id(), request).await
    }

    /// [`reserve`](Self::reserve), leases included, with a caller-chosen request id for the
    /// call wherever it is decided: the audit record of a call granted in a lease (at its
    /// settle) or of a per-call decision carries it. Unlike
    /// [`reserve_with_id`](Self::reserve_with_id), sending the same id again after a grant
    /// in a lease is a second call, not a retry: for callers that never resend a grant
    /// (replaying histories, simulators), and that need every decision's id.
    pub async fn reserve_with_call_id(
        &self,
        request_id: String,
        request: ReserveRequest,
    ) -> Result<Reservation, Error> {
        let request = if self.shared.config.leases && leasable(&request) {
            match self.reserve_leased(request, &request_id).await {
                Leased::Granted(reservation) => return Ok(reservation),
                Leased::PerCall(request) => request,
                Leased::Unavailable(request, reason) => {
                    return self.fail_open(request, request_id, reason)
                }
            }
        } else {
            request
        };
        // Boxed: the per-call future is large, and a local grant should not carry it.
        Box::pin(self.reserve_with_id(request_id, request)).await
    }

    /// [`reserve`](Self::reserve) with a caller-chosen request id: sending the same id
    /// again returns the first answer (for replaying histories and cross-process retries).
    /// Always per call: a local grant could not promise that answer.
    pub async fn reserve_with_id(
        &self,
        request_id: String,
        request: ReserveRequest,
    ) -> Result<Reservation, Error> {
        let wire = request.to_wire(&request_id);
        let outcome = self
            .call_op(|rpc| {
                let wire = wire.clone();
                async move { rpc.send(wire).await }
            })
            .await;
        match outcome {
            Ok(response) => self.decide(request, request_id, response),
            Err(Error::Unavailable { reason }) => self.fail_open(request, request_id, reason),
            Err(error) => Err(error),
        }
    }

    fn decide(
        &self,
        request: ReserveRequest,
        request_id: String,
        response: v1::ReserveResponse,
    ) -> Result<Reservation, Error> {
        match response.decision {
            Some(Decision::Granted(granted)) => Ok(Reservation::cluster(
                self.clone(),
                request.tenant,
                request_id,
                request.estimate,
                granted,
                Applied::from(response.applied),
            )),
            Some(Decision::Denied(denied)) => Err(Error::Denied {
                scope: scope_to_string(denied.scope.as_ref()),
                limit_id: denied.limit_id,
                dimension: Dimension::from(denied.dimension),
                remaining: denied.remaining,
                retry_after: denied.retry_after_ms.map(std::time::Duration::from_millis),
            }),
            Some(Decision::Frozen(frozen)) => Err(Error::Frozen {
                agent: Some(frozen.agent).filter(|agent| !agent.is_empty()),
            }),
            Some(Decision::Tripped(tripped)) => Err(Error::Tripped {
                cause: describe_trip(tripped.cause.as_ref()),
                until_ms: tripped.until_ms,
            }),
            None => Err(Error::Internal(
                "reserve answered without a decision".into(),
            )),
        }
    }

    fn fail_open(
        &self,
        request: ReserveRequest,
        request_id: String,
        reason: String,
    ) -> Result<Reservation, Error> {
        let Some(local) = &self.shared.local else {
            return Err(Error::Unavailable { reason });
        };
        let estimate = request.local_estimate();
        if let Err(why_not) = local.try_hold(estimate) {
            return Err(Error::Unavailable {
                reason: format!("{reason}; {why_not}"),
            });
        }
        tracing::warn!(
            tenant = %request.tenant,
            agent = %request.agent,
            tool = %request.tool,
            %estimate,
            %reason,
            "tollgate unreachable: failing open with a local reservation"
        );
        Ok(Reservation::local(
            self.clone(),
            (request.tenant, request.agent, request.tool),
            request_id,
            estimate,
            request.ttl,
        )
        .in_session(request.session))
    }

    /// Commits `actual` spend for a reservation known only by id (the guard's
    /// [`Reservation::commit`] calls this). Retries reuse `request_id`.
    pub async fn commit_reservation(
        &self,
        request_id: String,
        tenant: &str,
        reservation_id: u64,
        actual: Amounts,
    ) -> Result<CommitInfo, Error> {
        self.send_commit(v1::CommitRequest {
            request_id,
            tenant: tenant.to_owned(),
            reservation_id,
            actual: Some(actual.into()),
            usage: None,
            abandoned: false,
        })
        .await
    }

    /// Commits what a call used for a reservation known only by id (the guard's
    /// [`Reservation::commit_usage`] calls this): the cluster prices `usage` with the
    /// tenant's price table; [`CommitInfo::cost_micros`] says what it charged. Retries reuse
    /// `request_id`.
    pub async fn commit_reservation_usage(
        &self,
        request_id: String,
        tenant: &str,
        reservation_id: u64,
        usage: Usage,
    ) -> Result<CommitInfo, Error> {
        self.send_commit(v1::CommitRequest {
            request_id,
            tenant: tenant.to_owned(),
            reservation_id,
            actual: None,
            usage: Some(usage.into()),
            abandoned: false,
        })
        .await
    }

    /// Settles a reservation whose guard was left without commit or release: the cluster
    /// charges its estimate (the call may have happened) and flags the audit record
    /// `abandoned`. Retries reuse `request_id`.
    pub(crate) async fn commit_abandoned(
        &self,
        request_id: String,
        tenant: &str,
        reservation_id: u64,
    ) -> Result<CommitInfo, Error> {
        self.send_commit(v1::CommitRequest {
            request_id,
            tenant: tenant.to_owned(),
            reservation_id,
            actual: None,
            usage: None,
            abandoned: true,
        })
        .await
    }

    async fn send_commit(&self, wire: v1::CommitRequest) -> Result<CommitInfo, Error> {
        let response = self
            .call_op(|rpc| {
                let wire = wire.clone();
                async move { rpc.send(wire).await }
            })
            .await?;
        Ok(CommitInfo {
            overrun: response.overrun,
            late: response.late,
            cost_micros: response.cost_micros,
            applied: Some(Applied::from(response.applied)),
        })
    }

    /// Releases a reservation known only by id (the guard's [`Reservation::release`] calls
    /// this). Retries reuse `request_id`.
    pub async fn release_reservation(
        &self,
        request_id: String,
        tenant: &str,
        reservation_id: u64,
    ) -> Result<Applied, Error> {
        let wire = v1::ReleaseRequest {
            request_id,
            tenant: tenant.to_owned(),
            reservation_id,
        };
        let response = self
            .call_op(|rpc| {
                let wire = wire.clone();
                async move { rpc.send(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Records spend that happened without a reservation (e.g. reported late). Always
    /// charged, never denied.
    pub async fn record(
        &self,
        tenant: &str,
        agent: &str,
        tool: &str,
        actual: Amounts,
    ) -> Result<Applied, Error> {
        self.record_with_id(new_request_id(), tenant, agent, tool, actual)
            .await
    }

    /// [`record`](Self::record) with a caller-chosen request id.
    pub async fn record_with_id(
        &self,
        request_id: String,
        tenant: &str,
        agent: &str,
        tool: &str,
        actual: Amounts,
    ) -> Result<Applied, Error> {
        let wire = record_wire(request_id, (tenant, agent, tool), Some(actual), None);
        Ok(self.send_record(wire).await?.applied)
    }

    /// [`record`](Self::record) of a call made in `session` (one run of the agent on one
    /// task): the tenant's `each-session` limits count it.
    pub async fn record_in_session(
        &self,
        session: &str,
        (tenant, agent, tool): (&str, &str, &str),
        actual: Amounts,
    ) -> Result<Applied, Error> {
        let call = (tenant, agent, tool);
        let wire = v1::RecordRequest {
            session: session.to_owned(),
            ..record_wire(new_request_id(), call, Some(actual), None)
        };
        Ok(self.send_record(wire).await?.applied)
    }

    /// Records what an LLM call used without a reservation: the cluster prices `usage` with
    /// the tenant's price table and says what it charged. Always charged, never denied.
    pub async fn record_usage(
        &self,
        tenant: &str,
        agent: &str,
        tool: &str,
        usage: Usage,
    ) -> Result<Recorded, Error> {
        let wire = record_wire(new_request_id(), (tenant, agent, tool), None, Some(usage));
        self.send_record(wire).await
    }

    /// Reports spend granted while failing open, in the background, if the cluster answers:
    /// one task at a time sends the waiting Records oldest first, each with its own request
    /// id on every retry (so once), and stops at the first that cannot reach the cluster.
    pub(crate) fn report_offline_spend(&self) {
        let Some(local) = &self.shared.local else {
            return;
        };
        if local.reports_waiting() == 0 || !local.start_reporting() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            local.stop_reporting();
            return;
        };
        let client = self.clone();
        runtime.spawn(async move {
            let Some(local) = &client.shared.local else {
                return;
            };
            while let Some(report) = local.next_report() {
                match client.send_record(report.clone()).await {
                    Ok(_) => local.reported(),
                    Err(Error::Unavailable { reason }) => {
                        tracing::debug!(%reason, "offline spend not reported yet; will retry");
                        break;
                    }
                    // The cluster answered and refused it (e.g. a tenant removed since): it
                    // can never be recorded, so it must not block the others.
                    Err(error) => {
                        tracing::error!(%error, request_id = %report.request_id, tenant = %report.tenant, "the cluster refused a report of offline spend");
                        local.reported();
                    }
                }
            }
            local.stop_reporting();
        });
    }

    async fn send_record(&self, wire: v1::RecordRequest) -> Result<Recorded, Error> {
        let response = self
            .call_op(|rpc| {
                let wire = wire.clone();
                async move { rpc.send(wire).await }
            })
            .await?;
        Ok(Recorded {
            cost_micros: response.cost_micros,
            applied: Applied::from(response.applied),
        })
    }

    /// Usage and remaining of every limit that applies to the tenant, narrowed to an agent
    /// and a tool when given. Linearizable: answered by the leader.
    pub async fn usage(
        &self,
        tenant: &str,
        agent: Option<&str>,
        tool: Option<&str>,
    ) -> Result<v1::UsageResponse, Error> {
        let wire = v1::UsageRequest {
            tenant: tenant.to_owned(),
            agent: agent.unwrap_or_default().to_owned(),
            tool: tool.unwrap_or_default().to_owned(),
            session: String::new(),
        };
        self.get_usage(wire).await
    }

    /// Usage and remaining of the tenant's `each-session` limits as `session` has used
    /// them (fresh for a session that never called). Linearizable.
    pub async fn session_usage(
        &self,
        tenant: &str,
        session: &str,
    ) -> Result<v1::UsageResponse, Error> {
        let wire = v1::UsageRequest {
            tenant: tenant.to_owned(),
            session: session.to_owned(),
            ..Default::default()
        };
        self.get_usage(wire).await
    }

    async fn get_usage(&self, wire: v1::UsageRequest) -> Result<v1::UsageResponse, Error> {
        self.call(|rpc| {
            let wire = wire.clone();
            async move { rpc.tollgate().get_usage(wire).await }
        })
        .await
    }

    /// Reservations in flight for the tenant (or one agent), at most `limit` of them
    /// (capped at [`RESERVATIONS_LIST_MAX`]).
    pub async fn reservations(
        &self,
        tenant: &str,
        agent: Option<&str>,
        limit: u32,
    ) -> Result<Vec<v1::Reservation>, Error> {
        let wire = v1::ListReservationsRequest {
            tenant: tenant.to_owned(),
            agent: agent.unwrap_or_default().to_owned(),
            limit: limit.min(RESERVATIONS_LIST_MAX),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.tollgate().list_reservations(wire).await }
            })
            .await?;
        Ok(response.reservations)
    }
}

/// A trip cause in words, e.g. `repetition: fingerprint "ab12" seen 20 times`.
fn describe_trip(cause: Option<&v1::TripCause>) -> String {
    match cause.and_then(|c| c.cause.as_ref()) {
        Some(Cause::Repetition(r)) => {
            format!(
                "repetition: fingerprint {:?} seen {} times",
                r.fingerprint, r.count
            )
        }
        Some(Cause::Velocity(v)) => {
            format!(
                "velocity: spent {} against a recent baseline of {}",
                v.spent, v.baseline
            )
        }
        Some(Cause::ShapeVelocity(s)) => {
            format!(
                "shape velocity: argument shape {:?} called {} times against a recent baseline of {}",
                s.shape, s.calls, s.baseline
            )
        }
        None => "unknown cause".into(),
    }
}

/// A Record of a call of `agent` on `tool`, in no session, reported online.
fn record_wire(
    request_id: String,
    (tenant, agent, tool): (&str, &str, &str),
    actual: Option<Amounts>,
    usage: Option<Usage>,
) -> v1::RecordRequest {
    v1::RecordRequest {
        request_id,
        tenant: tenant.to_owned(),
        agent: agent.to_owned(),
        tool: tool.to_owned(),
        actual: actual.map(Into::into),
        usage: usage.map(Into::into),
        offline: false,
        session: String::new(),
    }
}
