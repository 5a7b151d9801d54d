//! Exactly once: the first answer to each (tenant, request id), for retries.
//!
//! A retry with the same payload gets the first answer back and changes nothing (no audit
//! record either); the same id with another payload is `RequestIdReused`. Answers are kept
//! per tenant (so lookups borrow, never allocate) and forgotten in the order they were given.

use xxhash_rust::xxh3::xxh3_128;

use super::state::{DedupEntry, RequestKey};
use super::{Command, Ledger, Outcome, Rejection, RequestId};

/// How long an answer is remembered: 10 minutes. It must cover a client's retries across a
/// leader change (election timeouts are seconds) with a wide margin; a retry after that is
/// a new request.
pub const DEDUP_WINDOW_MS: u64 = 600_000;
/// Most answers remembered over all tenants (~300 bytes each: ~600 MB at most); beyond it
/// the oldest is forgotten first, even within its window.
pub const DEDUP_ENTRIES_MAX: usize = 2_000_000;

/// xxh3-128 of the command's postcard encoding (deterministic and endian-independent),
/// encoded into `scratch` (reused, so no allocation once it has grown) and hashed at once.
pub fn payload_hash(scratch: &mut Vec<u8>, cmd: &Command) -> u128 {
    scratch.clear();
    // Serializing plain data into a Vec cannot fail but for memory; an encoding cut short
    // would still hash the same on every replica.
    let bytes = postcard::to_extend(cmd, std::mem::take(scratch)).unwrap_or_default();
    let hash = xxh3_128(&bytes);
    *scratch = bytes;
    hash
}

impl Ledger {
    /// The remembered answer for a retry, `RequestIdReused` for another payload, or None
    /// for a new request.
    pub(super) fn remembered(
        &self,
        tenant: u32,
        request_id: &RequestId,
        payload: u128,
    ) -> Option<(Outcome, u64)> {
        let t = self.tenants.get(tenant)?;
        let entry = t.requests.get(request_id.as_str())?;
        if entry.payload == payload {
            Some((entry.outcome.clone(), entry.position))
        } else {
            let reused = Rejection::RequestIdReused(format!(
                "request {request_id} of tenant {} was first sent at {} ms with another payload",
                t.id, entry.at_ms
            ));
            Some((Outcome::Rejected(reused), entry.position))
        }
    }

    pub(super) fn remember(
        &mut self,
        tenant: u32,
        request_id: &RequestId,
        payload: u128,
        outcome: &Outcome,
        now_ms: u64,
        position: u64,
    ) {
        while self.dedup_order.len() >= DEDUP_ENTRIES_MAX {
            self.forget_oldest_request();
        }
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        let entry = DedupEntry {
            payload,
            at_ms: now_ms,
            position,
            outcome: outcome.clone(),
        };
        let key = RequestKey(request_id.as_str().into());
        let previous = t.requests.insert(key.clone(), entry);
        debug_assert!(previous.is_none(), "an answer was remembered twice");
        self.dedup_order.push_back((now_ms, tenant, key));
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
            if let Some(t) = self.tenants.get_mut(tenant) {
                t.requests.remove(&request_id);
            }
        }
    }
}
