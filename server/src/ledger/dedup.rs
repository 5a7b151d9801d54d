//! Exactly once: the first answer to each (tenant, request id), for retries.
//!
//! A retry with the same payload gets the first answer back and changes nothing (no audit
//! record either); the same id with another payload is `RequestIdReused`. Answers are kept
//! per tenant (so lookups borrow, never allocate) and forgotten in the order they were given.

use xxhash_rust::xxh3::Xxh3Default;

use super::state::DedupEntry;
use super::{Command, Ledger, Outcome, Rejection, RequestId, TenantId};

/// How long an answer is remembered: 10 minutes. It must cover a client's retries across a
/// leader change (election timeouts are seconds) with a wide margin; a retry after that is
/// a new request.
pub const DEDUP_WINDOW_MS: u64 = 600_000;
/// Most answers remembered over all tenants (~300 bytes each: ~600 MB at most); beyond it
/// the oldest is forgotten first, even within its window.
pub const DEDUP_ENTRIES_MAX: usize = 2_000_000;

/// xxh3-128 of the command's postcard encoding (deterministic and endian-independent),
/// streamed: no buffer.
pub fn payload_hash(cmd: &Command) -> u128 {
    let mut hasher = Xxh3Default::new();
    // Serializing into a hasher cannot fail: it has no capacity to run out of.
    let _ = postcard::serialize_with_flavor(cmd, Xxh3Flavor(&mut hasher));
    hasher.digest128()
}

struct Xxh3Flavor<'a>(&'a mut Xxh3Default);

impl postcard::ser_flavors::Flavor for Xxh3Flavor<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update(&[data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Ledger {
    /// The remembered answer for a retry, `RequestIdReused` for another payload, or None
    /// for a new request.
    pub(super) fn remembered(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        payload: u128,
    ) -> Option<(Outcome, u64)> {
        let entry = self.tenants.get(tenant)?.requests.get(request_id)?;
        if entry.payload == payload {
            Some((entry.outcome.clone(), entry.position))
        } else {
            let reused = Rejection::RequestIdReused(format!(
                "request {request_id} of tenant {tenant} was first sent at {} ms with another payload",
                entry.at_ms
            ));
            Some((Outcome::Rejected(reused), entry.position))
        }
    }

    pub(super) fn remember(
        &mut self,
        tenant_id: &TenantId,
        request_id: &RequestId,
        payload: u128,
        outcome: &Outcome,
        now_ms: u64,
        position: u64,
    ) {
        while self.dedup_order.len() >= DEDUP_ENTRIES_MAX {
            self.forget_oldest_request();
        }
        let Some(tenant) = self.tenants.get_mut(tenant_id) else {
            return;
        };
        let entry = DedupEntry {
            payload,
            at_ms: now_ms,
            position,
            outcome: outcome.clone(),
        };
        let previous = tenant.requests.insert(request_id.clone(), entry);
        debug_assert!(previous.is_none(), "an answer was remembered twice");
        self.dedup_order
            .push_back((now_ms, tenant_id.clone(), request_id.clone()));
    }

    /// Forgets answers given `DEDUP_WINDOW_MS` or more before `now_ms`.
    pub(super) fn forget_requests_before(&mut self, now_ms: u64) {
        while let Some(&(at_ms, _, _)) = self.dedup_order.front() {
            if at_ms.saturating_add(DEDUP_WINDOW_MS) > now_ms {
                break;
            }
            self.forget_oldest_request();
        }
    }

    fn forget_oldest_request(&mut self) {
        if let Some((_, tenant, request_id)) = self.dedup_order.pop_front() {
            if let Some(t) = self.tenants.get_mut(&tenant) {
                t.requests.remove(&request_id);
            }
        }
    }
}
