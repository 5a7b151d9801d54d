//! Credentials: who is calling (authentication, here) and what each role may do (the checks
//! the services call). A key travels as `authorization: Bearer <key>`.
//!
//! Two kinds of key: the bootstrap admin key, from the node's configuration (any 32 to 256
//! printable ASCII bytes), and API keys `tg_<key id>_<secret>` stored in the ledger as the
//! SHA-256 digest of the secret. Both are compared by digest in constant time; neither is
//! ever kept whole in memory, logged, or printed by `Debug`. Authentication runs in a tonic
//! interceptor, on the headers, before any request body is decoded. With no bootstrap key
//! (`--insecure`) authentication is off and every caller is an admin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use tollgate_ledger::{AgentId, KeyId, Ledger, Role, TenantId, KEY_ID_HEX_LEN};

/// Longest key accepted, in bytes; a longer `authorization` value is refused unread.
pub const API_KEY_BYTES_MAX: usize = 256;
/// Shortest bootstrap admin key: 32 bytes, so a guessable word is never an admin key.
pub const BOOTSTRAP_KEY_BYTES_MIN: usize = 32;
/// Random bytes in an API key's secret (64 hex digits on the wire).
pub const SECRET_BYTES: usize = 32;
/// What every key handed out starts with.
pub const KEY_PREFIX: &str = "tg_";

type KeyDigest = [u8; 32];

fn digest(bytes: &[u8]) -> KeyDigest {
    Sha256::digest(bytes).into()
}

/// A new API key: its public id, its whole secret string (shown once) and the digest the
/// ledger stores. Randomness lives here, at the edge, never in the ledger.
pub struct NewKey {
    pub id: KeyId,
    pub api_key: String,
    pub digest: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    // The thread RNG is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Draws a key id and secret for `id` (None: a new id), as `tg_<id>_<secret>`.
pub fn new_key(id: Option<KeyId>) -> Result<NewKey, Status> {
    let id = match id {
        Some(id) => id,
        None => KeyId::new(random_hex(KEY_ID_HEX_LEN / 2))
            .map_err(|e| Status::internal(format!("drawing a key id: {e}")))?,
    };
    let secret = random_hex(SECRET_BYTES);
    Ok(NewKey {
        api_key: format!("{KEY_PREFIX}{id}_{secret}"),
        digest: digest(secret.as_bytes()),
        id,
    })
}

/// A fresh bootstrap admin key, `tg_bootstrap_<64 hex>`, for `tollgate key generate`.
pub fn new_bootstrap_key() -> String {
    format!("{KEY_PREFIX}bootstrap_{}", random_hex(SECRET_BYTES))
}

/// `tg_<16 hex>_<64 hex>` split into id and secret; None for anything else (a bootstrap
/// key, garbage).
fn parse_api_key(key: &str) -> Option<(KeyId, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if secret.len() != 2 * SECRET_BYTES || !hex(secret) {
        return None;
    }
    Some((KeyId::new(id).ok()?, secret))
}

/// Checks a bootstrap admin key's form: 32 to 256 printable ASCII bytes, and not the form
/// of an API key (which would let a ledger key and the admin key be one string).
pub fn check_bootstrap_key(key: &str) -> Result<(), String> {
    let len = key.len();
    if !(BOOTSTRAP_KEY_BYTES_MIN..=API_KEY_BYTES_MAX).contains(&len) {
        return Err(format!(
            "the bootstrap admin key is {len} bytes; it must be {BOOTSTRAP_KEY_BYTES_MIN} to \
             {API_KEY_BYTES_MAX} (generate one with `tollgate key generate`)"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the bootstrap admin key must be printable ASCII without spaces".into());
    }
    if parse_api_key(key).is_some() {
        return Err("the bootstrap admin key has the form of an API key \
                    (tg_<key id>_<secret>); generate one with `tollgate key generate`"
            .into());
    }
    Ok(())
}

/// How a node authenticates: with a bootstrap admin key, or not at all (`--insecure`).
#[derive(Clone, Default)]
pub struct Auth {
    bootstrap: Option<KeyDigest>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Auth {
    /// Authentication on, with this bootstrap admin key (checked by `check_bootstrap_key`).
    pub fn with_bootstrap_key(key: &str) -> Result<Self, String> {
        check_bootstrap_key(key)?;
        Ok(Self {
            bootstrap: Some(digest(key.as_bytes())),
        })
    }

    pub fn enabled(&self) -> bool {
        self.bootstrap.is_some()
    }
}

/// What a live API key grants, as the interceptor finds it.
#[derive(Debug)]
struct Grant {
    digest: KeyDigest,
    role: Role,
    tenant: Option<TenantId>,
    agents: Arc<[AgentId]>,
}

/// The live API keys by id, for the interceptor: updated by the state machine when a key
/// command is applied and rebuilt when a snapshot is installed. Its lock is taken for
/// writing only then, so a request's read never waits for the ledger's apply.
#[derive(Debug, Default)]
pub struct KeyIndex {
    live: RwLock<HashMap<KeyId, Arc<Grant>>>,
}

impl KeyIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyId, Arc<Grant>>> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    fn grant_of(ledger: &Ledger, key_id: &KeyId) -> Option<Arc<Grant>> {
        let key = ledger.key(key_id).filter(|k| k.is_live())?;
        Some(Arc::new(Grant {
            digest: key.digest,
            role: key.role,
            tenant: key.tenant.clone(),
            agents: key.agents.clone().into(),
        }))
    }

    /// Takes `key_id` as the ledger now holds it (live, rotated, revoked or forgotten).
    pub fn refresh(&self, ledger: &Ledger, key_id: &KeyId) {
        let grant = Self::grant_of(ledger, key_id);
        let mut live = self.write();
        match grant {
            Some(grant) => live.insert(key_id.clone(), grant),
            None => live.remove(key_id),
        };
    }

    /// Rebuilds the index from the whole ledger (start, snapshot install).
    pub fn rebuild(&self, ledger: &Ledger) {
        let live: HashMap<KeyId, Arc<Grant>> = ledger
            .keys(None)
            .iter()
            .filter_map(|k| Some((k.id.clone(), Self::grant_of(ledger, &k.id)?)))
            .collect();
        *self.write() = live;
    }

    fn get(&self, key_id: &KeyId) -> Option<Arc<Grant>> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.get(key_id).cloned()
    }
}

/// Who made a request: put in the request's extensions by [`Authenticator`], read by the
/// services, which decide what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The API key, None for the bootstrap key and with authentication off.
    key: Option<(KeyId, KeyDigest)>,
    role: Role,
    tenant: Option<TenantId>,
    /// Worker keys: the agents it may act as; empty: any.
    agents: Arc<[AgentId]>,
}

fn denied(message: String) -> Status {
    Status::permission_denied(message)
}

impl Caller {
    fn admin() -> Self {
        Self {
            key: None,
            role: Role::Admin,
            tenant: None,
            agents: Arc::new([]),
        }
    }

    /// The caller of a request that passed the interceptor.
    pub fn of<T>(request: &Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
    }

    /// What the key is, in words for a refusal: only the caller's own rights, never
    /// whether what it named exists.
    fn rights(&self) -> String {
        match (&self.role, &self.tenant) {
            (Role::Admin, _) => "an admin key".into(),
            (role, Some(tenant)) if !self.agents.is_empty() => format!(
                "a {} key of tenant {tenant} for agents {}",
                role.name(),
                self.agents
                    .iter()
                    .map(AgentId::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            (role, Some(tenant)) => format!("a {} key of tenant {tenant}", role.name()),
            (role, None) => format!("a {} key", role.name()),
        }
    }

    fn refuse<T>(&self, needs: &str) -> Result<T, Status> {
        Err(denied(format!("{} {needs}", self.rights())))
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The tenant of a tenant-scoped key.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    fn owns(&self, tenant: &TenantId) -> bool {
        self.tenant.as_ref() == Some(tenant)
    }

    /// Admin only: tenants, the audit chain's verification, the cluster.
    pub fn for_admin(&self) -> Result<(), Status> {
        if self.is_admin() {
            return Ok(());
        }
        self.refuse("cannot do this; it needs an admin key")
    }

    /// The admin, or the tenant admin of `tenant`: limits, kill switch, keys, audit.
    pub fn for_tenant_admin(&self, tenant: &TenantId) -> Result<(), Status> {
        if self.is_admin() || (self.role == Role::TenantAdmin && self.owns(tenant)) {
            return Ok(());
        }
        self.refuse("cannot do this; it needs an admin key or a tenant-admin key of the tenant")
    }

    /// Changing a key: the admin any; a tenant admin the keys of its tenant. `owner` is
    /// the key's tenant (`Some(None)`: an admin key), None if the key is unknown here; an
    /// unknown key and another tenant's are refused in the same words.
    pub fn for_key_of(&self, owner: Option<Option<&TenantId>>) -> Result<(), Status> {
        if self.is_admin() {
            return Ok(());
        }
        match owner {
            Some(Some(tenant)) if self.role == Role::TenantAdmin && self.owns(tenant) => Ok(()),
            _ => self.refuse("may manage only the keys of its own tenant"),
        }
    }

    /// Anyone of `tenant` (or the admin) may read its limits, usage and reservations; an
    /// agent-limited worker only about one of its agents (`agent` must name it).
    pub fn for_reader(&self, tenant: &TenantId, agent: Option<&AgentId>) -> Result<(), Status> {
        if self.is_admin() || (self.role == Role::TenantAdmin && self.owns(tenant)) {
            return Ok(());
        }
        if self.role == Role::Worker && self.owns(tenant) {
            return match agent {
                _ if self.agents.is_empty() => Ok(()),
                Some(agent) if self.allows_agent(agent) => Ok(()),
                Some(_) => self.refuse("may read only about its own agents"),
                None => self.refuse("must name one of its agents"),
            };
        }
        self.refuse("may read only its own tenant")
    }

    /// Any key of `tenant` (or the admin): what a tenant's configuration (its limits) needs.
    pub fn for_member(&self, tenant: &TenantId) -> Result<(), Status> {
        if self.is_admin() || self.owns(tenant) {
            return Ok(());
        }
        self.refuse("may read only its own tenant")
    }

    /// Reserve, commit, release, record: the admin, or a worker of `tenant` acting as an
    /// agent it may act as (`agent`: None when the operation names none of its own).
    pub fn for_worker(&self, tenant: &TenantId, agent: Option<&AgentId>) -> Result<(), Status> {
        if self.is_admin() {
            return Ok(());
        }
        if self.role != Role::Worker || !self.owns(tenant) {
            return self
                .refuse("cannot spend for this tenant; it needs a worker key of the tenant");
        }
        match agent {
            Some(agent) if !self.allows_agent(agent) => self.refuse("cannot act as that agent"),
            _ => Ok(()),
        }
    }

    /// Whether the key may act as `agent` (true unless it is limited to others).
    pub fn allows_agent(&self, agent: &AgentId) -> bool {
        self.agents.is_empty() || self.agents.binary_search(agent).is_ok()
    }

    /// Whether the key is limited to named agents.
    pub fn agent_limited(&self) -> bool {
        !self.agents.is_empty()
    }

    /// Checks, after a read barrier, that the key is still live with the same secret: a
    /// read answered after a revocation or rotation was applied is refused.
    pub fn still_valid(&self, ledger: &Ledger) -> Result<(), Status> {
        let Some((id, digest)) = &self.key else {
            return Ok(());
        };
        match ledger.key(id) {
            Some(key) if key.is_live() && bool::from(key.digest.ct_eq(digest)) => Ok(()),
            _ => Err(Status::unauthenticated(
                "the API key is revoked or was rotated",
            )),
        }
    }
}

/// The tonic interceptor of the Tollgate, Admin and Cluster services: finds the caller from
/// the `authorization` header alone, so a request with no valid key is refused before its
/// body is read.
#[derive(Clone)]
pub struct Authenticator {
    pub auth: Auth,
    pub keys: Arc<KeyIndex>,
}

impl Authenticator {
    fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let Some(bootstrap) = self.auth.bootstrap else {
            return Ok(Caller::admin());
        };
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <api key>`"))?;
        if header.len() > "Bearer ".len() + API_KEY_BYTES_MAX {
            return Err(Status::unauthenticated(format!(
                "the API key is longer than API_KEY_BYTES_MAX ({API_KEY_BYTES_MAX})"
            )));
        }
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization is not `Bearer <api key>`"))?;
        let unknown = || Status::unauthenticated("unknown, revoked or malformed API key");
        match parse_api_key(key) {
            Some((id, secret)) => {
                let grant = self.keys.get(&id).ok_or_else(unknown)?;
                let offered = digest(secret.as_bytes());
                if !bool::from(offered.ct_eq(&grant.digest)) {
                    return Err(unknown());
                }
                Ok(Caller {
                    key: Some((id, offered)),
                    role: grant.role,
                    tenant: grant.tenant.clone(),
                    agents: grant.agents.clone(),
                })
            }
            // Only a string that is not an API key is compared with the bootstrap key: a
            // ledger key never gains admin rights, whatever its bytes.
            None if bool::from(digest(key.as_bytes()).ct_eq(&bootstrap)) => Ok(Caller::admin()),
            None => Err(unknown()),
        }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.caller(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_parse_and_bootstrap_keys_do_not() {
        let key = new_key(None).unwrap();
        let (id, secret) = parse_api_key(&key.api_key).expect("a new key parses");
        assert_eq!(id, key.id);
        assert_eq!(digest(secret.as_bytes()), key.digest);
        assert!(
            !format!("{key:?}").contains(secret),
            "Debug shows no secret"
        );
        let bootstrap = new_bootstrap_key();
        assert!(parse_api_key(&bootstrap).is_none());
        assert!(check_bootstrap_key(&bootstrap).is_ok());
        assert!(check_bootstrap_key(&key.api_key).is_err());
        assert!(check_bootstrap_key("short").is_err());
        assert!(check_bootstrap_key(&"x".repeat(API_KEY_BYTES_MAX + 1)).is_err());
        assert!(check_bootstrap_key(&format!("{} x", "y".repeat(40))).is_err());
    }

    #[test]
    fn auth_debug_shows_no_digest() {
        let auth = Auth::with_bootstrap_key(&new_bootstrap_key()).unwrap();
        assert_eq!(format!("{auth:?}"), "Auth { enabled: true }");
    }
}
