//! API keys: who may call, as replicated state. A key is a public id, the SHA-256 digest of
//! its secret (never the secret), a role, the tenant it belongs to and, for workers, an
//! optional list of the agents it may act as.
//!
//! The ids and secrets are drawn at the gRPC edge: the ledger only stores what a command
//! carries, so every replica holds the same keys. Revoked keys stay listed (the newest
//! `REVOKED_KEYS_PER_TENANT_MAX` of each tenant) so that an operator can see what was
//! revoked and when; they never authenticate again.

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::audit::{AuditEvent, Fact};
use super::{AgentId, Bound, InvalidInput, Ledger, Outcome, Rejection, RequestId, TenantId};

/// Hex digits of a key id: 64 random bits, enough that ids drawn at random never meet.
pub const KEY_ID_HEX_LEN: usize = 16;
/// Most live (unrevoked) keys of one tenant. The one place it is checked is
/// `Ledger::create_key`; a per-tenant quota may replace it.
pub const KEYS_PER_TENANT_MAX: usize = 100;
/// Most live keys in the ledger (admin keys included), whatever the number of tenants.
pub const KEYS_MAX: usize = 100_000;
/// Revoked keys remembered per tenant (and for admin keys); the oldest revoked is forgotten
/// first.
pub const REVOKED_KEYS_PER_TENANT_MAX: usize = 100;
/// Most agents one worker key may be limited to.
pub const KEY_AGENTS_MAX: usize = 64;
/// Longest key name (a label for people), in bytes of printable ASCII (spaces allowed).
pub const KEY_NAME_BYTES_MAX: usize = 64;

/// The public part of an API key: `KEY_ID_HEX_LEN` lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(CompactString);

impl KeyId {
    /// Checks the form; the one way to build a key id from input.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = Self(CompactString::from(value.into()));
        id.validate()?;
        Ok(id)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Rechecks an id that arrived through serde.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let bytes = self.0.as_bytes();
        let hex = bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if bytes.len() == KEY_ID_HEX_LEN && hex {
            return Ok(());
        }
        let shown: String = self.0.chars().take(KEY_ID_HEX_LEN + 4).collect();
        Err(InvalidInput(format!(
            "key id {shown:?} is not {KEY_ID_HEX_LEN} lowercase hex digits"
        )))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// What a key may do (SPEC.md, "Keys and roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, on every tenant. Has no tenant.
    Admin,
    /// Limits, the kill switch, keys and the audit trail of its tenant.
    TenantAdmin,
    /// Reserve, commit, release, record and read usage for its tenant (and its agents).
    Worker,
}

impl Role {
    /// The role as the CLI and the docs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TenantAdmin => "tenant-admin",
            Role::Worker => "worker",
        }
    }
}

/// A key as a create command carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeySpec {
    pub id: KeyId,
    /// SHA-256 of the secret part of `tg_<id>_<secret>`.
    pub digest: [u8; 32],
    pub role: Role,
    /// For workers: the agents it may act as, sorted, no duplicates; empty: any agent.
    pub agents: Vec<AgentId>,
    pub name: String,
}

/// A key as the ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub digest: [u8; 32],
    pub role: Role,
    /// None exactly for admin keys.
    pub tenant: Option<TenantId>,
    pub agents: Vec<AgentId>,
    pub name: String,
    pub created_at_ms: u64,
    /// When the secret was last replaced by `RotateKey`.
    pub rotated_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

impl ApiKey {
    pub fn is_live(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// What the audit trail says of a created key: never its digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key_id: KeyId,
    pub role: Role,
    pub agents: Vec<AgentId>,
    pub name: String,
}

/// Every key, by id (ids are unique over the ledger, whatever the tenant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    by_id: BTreeMap<KeyId, ApiKey>,
}

impl Keys {
    fn count(&self, tenant: Option<&TenantId>, live: bool) -> usize {
        self.by_id
            .values()
            .filter(|k| k.tenant.as_ref() == tenant && k.is_live() == live)
            .count()
    }

    /// Forgets the tenant's oldest revoked keys beyond `REVOKED_KEYS_PER_TENANT_MAX`.
    fn forget_revoked_beyond_max(&mut self, tenant: Option<&TenantId>) {
        let mut revoked: Vec<(u64, KeyId)> = self
            .by_id
            .values()
            .filter(|k| k.tenant.as_ref() == tenant)
            .filter_map(|k| k.revoked_at_ms.map(|at| (at, k.id.clone())))
            .collect();
        if revoked.len() <= REVOKED_KEYS_PER_TENANT_MAX {
            return;
        }
        revoked.sort_unstable();
        let excess = revoked.len() - REVOKED_KEYS_PER_TENANT_MAX;
        for (_, id) in revoked.into_iter().take(excess) {
            self.by_id.remove(&id);
        }
    }
}

/// Stateless checks of a key command's fields: the role fits the tenant, the agents and
/// the name are within their bounds.
pub(super) fn validate_spec(tenant: Option<&TenantId>, spec: &KeySpec) -> Result<(), InvalidInput> {
    spec.id.validate()?;
    match (spec.role, tenant) {
        (Role::Admin, Some(_)) => return fail("an admin key belongs to no tenant".into()),
        (Role::TenantAdmin | Role::Worker, None) => {
            return fail(format!("a {} key needs a tenant", spec.role.name()))
        }
        _ => {}
    }
    if spec.role != Role::Worker && !spec.agents.is_empty() {
        return fail("only worker keys may be limited to agents".into());
    }
    if spec.agents.len() > KEY_AGENTS_MAX {
        return fail(format!(
            "the key names {} agents, more than KEY_AGENTS_MAX ({KEY_AGENTS_MAX})",
            spec.agents.len()
        ));
    }
    for agent in &spec.agents {
        agent.validate()?;
    }
    if !spec.agents.windows(2).all(|pair| pair[0] < pair[1]) {
        return fail("the key's agents must be sorted and distinct".into());
    }
    validate_name(&spec.name)
}

fn validate_name(name: &str) -> Result<(), InvalidInput> {
    if name.len() > KEY_NAME_BYTES_MAX {
        return fail(format!(
            "key name is {} bytes, longer than KEY_NAME_BYTES_MAX ({KEY_NAME_BYTES_MAX})",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return fail("key name must be printable ASCII".into());
    }
    Ok(())
}

fn fail<T>(message: String) -> Result<T, InvalidInput> {
    Err(InvalidInput(message))
}

fn unknown_key(key_id: &KeyId) -> Outcome {
    Outcome::Rejected(Rejection::UnknownKey {
        key_id: key_id.clone(),
    })
}

impl Ledger {
    /// Stores a new key, within its tenant's `keys` quota of live keys (at most
    /// `KEYS_PER_TENANT_MAX`; the one check site of that bound) and `KEYS_MAX` over the ledger.
    pub(super) fn create_key(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        tenant: Option<&TenantId>,
        spec: &KeySpec,
    ) -> Outcome {
        if self.keys.by_id.contains_key(&spec.id) {
            return Outcome::Rejected(Rejection::KeyIdTaken {
                key_id: spec.id.clone(),
            });
        }
        if let Some(tenant) = tenant {
            let quota = self
                .quotas(tenant)
                .map_or(KEYS_PER_TENANT_MAX as u64, |quotas| quotas.keys);
            if self.keys.count(Some(tenant), true) as u64 >= quota {
                return Outcome::Rejected(Rejection::quota_reached(
                    Bound::KeysPerTenant,
                    quota,
                    tenant,
                ));
            }
        }
        if self.keys.by_id.values().filter(|k| k.is_live()).count() >= KEYS_MAX {
            // A bound over the ledger names no tenant in its text; admin keys have none.
            let rejection = match tenant.cloned().map_or_else(|| TenantId::new("admin"), Ok) {
                Ok(tenant) => Rejection::bound_reached(Bound::Keys, &tenant),
                Err(invalid) => Rejection::Invalid(invalid),
            };
            return Outcome::Rejected(rejection);
        }
        let key = ApiKey {
            id: spec.id.clone(),
            digest: spec.digest,
            role: spec.role,
            tenant: tenant.cloned(),
            agents: spec.agents.clone(),
            name: spec.name.clone(),
            created_at_ms: now_ms,
            rotated_at_ms: None,
            revoked_at_ms: None,
        };
        self.keys.by_id.insert(spec.id.clone(), key);
        let event = AuditEvent::KeyCreate(KeyCreated {
            key_id: spec.id.clone(),
            role: spec.role,
            agents: spec.agents.clone(),
            name: spec.name.clone(),
        });
        self.audit
            .append(now_ms, Fact::admin(tenant, request_id, event));
        Outcome::Done
    }

    /// The live key `key_id` of `tenant`, mutably; a key of another tenant is unknown.
    fn live_key_mut(
        &mut self,
        tenant: Option<&TenantId>,
        key_id: &KeyId,
    ) -> Result<&mut ApiKey, Outcome> {
        match self.keys.by_id.get_mut(key_id) {
            Some(key) if key.tenant.as_ref() == tenant => match key.revoked_at_ms {
                None => Ok(key),
                Some(revoked_at_ms) => Err(Outcome::Rejected(Rejection::KeyRevoked {
                    key_id: key_id.clone(),
                    revoked_at_ms,
                })),
            },
            _ => Err(unknown_key(key_id)),
        }
    }

    /// Replaces the key's secret (its digest); the old secret stops working at once.
    pub(super) fn rotate_key(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        tenant: Option<&TenantId>,
        (key_id, digest): (&KeyId, &[u8; 32]),
    ) -> Outcome {
        let key = match self.live_key_mut(tenant, key_id) {
            Ok(key) => key,
            Err(rejected) => return rejected,
        };
        key.digest = *digest;
        key.rotated_at_ms = Some(now_ms);
        let event = AuditEvent::KeyRotate(key_id.clone());
        self.audit
            .append(now_ms, Fact::admin(tenant, request_id, event));
        Outcome::Done
    }

    /// Revokes the key for good; it stays listed as revoked.
    pub(super) fn revoke_key(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        tenant: Option<&TenantId>,
        key_id: &KeyId,
    ) -> Outcome {
        let key = match self.live_key_mut(tenant, key_id) {
            Ok(key) => key,
            Err(rejected) => return rejected,
        };
        key.revoked_at_ms = Some(now_ms);
        self.keys.forget_revoked_beyond_max(tenant);
        let event = AuditEvent::KeyRevoke(key_id.clone());
        self.audit
            .append(now_ms, Fact::admin(tenant, request_id, event));
        Outcome::Done
    }

    /// The key with this id, live or revoked.
    pub fn key(&self, key_id: &KeyId) -> Option<&ApiKey> {
        self.keys.by_id.get(key_id)
    }

    /// Every key, by id; with `tenant`, only that tenant's (admin keys have none).
    pub fn keys(&self, tenant: Option<&TenantId>) -> Vec<ApiKey> {
        self.keys
            .by_id
            .values()
            .filter(|k| tenant.is_none() || k.tenant.as_ref() == tenant)
            .cloned()
            .collect()
    }

    /// Whether `key_id` names a live key: what a read checks after its barrier.
    pub fn key_is_live(&self, key_id: &KeyId) -> bool {
        self.keys.by_id.get(key_id).is_some_and(ApiKey::is_live)
    }

    /// The agent that holds (or held, if it expired recently) the tenant's reservation or
    /// lease (their ids are counted together): what an agent-limited key is checked against
    /// before a commit, release or settle.
    pub fn reservation_agent(
        &self,
        tenant: &TenantId,
        reservation_id: super::ReservationId,
    ) -> Option<AgentId> {
        let t = self.tenants.find(tenant.as_bytes())?;
        let key = (t, reservation_id.0);
        let agent = if let Some(r) = self.reservations.get(&key) {
            r.agent
        } else if let Some(gone) = self.tombstones.get(&key) {
            gone.reservation.agent
        } else if let Some(lease) = self.leases.get(&key) {
            lease.agent
        } else {
            self.lease_tombstones.get(&key)?.lease.agent
        };
        self.tenants.get(t)?.agents.get(agent).map(|a| a.id.clone())
    }

    /// Keys are indexed by their own id, coherent in role and tenant, and within bounds.
    pub(super) fn check_keys(&self) -> Result<(), String> {
        let mut live: BTreeMap<Option<&TenantId>, usize> = BTreeMap::new();
        for (id, key) in &self.keys.by_id {
            if id != &key.id {
                return Err(format!("key {id} is stored under another id ({})", key.id));
            }
            let spec = KeySpec {
                id: key.id.clone(),
                digest: key.digest,
                role: key.role,
                agents: key.agents.clone(),
                name: key.name.clone(),
            };
            validate_spec(key.tenant.as_ref(), &spec).map_err(|e| format!("key {id}: {e}"))?;
            if key.is_live() {
                *live.entry(key.tenant.as_ref()).or_default() += 1;
            }
        }
        let total: usize = live.values().sum();
        let over_tenant = live
            .iter()
            .any(|(tenant, n)| tenant.is_some() && *n > KEYS_PER_TENANT_MAX);
        if over_tenant || total > KEYS_MAX {
            return Err("live keys beyond KEYS_PER_TENANT_MAX or KEYS_MAX".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditFilter, Command, Ledger, TenantPolicy};

    const T0: u64 = 1_700_000_000_000;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn request(n: u32) -> RequestId {
        RequestId::new(format!("q-{n}")).unwrap()
    }

    fn key_id(n: u64) -> KeyId {
        KeyId::new(format!("{n:016x}")).unwrap()
    }

    fn spec(n: u64, role: Role) -> KeySpec {
        KeySpec {
            id: key_id(n),
            digest: [n as u8; 32],
            role,
            agents: Vec::new(),
            name: format!("key {n}"),
        }
    }

    fn ledger_with(tenants: &[&str]) -> Ledger {
        let mut ledger = Ledger::new();
        for (n, name) in (1000..).zip(tenants) {
            let put = Command::PutTenant {
                request_id: request(n),
                tenant: tenant(name),
                policy: TenantPolicy::default(),
            };
            assert_eq!(ledger.apply(T0, &put), Outcome::Done);
        }
        ledger
    }

    fn create(ledger: &mut Ledger, n: u32, tenant: Option<&str>, key: KeySpec) -> Outcome {
        let cmd = Command::CreateKey {
            request_id: request(n),
            tenant: tenant.map(self::tenant),
            key,
        };
        ledger.apply(T0 + u64::from(n), &cmd)
    }

    #[test]
    fn a_key_is_created_rotated_and_revoked_and_stays_listed() {
        let mut ledger = ledger_with(&["acme"]);
        assert_eq!(
            create(&mut ledger, 1, Some("acme"), spec(1, Role::Worker)),
            Outcome::Done
        );
        assert!(ledger.key_is_live(&key_id(1)));
        let rotate = Command::RotateKey {
            request_id: request(2),
            tenant: Some(tenant("acme")),
            key_id: key_id(1),
            digest: [9; 32],
        };
        assert_eq!(ledger.apply(T0 + 2, &rotate), Outcome::Done);
        assert_eq!(ledger.key(&key_id(1)).unwrap().digest, [9; 32]);
        let revoke = Command::RevokeKey {
            request_id: request(3),
            tenant: Some(tenant("acme")),
            key_id: key_id(1),
        };
        assert_eq!(ledger.apply(T0 + 3, &revoke), Outcome::Done);
        assert!(!ledger.key_is_live(&key_id(1)));
        let listed = ledger.keys(Some(&tenant("acme")));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].revoked_at_ms, Some(T0 + 3));
        // A revoked key cannot be rotated back to life.
        let again = Command::RotateKey {
            request_id: request(4),
            tenant: Some(tenant("acme")),
            key_id: key_id(1),
            digest: [7; 32],
        };
        assert!(matches!(
            ledger.apply(T0 + 4, &again),
            Outcome::Rejected(Rejection::KeyRevoked { .. })
        ));
    }

    /// A key named with another tenant is unknown, exactly as one that never existed.
    #[test]
    fn another_tenants_key_is_unknown() {
        let mut ledger = ledger_with(&["acme", "globex"]);
        create(&mut ledger, 1, Some("acme"), spec(1, Role::Worker));
        let before = ledger.clone();
        let revoke = Command::RevokeKey {
            request_id: request(2),
            tenant: Some(tenant("globex")),
            key_id: key_id(1),
        };
        assert_eq!(
            ledger.apply(T0 + 1, &revoke),
            Outcome::Rejected(Rejection::UnknownKey { key_id: key_id(1) })
        );
        assert_eq!(ledger.keys(None), before.keys(None));
        assert_eq!(ledger.chain_head(), before.chain_head());
    }

    #[test]
    fn keys_per_tenant_are_bounded_and_the_bound_is_named() {
        let mut ledger = ledger_with(&["acme", "globex"]);
        for n in 0..KEYS_PER_TENANT_MAX as u32 {
            let outcome = create(
                &mut ledger,
                n,
                Some("acme"),
                spec(u64::from(n), Role::Worker),
            );
            assert_eq!(outcome, Outcome::Done);
        }
        let full = create(&mut ledger, 500, Some("acme"), spec(500, Role::Worker));
        let Outcome::Rejected(rejection) = full else {
            panic!("{full:?}")
        };
        assert!(
            rejection.to_string().contains("KEYS_PER_TENANT_MAX"),
            "{rejection}"
        );
        // Another tenant is not affected.
        let other = create(&mut ledger, 501, Some("globex"), spec(501, Role::Worker));
        assert_eq!(other, Outcome::Done);
    }

    #[test]
    fn bad_key_commands_are_invalid_and_change_nothing() {
        let mut ledger = ledger_with(&["acme"]);
        let mut limited_admin = spec(1, Role::Admin);
        limited_admin.agents = vec![AgentId::new("bot").unwrap()];
        let mut unsorted = spec(2, Role::Worker);
        unsorted.agents = vec![AgentId::new("b").unwrap(), AgentId::new("a").unwrap()];
        let mut too_many = spec(3, Role::Worker);
        too_many.agents = (0..=KEY_AGENTS_MAX)
            .map(|n| AgentId::new(format!("a{n:03}")).unwrap())
            .collect();
        let mut long_name = spec(4, Role::Worker);
        long_name.name = "x".repeat(KEY_NAME_BYTES_MAX + 1);
        let cases = [
            (Some("acme"), spec(5, Role::Admin), "no tenant"),
            (None, spec(6, Role::Worker), "needs a tenant"),
            (None, limited_admin, "only worker keys"),
            (Some("acme"), unsorted, "sorted"),
            (Some("acme"), too_many, "KEY_AGENTS_MAX"),
            (Some("acme"), long_name, "KEY_NAME_BYTES_MAX"),
        ];
        let before = ledger.clone();
        for (n, (tenant, key, says)) in (1..).zip(cases) {
            let outcome = create(&mut ledger, n, tenant, key);
            let Outcome::Rejected(Rejection::Invalid(invalid)) = &outcome else {
                panic!("{outcome:?}")
            };
            assert!(invalid.0.contains(says), "{invalid:?} lacks {says}");
        }
        assert_eq!(ledger, before);
        assert!(KeyId::new("NOTHEX0000000000").is_err());
        assert!(KeyId::new("bootstrap").is_err());
    }

    #[test]
    fn keys_survive_a_snapshot_and_the_audit_never_holds_a_digest() {
        let mut ledger = ledger_with(&["acme"]);
        create(&mut ledger, 1, Some("acme"), spec(1, Role::TenantAdmin));
        create(&mut ledger, 2, None, spec(2, Role::Admin));
        let restored = Ledger::restore(&ledger.snapshot()).unwrap();
        assert_eq!(restored, ledger);
        assert_eq!(restored.keys(None).len(), 2);
        let records = ledger.audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        });
        let created: Vec<_> = records
            .iter()
            .filter(|r| matches!(r.event, AuditEvent::KeyCreate(_)))
            .collect();
        assert_eq!(created.len(), 2);
        for record in created {
            let json = serde_json::to_string(record).unwrap();
            assert!(json.contains("key_create"), "{json}");
            assert!(!json.contains("digest"), "{json}");
        }
    }

    #[test]
    fn revoked_keys_are_forgotten_oldest_first_beyond_their_bound() {
        let mut ledger = ledger_with(&["acme"]);
        let rounds = REVOKED_KEYS_PER_TENANT_MAX as u32 + 3;
        for n in 0..rounds {
            create(
                &mut ledger,
                2 * n,
                Some("acme"),
                spec(u64::from(n), Role::Worker),
            );
            let revoke = Command::RevokeKey {
                request_id: request(2 * n + 1),
                tenant: Some(tenant("acme")),
                key_id: key_id(u64::from(n)),
            };
            assert_eq!(
                ledger.apply(T0 + 10_000 + u64::from(n), &revoke),
                Outcome::Done
            );
        }
        let listed = ledger.keys(Some(&tenant("acme")));
        assert_eq!(listed.len(), REVOKED_KEYS_PER_TENANT_MAX);
        assert!(
            ledger.key(&key_id(0)).is_none(),
            "the oldest revoked is forgotten"
        );
        assert!(ledger.key(&key_id(u64::from(rounds - 1))).is_some());
    }
}
