//! Typed wrappers for the Admin and Cluster services, for the CLI, the simulator and
//! tests. Each is one `Client::call` (leader) or `Client::call_node` (one named node);
//! mutations get a fresh request id that every retry reuses. Replies are the wire types:
//! these are operator tools, and the wire types are what they print.

use tollgate_proto::v1;

use crate::client::Client;
use crate::error::Error;
use crate::types::{new_request_id, Applied};

/// Most audit records one `query_audit` asks for; page with `after_seq` for more.
pub const AUDIT_QUERY_RECORDS_MAX: u32 = 10_000;

impl Client {
    /// Creates an API key: `tenant` None exactly for an admin key, `agents` only for a
    /// worker key (empty: any agent). The answer carries the key's secret, shown once. If
    /// the answer to an attempt is lost and the retry finds the first attempt applied, the
    /// retry fails ALREADY_EXISTS: that key's secret is lost, so revoke it and create another.
    pub async fn create_key(
        &self,
        tenant: Option<&str>,
        role: v1::KeyRole,
        agents: &[String],
        name: &str,
    ) -> Result<v1::KeySecretResponse, Error> {
        let wire = v1::CreateKeyRequest {
            request_id: new_request_id(),
            tenant: tenant.unwrap_or_default().to_owned(),
            role: role.into(),
            agents: agents.to_vec(),
            name: name.to_owned(),
        };
        self.call(|rpc| {
            let wire = wire.clone();
            async move { rpc.admin().create_key(wire).await }
        })
        .await
    }

    /// The keys the caller may see (of `tenant` if given), revoked ones included; never
    /// their secrets.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<v1::Key>, Error> {
        let wire = v1::ListKeysRequest {
            tenant: tenant.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().list_keys(wire).await }
            })
            .await?;
        Ok(response.keys)
    }

    /// Gives the key a new secret (returned once); the old secret stops working.
    pub async fn rotate_key(&self, key_id: &str) -> Result<v1::KeySecretResponse, Error> {
        let wire = v1::RotateKeyRequest {
            request_id: new_request_id(),
            key_id: key_id.to_owned(),
        };
        self.call(|rpc| {
            let wire = wire.clone();
            async move { rpc.admin().rotate_key(wire).await }
        })
        .await
    }

    /// Revokes the key for good: every node refuses it once this returns.
    pub async fn revoke_key(&self, key_id: &str) -> Result<Applied, Error> {
        let wire = v1::RevokeKeyRequest {
            request_id: new_request_id(),
            key_id: key_id.to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().revoke_key(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Creates or updates a tenant; `policy: None` keeps the server's default policy.
    pub async fn put_tenant(
        &self,
        tenant: &str,
        policy: Option<v1::TenantPolicy>,
    ) -> Result<Applied, Error> {
        let wire = v1::PutTenantRequest {
            request_id: new_request_id(),
            tenant: tenant.to_owned(),
            policy,
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().put_tenant(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// A tenant's policy and limits.
    pub async fn get_tenant(&self, tenant: &str) -> Result<v1::GetTenantResponse, Error> {
        let wire = v1::GetTenantRequest {
            tenant: tenant.to_owned(),
        };
        self.call(|rpc| {
            let wire = wire.clone();
            async move { rpc.admin().get_tenant(wire).await }
        })
        .await
    }

    /// Every tenant's name.
    pub async fn list_tenants(&self) -> Result<Vec<String>, Error> {
        let response = self
            .call(|rpc| async move { rpc.admin().list_tenants(v1::ListTenantsRequest {}).await })
            .await?;
        Ok(response.tenants)
    }

    /// Sets a limit (creates it, or replaces the limit with the same id).
    pub async fn put_limit(&self, tenant: &str, limit: v1::Limit) -> Result<Applied, Error> {
        let wire = v1::PutLimitRequest {
            request_id: new_request_id(),
            tenant: tenant.to_owned(),
            limit: Some(limit),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().put_limit(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Removes a limit.
    pub async fn delete_limit(&self, tenant: &str, limit_id: &str) -> Result<Applied, Error> {
        let wire = v1::DeleteLimitRequest {
            request_id: new_request_id(),
            tenant: tenant.to_owned(),
            limit_id: limit_id.to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().delete_limit(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// The limits in force for a tenant.
    pub async fn list_limits(&self, tenant: &str) -> Result<Vec<v1::Limit>, Error> {
        let wire = v1::ListLimitsRequest {
            tenant: tenant.to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().list_limits(wire).await }
            })
            .await?;
        Ok(response.limits)
    }

    /// Kill switch: denies every new reservation of the tenant (`agent: None`) or of one
    /// agent at once. Reservations in flight may still commit.
    pub async fn freeze(&self, tenant: &str, agent: Option<&str>) -> Result<Applied, Error> {
        let wire = freeze_request(tenant, agent);
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().freeze(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Lifts a freeze of the tenant (`agent: None`) or of one agent.
    pub async fn unfreeze(&self, tenant: &str, agent: Option<&str>) -> Result<Applied, Error> {
        let wire = freeze_request(tenant, agent);
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().unfreeze(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Lets an agent tripped by runaway detection through again.
    pub async fn reset_trip(&self, tenant: &str, agent: &str) -> Result<Applied, Error> {
        let wire = v1::ResetTripRequest {
            request_id: new_request_id(),
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().reset_trip(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Audit records matching the query, oldest first; `query.limit` is capped at
    /// [`AUDIT_QUERY_RECORDS_MAX`] (0 asks for the server's default).
    pub async fn query_audit(
        &self,
        mut query: v1::AuditQueryRequest,
    ) -> Result<Vec<v1::AuditRecord>, Error> {
        query.limit = query.limit.min(AUDIT_QUERY_RECORDS_MAX);
        let response = self
            .call(|rpc| {
                let query = query.clone();
                async move { rpc.admin().query_audit(query).await }
            })
            .await?;
        Ok(response.records)
    }

    /// Streams every retained record matching the query, oldest first. Opening the stream
    /// is retried like any call; a failure mid-stream is returned by
    /// [`AuditExport::next`] and is not retried, because only the caller knows what it
    /// already wrote: start again, or resume with `after_seq` set to the last `seq` seen.
    pub async fn export_audit(&self, query: v1::AuditQueryRequest) -> Result<AuditExport, Error> {
        let stream = self
            .call(|rpc| {
                let query = query.clone();
                async move { rpc.admin().export_audit(query).await }
            })
            .await?;
        Ok(AuditExport { stream })
    }

    /// Recomputes the audit hash chain on the leader and says whether it is intact.
    pub async fn verify_audit(&self) -> Result<v1::AuditVerifyResponse, Error> {
        self.call(|rpc| async move { rpc.admin().verify_audit(v1::AuditVerifyRequest {}).await })
            .await
    }

    /// The Raft status of exactly the node at `addr` (`host:port`), not of the leader:
    /// its role, term, indexes and view of the membership.
    pub async fn status(&self, addr: &str) -> Result<v1::StatusResponse, Error> {
        self.call_node(addr, |rpc| async move {
            rpc.cluster().status(v1::StatusRequest {}).await
        })
        .await
    }

    /// Adds a node as a non-voting learner; it starts receiving the log. `addr` is where
    /// clients reach it, `peer_addr` its peer listener (both `host:port`).
    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: &str,
        peer_addr: &str,
    ) -> Result<v1::MembershipResponse, Error> {
        let wire = v1::AddLearnerRequest {
            node_id,
            addr: addr.to_owned(),
            peer_addr: peer_addr.to_owned(),
        };
        self.call(|rpc| {
            let wire = wire.clone();
            async move { rpc.cluster().add_learner(wire).await }
        })
        .await
    }

    /// Sets the voting members to exactly `voters` (node ids already known as members or
    /// learners).
    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
    ) -> Result<v1::MembershipResponse, Error> {
        let wire = v1::ChangeMembershipRequest { voters };
        self.call(|rpc| {
            let wire = wire.clone();
            async move { rpc.cluster().change_membership(wire).await }
        })
        .await
    }

    /// Takes node `node_id` out of the cluster, voter or learner. The cluster refuses when
    /// that would leave no voter or no reachable quorum.
    pub async fn remove_node(&self, node_id: u64) -> Result<v1::MembershipResponse, Error> {
        self.call(|rpc| async move {
            let wire = v1::RemoveNodeRequest { node_id };
            rpc.cluster().remove_node(wire).await
        })
        .await
    }
}

fn freeze_request(tenant: &str, agent: Option<&str>) -> v1::FreezeRequest {
    v1::FreezeRequest {
        request_id: new_request_id(),
        tenant: tenant.to_owned(),
        agent: agent.unwrap_or_default().to_owned(),
    }
}

/// An audit export in progress; see [`Client::export_audit`].
#[derive(Debug)]
pub struct AuditExport {
    stream: tonic::Streaming<v1::AuditRecord>,
}

impl AuditExport {
    /// The next record, or `None` at the end of the export.
    pub async fn next(&mut self) -> Result<Option<v1::AuditRecord>, Error> {
        self.stream
            .message()
            .await
            .map_err(|status| match Error::from_status(&status) {
                Error::Unavailable { reason } => Error::Unavailable {
                    reason: format!(
                        "audit export interrupted ({reason}); restart it or resume with after_seq"
                    ),
                },
                other => other,
            })
    }
}
