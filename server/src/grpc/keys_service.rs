//! The key RPCs of `tollgate.v1.Admin`: create, list, rotate, revoke. Ids and secrets are
//! drawn here (`auth::new_key`), the ledger stores only digests, and a secret leaves the
//! node once, in the answer to the create or rotate that drew it.
//!
//! The admin manages every key; a tenant admin the keys of its own tenant (never an admin
//! key). A key of another tenant and a key that does not exist are refused alike, so the
//! answer tells a tenant admin nothing of other tenants' keys.

use tollgate_proto::v1 as pb;
use tonic::Status;

use super::call::{propose, read_linearizable};
use super::convert::{self, applied};
use crate::auth::{new_key, Caller};
use crate::node::Node;
use crate::raft::state_machine::read_applied;
use tollgate_ledger::{Command, KeyId, KeySpec, Role, TenantId};

/// Most keys one ListKeys call returns (oldest ids first); name a tenant to see all of its.
pub const KEYS_LISTED_MAX: usize = 10_000;

fn optional_tenant(value: &str) -> Result<Option<TenantId>, Status> {
    match value {
        "" => Ok(None),
        value => convert::tenant(value).map(Some),
    }
}

/// The key as the ledger now holds it, with its secret: the answer to a create or rotate.
fn with_secret(
    node: &Node,
    key_id: &KeyId,
    api_key: String,
    result: &crate::raft::proposer::AppliedOutcome,
) -> Result<pb::KeySecretResponse, Status> {
    let key = read_applied(&node.applied)
        .ledger
        .key(key_id)
        .map(convert::key_to_pb)
        .ok_or_else(|| Status::internal(format!("key {key_id} applied but not found")))?;
    Ok(pb::KeySecretResponse {
        key: Some(key),
        api_key,
        applied: Some(applied(result)),
    })
}

pub(super) async fn create_key(
    node: &Node,
    caller: &Caller,
    request: pb::CreateKeyRequest,
) -> Result<pb::KeySecretResponse, Status> {
    let request_id = convert::request_id(&request.request_id)?;
    let tenant = optional_tenant(&request.tenant)?;
    let role = convert::role(request.role)?;
    let agents = convert::key_agents(&request.agents)?;
    match (role, &tenant) {
        (Role::Admin, _) | (_, None) => caller.for_admin()?,
        (_, Some(tenant)) => caller.for_tenant_admin(tenant)?,
    }
    let new = new_key(None)?;
    let command = Command::CreateKey {
        request_id,
        tenant,
        key: KeySpec {
            id: new.id.clone(),
            digest: new.digest,
            role,
            agents,
            name: request.name,
        },
    };
    let result = propose(node, command, "create_key").await?;
    tracing::info!(key_id = %new.id, role = role.name(), "API key created");
    with_secret(node, &new.id, new.api_key, &result)
}

pub(super) async fn list_keys(
    node: &Node,
    caller: &Caller,
    request: pb::ListKeysRequest,
) -> Result<pb::ListKeysResponse, Status> {
    let tenant = match optional_tenant(&request.tenant)? {
        Some(tenant) => Some(tenant),
        None if caller.is_admin() => None,
        None => caller.tenant().cloned(),
    };
    match &tenant {
        Some(tenant) => caller.for_tenant_admin(tenant)?,
        None => caller.for_admin()?,
    }
    let keys = read_linearizable(node, caller, |applied| {
        Ok(applied.ledger.keys(tenant.as_ref()))
    })
    .await?;
    Ok(pb::ListKeysResponse {
        keys: keys
            .iter()
            .take(KEYS_LISTED_MAX)
            .map(convert::key_to_pb)
            .collect(),
    })
}

/// Authorises a change to key `key_id` and returns its tenant (None: an admin key). The
/// key's tenant never changes, so this node's applied state is enough to find it; a key
/// this node does not know is the admin's to be told about (NOT_FOUND from the ledger).
fn key_owner(node: &Node, caller: &Caller, key_id: &KeyId) -> Result<Option<TenantId>, Status> {
    let owner = read_applied(&node.applied)
        .ledger
        .key(key_id)
        .map(|key| key.tenant.clone());
    caller.for_key_of(owner.as_ref().map(Option::as_ref))?;
    Ok(owner.flatten())
}

pub(super) async fn rotate_key(
    node: &Node,
    caller: &Caller,
    request: pb::RotateKeyRequest,
) -> Result<pb::KeySecretResponse, Status> {
    let request_id = convert::request_id(&request.request_id)?;
    let key_id = convert::key_id(&request.key_id)?;
    let tenant = key_owner(node, caller, &key_id)?;
    let new = new_key(Some(key_id.clone()))?;
    let command = Command::RotateKey {
        request_id,
        tenant,
        key_id: key_id.clone(),
        digest: new.digest,
    };
    let result = propose(node, command, "rotate_key").await?;
    tracing::info!(%key_id, "API key rotated");
    with_secret(node, &key_id, new.api_key, &result)
}

pub(super) async fn revoke_key(
    node: &Node,
    caller: &Caller,
    request: pb::RevokeKeyRequest,
) -> Result<pb::AdminResponse, Status> {
    let request_id = convert::request_id(&request.request_id)?;
    let key_id = convert::key_id(&request.key_id)?;
    let tenant = key_owner(node, caller, &key_id)?;
    let command = Command::RevokeKey {
        request_id,
        tenant,
        key_id: key_id.clone(),
    };
    let result = propose(node, command, "revoke_key").await?;
    tracing::info!(%key_id, "API key revoked");
    Ok(convert::admin_response(&result))
}
