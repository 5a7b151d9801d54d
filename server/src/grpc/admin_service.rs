//! `tollgate.v1.Admin`: limits, tenants, the kill switch, keys and the audit trail, for
//! operators. Tenants and the audit's verification are the admin's; a tenant admin manages
//! its own tenant's limits, kill switch, keys and audit records (SPEC.md, "Keys and roles").

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::call::{propose, read_linearizable, rejection_status};
use super::convert;
use super::keys_service;
use super::prices_service;
use crate::auth::Caller;
use crate::node::{Node, LEASE_TICK_INTERVAL};
use crate::raft::state_machine::read_applied;
use tollgate_ledger::{
    AgentId, AuditEvent, AuditFilter, AuditRecord, Command, TenantId, LEASE_GRACE_MS,
    LEASE_TTL_MS_MAX,
};

/// Most audit records one QueryAudit call returns; page with `after_seq` for more.
pub const AUDIT_PAGE_RECORDS_MAX: usize = 10_000;
/// Records read from the ledger per step of an export stream, so that the read lock is held
/// briefly however large the export.
const AUDIT_EXPORT_CHUNK_RECORDS: usize = 1_000;
/// Longest a trail read waits for the writer to store what was applied before it.
const TRAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest a Freeze waits for the leases on its scope to end once it has applied: a lease
/// renewed just before the freeze lives at most its TTL and grace, and is reclaimed by one
/// of the next ticks; a second tick covers the entry carrying the first.
pub const FREEZE_LEASES_WAIT: Duration = Duration::from_millis(LEASE_TTL_MS_MAX + LEASE_GRACE_MS)
    .saturating_add(LEASE_TICK_INTERVAL)
    .saturating_add(LEASE_TICK_INTERVAL);
/// How often the wait looks again when no entry is applied meanwhile (openraft's metrics
/// change with every applied entry, and wake it sooner).
const FREEZE_LEASES_POLL: Duration = Duration::from_millis(50);

/// Waits until the applied ledger holds no lease on the scope (returned, recalled and
/// settled, or expired), so that a Freeze answers only once no client can still grant
/// calls from a slice of it. Past [`FREEZE_LEASES_WAIT`], DEADLINE_EXCEEDED: the freeze
/// stands, but some lease outlived every bound.
async fn wait_for_leases_to_end(
    node: &Node,
    tenant: &TenantId,
    agent: Option<&AgentId>,
) -> Result<(), Status> {
    let mut applied = node.raft.metrics();
    let ended = async {
        loop {
            if read_applied(&node.applied).ledger.leases_on(tenant, agent) == 0 {
                return;
            }
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep(FREEZE_LEASES_POLL) => {}
            }
        }
    };
    tokio::time::timeout(FREEZE_LEASES_WAIT, ended)
        .await
        .map_err(|_| {
            let scope = match agent {
                Some(agent) => format!("agent {agent} of tenant {tenant}"),
                None => format!("tenant {tenant}"),
            };
            Status::deadline_exceeded(format!(
                "{scope} is frozen, but leases on it are still out after {} ms \
                 (FREEZE_LEASES_WAIT): clients holding them may still grant calls",
                FREEZE_LEASES_WAIT.as_millis()
            ))
        })
}

pub struct AdminService {
    pub node: Arc<Node>,
}

fn admin_response(result: &crate::raft::proposer::AppliedOutcome) -> Response<pb::AdminResponse> {
    Response::new(convert::admin_response(result))
}

/// The query's filter, authorised: a tenant admin reads its own tenant's records only (an
/// empty tenant means its own), the admin any.
fn audit_filter(
    caller: &Caller,
    request: &pb::AuditQueryRequest,
    limit_max: usize,
) -> Result<AuditFilter, Status> {
    let limit = match request.limit {
        0 => limit_max,
        n => usize::try_from(n).unwrap_or(usize::MAX).min(limit_max),
    };
    let tenant = match (request.tenant.is_empty(), caller.is_admin()) {
        (true, true) => None,
        (true, false) => caller.tenant().cloned(),
        (false, _) => Some(convert::tenant(&request.tenant)?),
    };
    match &tenant {
        Some(tenant) => caller.for_tenant_admin(tenant)?,
        None => caller.for_admin()?,
    }
    Ok(AuditFilter {
        tenant,
        agent: convert::optional_agent(&request.agent)?,
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        after_seq: request.after_seq,
        to_seq: None,
        event: audit_event(&request.event)?,
        tool: convert::optional_tool(&request.tool)?,
        limit,
    })
}

/// An audit query's event filter: empty is every event, else one of the export's names.
fn audit_event(name: &str) -> Result<Option<String>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    if !AuditEvent::NAMES.contains(&name) {
        return Err(convert::invalid(format!(
            "event {name:?} is not an audit event; one of {}",
            AuditEvent::NAMES.join(", ")
        )));
    }
    Ok(Some(name.to_owned()))
}

pub fn audit_record_to_pb(record: &AuditRecord) -> pb::AuditRecord {
    let text = |value: Option<String>| value.unwrap_or_default();
    pb::AuditRecord {
        seq: record.seq,
        at_ms: record.at_ms,
        tenant: text(record.tenant.as_ref().map(ToString::to_string)),
        agent: text(record.agent.as_ref().map(ToString::to_string)),
        tool: text(record.tool.as_ref().map(ToString::to_string)),
        request_id: text(record.request_id.as_ref().map(ToString::to_string)),
        reservation_id: record.reservation_id.map(|id| id.0),
        event_json: serde_json::to_string(&record.event).unwrap_or_default(),
        amounts: Some(convert::amounts_to_pb(&record.amounts)),
        prev_hash: record.prev_hash.to_vec(),
        hash: record.hash.to_vec(),
        json: serde_json::to_string(record).unwrap_or_default(),
    }
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn put_price(
        &self,
        request: Request<pb::PutPriceRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        prices_service::put_price(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_price(
        &self,
        request: Request<pb::DeletePriceRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        prices_service::delete_price(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_prices(
        &self,
        request: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::ListPricesResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        prices_service::list_prices(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put_tenant(
        &self,
        request: Request<pb::PutTenantRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        Caller::of(&request)?.for_admin()?;
        let request = request.into_inner();
        let command = Command::PutTenant {
            request_id: convert::request_id(&request.request_id)?,
            tenant: convert::tenant(&request.tenant)?,
            policy: convert::policy(request.policy)?,
        };
        Ok(admin_response(
            &propose(&self.node, command, "put_tenant").await?,
        ))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let tenant = convert::tenant(&request.into_inner().tenant)?;
        caller.for_tenant_admin(&tenant)?;
        let response = read_linearizable(&self.node, &caller, |applied| {
            let policy = applied
                .ledger
                .policy(&tenant)
                .map_err(|r| rejection_status(&r))?;
            let limits = applied
                .ledger
                .limits(&tenant)
                .map_err(|r| rejection_status(&r))?;
            Ok(pb::GetTenantResponse {
                policy: Some(convert::policy_to_pb(&policy)),
                limits: limits.iter().map(convert::limit_to_pb).collect(),
            })
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        caller.for_admin()?;
        let tenants =
            read_linearizable(&self.node, &caller, |applied| Ok(applied.ledger.tenants())).await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn put_limit(
        &self,
        request: Request<pb::PutLimitRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let tenant = convert::tenant(&request.tenant)?;
        caller.for_tenant_admin(&tenant)?;
        let command = Command::PutLimit {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            limit: convert::limit(request.limit)?,
        };
        Ok(admin_response(
            &propose(&self.node, command, "put_limit").await?,
        ))
    }

    async fn delete_limit(
        &self,
        request: Request<pb::DeleteLimitRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let tenant = convert::tenant(&request.tenant)?;
        caller.for_tenant_admin(&tenant)?;
        let command = Command::DeleteLimit {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            limit_id: convert::limit_id(&request.limit_id)?,
        };
        Ok(admin_response(
            &propose(&self.node, command, "delete_limit").await?,
        ))
    }

    async fn list_limits(
        &self,
        request: Request<pb::ListLimitsRequest>,
    ) -> Result<Response<pb::ListLimitsResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let tenant = convert::tenant(&request.get_ref().tenant)?;
        // Every key of a tenant may read its limits; only its admins may change them.
        caller.for_member(&tenant)?;
        let limits = read_linearizable(&self.node, &caller, |applied| {
            applied
                .ledger
                .limits(&tenant)
                .map_err(|r| rejection_status(&r))
        })
        .await?;
        Ok(Response::new(pb::ListLimitsResponse {
            limits: limits.iter().map(convert::limit_to_pb).collect(),
        }))
    }

    /// Answers once the freeze holds everywhere: after it applied, and after every lease
    /// on its scope ended (recalled by the freeze, so its holder settles it within a
    /// quarter of its TTL, or reclaimed at its expiry).
    async fn freeze(
        &self,
        request: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let tenant = convert::tenant(&request.tenant)?;
        caller.for_tenant_admin(&tenant)?;
        let agent = convert::optional_agent(&request.agent)?;
        let command = Command::Freeze {
            request_id: convert::request_id(&request.request_id)?,
            tenant: tenant.clone(),
            agent: agent.clone(),
        };
        let applied = propose(&self.node, command, "freeze").await?;
        wait_for_leases_to_end(&self.node, &tenant, agent.as_ref()).await?;
        Ok(admin_response(&applied))
    }

    async fn unfreeze(
        &self,
        request: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let tenant = convert::tenant(&request.tenant)?;
        caller.for_tenant_admin(&tenant)?;
        let command = Command::Unfreeze {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            agent: convert::optional_agent(&request.agent)?,
        };
        Ok(admin_response(
            &propose(&self.node, command, "unfreeze").await?,
        ))
    }

    async fn reset_trip(
        &self,
        request: Request<pb::ResetTripRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let tenant = convert::tenant(&request.tenant)?;
        caller.for_tenant_admin(&tenant)?;
        let command = Command::ResetTrip {
            request_id: convert::request_id(&request.request_id)?,
            tenant,
            agent: convert::agent(&request.agent)?,
        };
        Ok(admin_response(
            &propose(&self.node, command, "reset_trip").await?,
        ))
    }

    async fn query_audit(
        &self,
        request: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<pb::AuditQueryResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let filter = audit_filter(&caller, request.get_ref(), AUDIT_PAGE_RECORDS_MAX)?;
        trail_barrier(&self.node, &caller).await?;
        let trail = self.node.trail.clone();
        let records = tokio::task::spawn_blocking(move || trail.store().query(&filter))
            .await
            .map_err(|e| Status::internal(format!("audit query: {e}")))?
            .map_err(|e| store_status(&e))?;
        Ok(Response::new(pb::AuditQueryResponse {
            records: records.iter().map(audit_record_to_pb).collect(),
        }))
    }

    type ExportAuditStream = AuditStream;

    async fn export_audit(
        &self,
        request: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let mut filter = audit_filter(&caller, request.get_ref(), usize::MAX)?;
        let mut remaining = filter.limit;
        // The barrier is taken once, before the first record: the export is at least as new as
        // the call, and pages after it follow the log as it grows.
        trail_barrier(&self.node, &caller).await?;
        let trail = self.node.trail.clone();
        let stream = async_stream_records(move || {
            if remaining == 0 {
                return Ok(Vec::new());
            }
            filter.limit = remaining.min(AUDIT_EXPORT_CHUNK_RECORDS);
            let page = trail.store().query(&filter).map_err(|e| store_status(&e))?;
            remaining = remaining.saturating_sub(page.len());
            if let Some(last) = page.last() {
                filter.after_seq = Some(last.seq);
            }
            Ok(page)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_audit(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        caller.for_admin()?;
        trail_barrier(&self.node, &caller).await?;
        let trail = self.node.trail.clone();
        let response = tokio::task::spawn_blocking(move || {
            let state = trail.store().state();
            let first_seq = state.first_seq.unwrap_or(0);
            let checked = state.last_seq.map_or(0, |last| last + 1 - first_seq.max(1));
            let verified = trail.store().verify();
            let mut response = pb::AuditVerifyResponse {
                records_checked: checked,
                first_seq,
                anchor: state.anchor.to_vec(),
                ..Default::default()
            };
            match verified {
                Ok(head) => {
                    response.ok = true;
                    response.head_seq = head.seq;
                    response.head_hash = head.hash.to_vec();
                }
                Err(error) => response.error = error.to_string(),
            }
            response
        })
        .await
        .map_err(|e| Status::internal(format!("audit verify: {e}")))?;
        Ok(Response::new(response))
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::KeySecretResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        keys_service::create_key(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        keys_service::list_keys(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeySecretResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        keys_service::rotate_key(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        keys_service::revoke_key(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Streams pages from `next_page` until an empty one; the bounded channel makes a slow reader
/// slow the reading down instead of piling records up in memory.
fn async_stream_records(
    mut next_page: impl FnMut() -> Result<Vec<AuditRecord>, Status> + Send + 'static,
) -> impl Stream<Item = Result<pb::AuditRecord, Status>> + Send {
    let (sender, receiver) = tokio::sync::mpsc::channel(AUDIT_EXPORT_CHUNK_RECORDS);
    // Pages are read from the disk: on a blocking thread, which waits for the reader.
    tokio::task::spawn_blocking(move || loop {
        let page = match next_page() {
            Ok(page) if page.is_empty() => return,
            Ok(page) => page,
            Err(status) => {
                let _ = sender.blocking_send(Err(status));
                return;
            }
        };
        for record in page {
            if sender
                .blocking_send(Ok(audit_record_to_pb(&record)))
                .is_err()
            {
                return; // the reader went away
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Waits until what was applied before this call is in the trail on disk: the read index,
/// then the writer. A trail read after it sees every decision acknowledged before.
async fn trail_barrier(node: &Node, caller: &Caller) -> Result<(), Status> {
    let head = read_linearizable(node, caller, |applied| Ok(applied.ledger.chain_head())).await?;
    if node.trail.written_through(head.seq, TRAIL_WAIT).await {
        Ok(())
    } else {
        Err(Status::unavailable(format!(
            "the audit trail on disk has not reached seq {} within {TRAIL_WAIT:?}; retry",
            head.seq
        )))
    }
}

/// A store's failure as the caller sees it: a missing range is a precondition (this node
/// has not copied it yet, or it was never written), never an empty answer.
fn store_status(error: &tollgate_store::StoreError) -> Status {
    match error {
        tollgate_store::StoreError::Missing { .. } => Status::failed_precondition(format!(
            "{error}; `tollgate status` shows the missing ranges of each node"
        )),
        other => Status::internal(format!("audit trail: {other}")),
    }
}
