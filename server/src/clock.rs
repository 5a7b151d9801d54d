//! The leader's clock, read only when a batch is proposed. Replicas never read it: they use
//! the time stamped in the log.
//!
//! `Clock::system()` is what production runs. `Clock::shifted()` adds an offset that tests and
//! the simulator advance to run hours of agent behaviour in seconds; it is never built from
//! configuration, so a deployed node cannot run on shifted time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self { offset_ms: None }
    }

    /// A clock that runs `offset_ms` ahead of the system clock; share it between the nodes of
    /// one simulated cluster so that a new leader keeps the same time.
    pub fn shifted() -> Self {
        Self {
            offset_ms: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a shifted clock forward; the system clock cannot be moved.
    pub fn advance_ms(&self, ms: u64) {
        if let Some(offset) = &self.offset_ms {
            offset.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// How far a shifted clock was moved on purpose (`advance_ms`), so far; 0 for the system
    /// clock. A jump announced this way is not one the proposer bounds.
    pub fn advanced_ms(&self) -> u64 {
        self.offset_ms
            .as_ref()
            .map_or(0, |offset| offset.load(Ordering::SeqCst))
    }

    pub fn now_ms(&self) -> u64 {
        let system_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let offset_ms = self
            .offset_ms
            .as_ref()
            .map_or(0, |offset| offset.load(Ordering::SeqCst));
        system_ms.saturating_add(offset_ms)
    }
}
