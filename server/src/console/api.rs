//! The console's JSON calls. Each one authenticates the caller (401 before anything else),
//! checks its input (400 with the reason), then asks the cluster with the caller's own key,
//! so the cluster's services decide what it may see or change.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Uri};
use axum::Json;
use serde::Deserialize;
use tollgate_client::{v1, Client};

use super::view::{
    set_lag, AgentView, AuditPage, AuditView, LimitBar, NodeView, ReservationView, TenantView,
    Whoami,
};
use super::{ApiError, Console, URI_BYTES_MAX};
use crate::auth::Caller;

/// Longest tenant or agent name accepted, as the ledger bounds ids.
pub const ID_BYTES_MAX: usize = 128;
/// Reservations in flight shown for a tenant.
pub const RESERVATIONS_SHOWN_MAX: u32 = 50;
/// Audit records one query reads, and queries one call makes at most to catch up.
pub const AUDIT_PAGE_RECORDS: u32 = 1_000;
pub const AUDIT_PAGES_PER_CALL_MAX: usize = 5;
/// Audit records one call returns: the newest of those read.
pub const AUDIT_RECORDS_SHOWN_MAX: usize = 200;
/// How far back the first look at the audit trail goes.
pub const AUDIT_LOOKBACK: Duration = Duration::from_secs(60 * 60);
/// How long one node may take to report its status before it is shown as unreachable.
pub const NODE_STATUS_TIMEOUT: Duration = Duration::from_millis(1_500);

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The authenticated caller and a client that calls with its key.
struct Session {
    caller: Caller,
    client: Client,
}

fn session(console: &Console, headers: &HeaderMap, uri: &Uri) -> Result<Session, ApiError> {
    session_on(&console.client, console, headers, uri)
}

/// A session whose calls go through `client` (one of the console's).
fn session_on(
    client: &Client,
    console: &Console,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Session, ApiError> {
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > URI_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "the request target is {target_len} bytes, more than URI_BYTES_MAX ({URI_BYTES_MAX})"
        )));
    }
    let caller = crate::http::authenticate(&console.authenticator, headers)
        .map_err(ApiError::unauthorized)?;
    // With authentication off the cluster ignores keys: none is sent.
    let token = if console.authenticator.auth.enabled() {
        bearer(headers)
    } else {
        None
    };
    let client = client
        .with_token(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    Ok(Session { caller, client })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A tenant or agent name from the page: bounded, printable, never empty.
pub(super) fn check_name<'a>(what: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if value.is_empty() || value.len() > ID_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {ID_BYTES_MAX} (ID_BYTES_MAX) bytes, not {}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} holds a control character"
        )));
    }
    Ok(value)
}

fn optional_name<'a>(what: &str, value: &'a Option<String>) -> Result<Option<&'a str>, ApiError> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(value) => check_name(what, value).map(Some),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

/// `GET /ui/api/whoami`: who the key is, so the page knows what to ask for.
pub async fn whoami(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Whoami> {
    let session = session(&console, &headers, &uri)?;
    Ok(Json(Whoami {
        auth: console.authenticator.auth.enabled(),
        admin: session.caller.is_admin(),
        tenant: session.caller.tenant().map(ToString::to_string),
    }))
}

/// `GET /ui/api/cluster`: every member's own status (the admin only, as `Cluster.Status`).
pub async fn cluster(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Vec<NodeView>> {
    let session = session(&console, &headers, &uri)?;
    let members = members(&session.client).await?;
    let statuses = members.iter().map(|member| {
        let client = session.client.clone();
        async move {
            let status = tokio::time::timeout(NODE_STATUS_TIMEOUT, client.status(&member.addr));
            match status.await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {NODE_STATUS_TIMEOUT:?}")),
            }
        }
    });
    let statuses = futures::future::join_all(statuses).await;
    let mut nodes: Vec<NodeView> = members
        .iter()
        .zip(statuses)
        .map(|(member, status)| NodeView::of(member, status))
        .collect();
    set_lag(&mut nodes);
    Ok(Json(nodes))
}

/// The membership as the first of this process's nodes that answers sees it.
async fn members(client: &Client) -> Result<Vec<v1::Member>, ApiError> {
    let mut last_error = None;
    for endpoint in &client.config().endpoints {
        let status = tokio::time::timeout(NODE_STATUS_TIMEOUT, client.status(endpoint)).await;
        match status {
            Ok(Ok(status)) => return Ok(status.members),
            Ok(Err(e @ tollgate_client::Error::PermissionDenied(_))) => return Err(e.into()),
            Ok(Err(e)) => last_error = Some(e.into()),
            Err(_) => {}
        }
    }
    Err(last_error.unwrap_or_else(|| {
        ApiError::from(tollgate_client::Error::Unavailable {
            reason: "no node of this process answered its status".into(),
        })
    }))
}

/// `GET /ui/api/tenants`: every tenant for the admin, its own for a tenant key.
pub async fn tenants(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Vec<String>> {
    let session = session(&console, &headers, &uri)?;
    if let Some(tenant) = session.caller.tenant() {
        return Ok(Json(vec![tenant.to_string()]));
    }
    Ok(Json(session.client.list_tenants().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant: String,
    agent: Option<String>,
}

/// `GET /ui/api/tenant?tenant=T[&agent=A]`: spend against every limit, reservations in
/// flight, and the agent's own limits and state when one is named.
pub async fn tenant(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    params: Result<Query<TenantQuery>, QueryRejection>,
) -> ApiResult<TenantView> {
    let session = session(&console, &headers, &uri)?;
    let params = query(params)?;
    let tenant = check_name("tenant", &params.tenant)?;
    let agent = optional_name("agent", &params.agent)?;
    let client = &session.client;
    let agent_usage = async {
        match agent {
            Some(agent) => Some(client.usage(tenant, Some(agent), None).await),
            None => None,
        }
    };
    let (usage, reservations, agent_usage) = tokio::join!(
        client.usage(tenant, None, None),
        client.reservations(tenant, None, RESERVATIONS_SHOWN_MAX),
        agent_usage,
    );
    let reservations = reservations.map(|list| list.iter().map(ReservationView::of).collect());
    Ok(Json(TenantView {
        tenant: tenant.to_owned(),
        limits: usage?.usage.iter().map(LimitBar::of).collect(),
        reservations: reservations.into(),
        agent: agent_usage.map(|usage| {
            usage
                .map(|u| AgentView::of(agent.unwrap_or_default(), &u))
                .into()
        }),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    tenant: Option<String>,
    after_seq: Option<u64>,
}

/// `GET /ui/api/audit?tenant=T[&after_seq=N]`: the newest audit records after `after_seq`
/// (the first call: of the last `AUDIT_LOOKBACK`). The page filters them by kind and agent.
pub async fn audit(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<AuditPage> {
    let session = session(&console, &headers, &uri)?;
    let params = query(params)?;
    let tenant = optional_name("tenant", &params.tenant)?;
    let mut request = v1::AuditQueryRequest {
        tenant: tenant.unwrap_or_default().to_owned(),
        limit: AUDIT_PAGE_RECORDS,
        ..v1::AuditQueryRequest::default()
    };
    match params.after_seq {
        Some(after_seq) => request.after_seq = Some(after_seq),
        None => request.from_ms = Some(now_ms().saturating_sub(lookback_ms())),
    }
    let mut records: Vec<v1::AuditRecord> = Vec::new();
    let mut caught_up = false;
    for _ in 0..AUDIT_PAGES_PER_CALL_MAX {
        let page = session.client.query_audit(request.clone()).await?;
        caught_up = page.len() < AUDIT_PAGE_RECORDS as usize;
        if let Some(last) = page.last() {
            request.after_seq = Some(last.seq);
            request.from_ms = None;
        }
        records.extend(page);
        let excess = records.len().saturating_sub(AUDIT_RECORDS_SHOWN_MAX);
        records.drain(..excess);
        if caught_up {
            break;
        }
    }
    Ok(Json(AuditPage {
        records: records.iter().map(AuditView::of).collect(),
        next_after_seq: request.after_seq.or(params.after_seq),
        caught_up,
    }))
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

fn lookback_ms() -> u64 {
    u64::try_from(AUDIT_LOOKBACK.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    tenant: String,
    /// None or empty: the whole tenant.
    agent: Option<String>,
    /// True freezes, false lifts the freeze.
    frozen: bool,
}

/// `POST /ui/api/freeze {"tenant", "agent", "frozen"}`: the kill switch. Answers the log
/// index it was applied at.
pub async fn freeze(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Json<FreezeBody>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let session = session_on(&console.patient, &console, &headers, &uri)?;
    let Json(body) =
        body.map_err(|e| ApiError::bad_request(format!("bad body: {}", e.body_text())))?;
    let tenant = check_name("tenant", &body.tenant)?;
    let agent = optional_name("agent", &body.agent)?;
    let applied = if body.frozen {
        session.client.freeze(tenant, agent).await?
    } else {
        session.client.unfreeze(tenant, agent).await?
    };
    Ok(Json(serde_json::json!({
        "tenant": tenant,
        "agent": agent,
        "frozen": body.frozen,
        "log_index": applied.log_index,
    })))
}
