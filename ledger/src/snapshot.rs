//! Snapshots: the whole ledger as deterministic bytes, for Raft log compaction.
//!
//! Layout: `SNAPSHOT_MAGIC` (8 bytes) | format version (u32 LE) | body length (u64 LE) |
//! xxh3-64 of the body (u64 LE) | body (postcard of the ledger, hash maps sorted by key,
//! derived indexes left out). The same state always gives the same bytes.

use xxhash_rust::xxh3::xxh3_64;

use super::Ledger;

/// Bump on any change to the shape of the ledger's state, of the types in the log, or of
/// how the audit chain is hashed. 5: reservation ids count per tenant (tenants carry their
/// counter; reservations and tombstones are keyed by (tenant, id)). 6: tenant policies
/// carry quotas (`TenantQuotas`); agents may be removed (vacant slots, `last_used_ms`,
/// the GC cursor).
/// 7: API keys, and the key commands and audit events. 8: commits and records answer the
/// cost charged and audit the price. 9: repetition counts each fingerprint in the buckets of
/// a sliding window. 10: soft thresholds: limits carry them, budget counters remember the
/// highest crossed, `ThresholdCrossed` records, and the alert cursor. 11: shape velocity:
/// reserves carry a shape, policies a shape floor, agents the calls per window of their
/// shapes, and trips a `ShapeVelocity` cause. 12: sessions (tenants, reservations and the
/// reserve and record commands carry them; duration limits). 13: leases (policies say
/// whether a tenant's clients may hold them; the ledger holds them).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 13;
/// The first bytes of every ledger snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TGLEDGER";
const HEADER_BYTES: usize = 8 + 4 + 8 + 8;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {len} bytes, shorter than its {HEADER_BYTES}-byte header")]
    Truncated { len: usize },
    #[error("not a ledger snapshot: the first 8 bytes are not {:?}", String::from_utf8_lossy(&SNAPSHOT_MAGIC))]
    BadMagic,
    #[error(
        "snapshot format version {found} is not supported; this build reads version {supported}"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("snapshot body is {actual} bytes but its header says {declared}")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("snapshot body checksum mismatch: the bytes are corrupt")]
    ChecksumMismatch,
    #[error("snapshot body does not decode: {0}")]
    Decode(String),
    #[error("snapshot decodes to an inconsistent ledger: {0}")]
    Inconsistent(String),
}

impl Ledger {
    /// The whole state as versioned, deterministic bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_into(Vec::new())
    }

    /// Appends the snapshot to `out` and returns it: the caller's own header goes first
    /// with no copy of the (large) body. The body is encoded in place after a header whose
    /// length and checksum are filled in once it is known.
    pub fn snapshot_into(&self, mut out: Vec<u8>) -> Vec<u8> {
        let start = out.len();
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
        let body_start = out.len();
        debug_assert_eq!(body_start - start, HEADER_BYTES);
        // Serializing plain data into a Vec has no failure mode but allocation.
        let mut out = postcard::to_extend(self, out).unwrap_or_default();
        if out.len() < body_start {
            return Vec::new();
        }
        let body = &out[body_start..];
        let body_bytes = (body.len() as u64).to_le_bytes();
        let checksum = xxh3_64(body).to_le_bytes();
        out[start + 12..start + 20].copy_from_slice(&body_bytes);
        out[start + 20..start + 28].copy_from_slice(&checksum);
        out
    }

    /// Rebuilds a ledger from `snapshot` bytes. Rejects wrong magic, other versions, corrupt
    /// or inconsistent data with an error saying which; never panics.
    pub fn restore(bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        let (header, body) = bytes
            .split_at_checked(HEADER_BYTES)
            .ok_or(SnapshotError::Truncated { len: bytes.len() })?;
        let truncated = || SnapshotError::Truncated { len: bytes.len() };
        if header[..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes(header[8..12].try_into().map_err(|_| truncated())?);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let declared = u64::from_le_bytes(header[12..20].try_into().map_err(|_| truncated())?);
        if declared != body.len() as u64 {
            return Err(SnapshotError::LengthMismatch {
                declared,
                actual: body.len() as u64,
            });
        }
        let checksum = u64::from_le_bytes(header[20..28].try_into().map_err(|_| truncated())?);
        if checksum != xxh3_64(body) {
            return Err(SnapshotError::ChecksumMismatch);
        }
        let (mut ledger, rest): (Ledger, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SnapshotError::Decode(format!(
                "{} bytes left over after the ledger",
                rest.len()
            )));
        }
        ledger
            .rebuild_indexes()
            .map_err(SnapshotError::Inconsistent)?;
        ledger
            .check_invariants()
            .map_err(SnapshotError::Inconsistent)?;
        Ok(ledger)
    }

    /// Rebuilds what the snapshot leaves out: expiry and tombstone indexes, each tenant's
    /// reservations in flight, the agent count.
    fn rebuild_indexes(&mut self) -> Result<(), String> {
        self.by_expiry = self
            .reservations
            .iter()
            .map(|(&key, r)| (r.expires_at_ms, key))
            .collect();
        self.tombstones_by_time = self
            .tombstones
            .iter()
            .map(|(&key, t)| (t.expired_at_ms, key))
            .collect();
        // Tenants are never removed: their indexes are positions in the list.
        if self.tenants.len() != self.tenants.slots() {
            return Err("a tenant's slot is vacant".into());
        }
        for tenant in self.tenants.iter_mut() {
            tenant.in_flight = 0;
            tenant.leases = 0;
            for agent in tenant.agents.iter_mut() {
                agent.leases = 0;
            }
        }
        self.in_flight.clear();
        for &(t, id) in self.reservations.keys() {
            let tenant = self
                .tenants
                .get_mut(t)
                .ok_or_else(|| format!("reservation r{id} of unknown tenant #{t}"))?;
            tenant.in_flight = tenant.in_flight.saturating_add(1);
            self.in_flight.insert((t, id));
        }
        self.rebuild_lease_indexes()?;
        self.agents_total = self.tenants.iter().map(|t| t.agents.len()).sum();
        self.sessions_total = self.tenants.iter().map(|t| t.sessions.len()).sum();
        self.count_agent_refs()
    }

    /// The lease indexes and each tenant's and agent's count of live leases.
    fn rebuild_lease_indexes(&mut self) -> Result<(), String> {
        self.leases_by_expiry = self
            .leases
            .iter()
            .map(|(&key, l)| (l.expires_at_ms, key))
            .collect();
        self.lease_tombstones_by_time = self
            .lease_tombstones
            .iter()
            .map(|(&key, t)| (t.expired_at_ms, key))
            .collect();
        self.leases_of = self.leases.keys().copied().collect();
        for (&(t, id), lease) in &self.leases {
            let tenant = self
                .tenants
                .get_mut(t)
                .ok_or_else(|| format!("lease r{id} of unknown tenant #{t}"))?;
            tenant.leases = tenant.leases.saturating_add(1);
            let agent = tenant
                .agents
                .get_mut(lease.agent)
                .ok_or_else(|| format!("lease r{id} of unknown agent #{}", lease.agent))?;
            agent.leases = agent.leases.saturating_add(1);
        }
        Ok(())
    }

    /// Counts the reservations, leases and their tombstones that refer to each agent
    /// (`Agent::refs`).
    fn count_agent_refs(&mut self) -> Result<(), String> {
        for tenant in self.tenants.iter_mut() {
            for agent in tenant.agents.iter_mut() {
                agent.refs = 0;
            }
        }
        let held = self.reservations.values();
        let expired = self.tombstones.values().map(|t| &t.reservation);
        let reservations = held.chain(expired).map(|r| (r.tenant, r.agent));
        let leases = self.leases.values().map(|l| (l.tenant, l.agent));
        let expired_leases = self
            .lease_tombstones
            .values()
            .map(|t| (t.lease.tenant, t.lease.agent));
        for (t, a) in reservations.chain(leases).chain(expired_leases) {
            let agent = self
                .tenants
                .get_mut(t)
                .and_then(|t| t.agents.get_mut(a))
                .ok_or_else(|| format!("a reservation or lease of unknown agent #{a}"))?;
            agent.refs = agent.refs.saturating_add(1);
        }
        Ok(())
    }
}
