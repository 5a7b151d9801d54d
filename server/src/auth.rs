//! Credentials: an admin token for Admin and Cluster calls, one token per tenant for the
//! Tollgate service. Tokens travel as `authorization: Bearer <token>`. Only SHA-256 digests
//! are kept in memory, compared whole, so a token never sits in a log or a debug print.
//!
//! With no admin token configured, authentication is off: the mode of `tollgate dev` and of
//! tests, stated loudly at start-up.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::Status;

use tollgate_ledger::TenantId;

type TokenDigest = [u8; 32];

#[derive(Clone, Default)]
pub struct Auth {
    admin: Option<TokenDigest>,
    tenants: BTreeMap<TokenDigest, TenantId>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .field("tenant_tokens", &self.tenants.len())
            .finish()
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(TenantId),
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// Authentication on, with this admin token and these tenant tokens.
    pub fn new(admin_token: &str, tenant_tokens: &BTreeMap<TenantId, String>) -> Self {
        Self {
            admin: Some(digest(admin_token)),
            tenants: tenant_tokens
                .iter()
                .map(|(tenant, token)| (digest(token), tenant.clone()))
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.admin.is_some()
    }

    fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let Some(admin) = self.admin else {
            return Ok(Caller::Admin);
        };
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization is not `Bearer <token>`"))?;
        let token = digest(token);
        if token == admin {
            return Ok(Caller::Admin);
        }
        self.tenants
            .get(&token)
            .map(|tenant| Caller::Tenant(tenant.clone()))
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// Admits the admin, and a tenant's token for that tenant only.
    pub fn for_tenant(&self, metadata: &MetadataMap, tenant: &TenantId) -> Result<(), Status> {
        match self.caller(metadata)? {
            Caller::Admin => Ok(()),
            Caller::Tenant(own) if &own == tenant => Ok(()),
            Caller::Tenant(own) => Err(Status::permission_denied(format!(
                "credentials of tenant {own} cannot act for tenant {tenant}"
            ))),
        }
    }

    pub fn for_admin(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match self.caller(metadata)? {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(Status::permission_denied("needs admin credentials")),
        }
    }
}
