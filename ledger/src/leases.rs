//! Leases: slices of a tenant's limits held for one client process, inside which it decides
//! calls itself and reports them with `Settle` (docs/SPEC.md, "Leases").

use super::{Command, LeaseRefusal, Ledger, Outcome, TenantId};

impl Ledger {
    /// Executes a `Lease` or a `Settle` on the existing tenant `t`.
    pub(super) fn execute_lease(
        &mut self,
        _now_ms: u64,
        cmd: &Command,
        (_t, _tenant_id): (u32, &TenantId),
    ) -> Outcome {
        match cmd {
            Command::Lease { .. } => Outcome::LeaseRefused(LeaseRefusal::Off),
            _ => Outcome::Done,
        }
    }
}
