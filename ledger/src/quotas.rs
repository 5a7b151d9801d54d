//! Per-tenant quotas: how much of each shared bound one tenant may take, so that no tenant
//! can starve another or make the ledger evict another's state.
//!
//! Each quota has a default (what a tenant gets when an admin sets none) and a maximum (the
//! ledger-wide bound it may not exceed: a larger quota is INVALID_ARGUMENT). A tenant at a
//! quota has its new requests of that kind refused with `Rejection::BoundReached` naming
//! the quota's `Bound`; nothing of any tenant is evicted to make room. Lowering a quota
//! below what a tenant already holds removes nothing: it only refuses new requests until
//! the tenant is back under it.

use serde::{Deserialize, Serialize};

use super::commands::RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX;
use super::dedup::DEDUP_ENTRIES_MAX;
use super::limits::LIMITS_PER_TENANT_MAX;
use super::{Bound, InvalidInput};

/// Default quota of agents: a twentieth of `AGENTS_MAX`.
pub const AGENTS_QUOTA_DEFAULT: u64 = 100_000;
/// Most distinct tool ids one tenant's limits may name. Tool-keyed state lives only in
/// limits (scopes `tool` and `tool-tenant`), so this is at most `LIMITS_PER_TENANT_MAX`.
pub const TOOLS_PER_TENANT_MAX: usize = LIMITS_PER_TENANT_MAX;
/// Default quota of distinct tools named by limits.
pub const TOOLS_QUOTA_DEFAULT: u64 = TOOLS_PER_TENANT_MAX as u64;
/// Default quota of limits.
pub const LIMITS_QUOTA_DEFAULT: u64 = LIMITS_PER_TENANT_MAX as u64;
/// Most API keys a quota may allow one tenant; equals the key store's `KEYS_PER_TENANT_MAX`.
/// Default quota of API keys: the key store's `KEYS_PER_TENANT_MAX`.
pub const KEYS_QUOTA_DEFAULT: u64 = crate::KEYS_PER_TENANT_MAX as u64;
/// Default quota of reservations in flight.
pub const RESERVATIONS_IN_FLIGHT_QUOTA_DEFAULT: u64 = RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX as u64;
/// Most remembered answers one tenant's quota may allow: the whole table.
pub const ANSWERS_PER_TENANT_MAX: usize = DEDUP_ENTRIES_MAX;
/// Default quota of remembered answers: a tenth of `DEDUP_ENTRIES_MAX`, 200,000 answers in
/// `DEDUP_WINDOW_MS` (10 minutes), about 330 reserves or records a second sustained.
pub const ANSWERS_QUOTA_DEFAULT: u64 = 200_000;
/// Most commands one tenant may have waiting in a node's proposal queue (the node's whole
/// queue, `QUEUE_COMMANDS_MAX` of the server).
pub const PROPOSALS_QUEUED_PER_TENANT_MAX: usize = 16_384;
/// Default quota of queued proposals: two full `Tollgate.Batch` calls.
pub const PROPOSALS_QUEUED_QUOTA_DEFAULT: u64 = 2_048;

/// How much of each shared bound one tenant may hold. Every field is at least 1 and at most
/// the bound named in `Bound::max` of its `bound()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantQuotas {
    /// Agents (`AGENTS_PER_TENANT_MAX` at most).
    pub agents: u64,
    /// Distinct tool ids the tenant's limits name (`TOOLS_PER_TENANT_MAX` at most).
    pub tools: u64,
    /// Limits (`LIMITS_PER_TENANT_MAX` at most).
    pub limits: u64,
    /// API keys (`KEYS_PER_TENANT_MAX` at most).
    pub keys: u64,
    /// Reservations in flight (`RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX` at most).
    pub reservations_in_flight: u64,
    /// Answers remembered for retries (`ANSWERS_PER_TENANT_MAX` at most). Reserves and
    /// records are refused at it; commits, releases and admin commands are not (each ends
    /// or changes state the tenant already has).
    pub answers: u64,
    /// Commands waiting in a node's proposal queue (`PROPOSALS_QUEUED_PER_TENANT_MAX`).
    pub proposals_queued: u64,
    /// Sessions remembered (`SESSIONS_PER_TENANT_MAX` at most).
    pub sessions: u64,
}

impl Default for TenantQuotas {
    fn default() -> Self {
        TenantQuotas {
            agents: AGENTS_QUOTA_DEFAULT,
            tools: TOOLS_QUOTA_DEFAULT,
            limits: LIMITS_QUOTA_DEFAULT,
            keys: KEYS_QUOTA_DEFAULT,
            reservations_in_flight: RESERVATIONS_IN_FLIGHT_QUOTA_DEFAULT,
            answers: ANSWERS_QUOTA_DEFAULT,
            proposals_queued: PROPOSALS_QUEUED_QUOTA_DEFAULT,
            sessions: crate::SESSIONS_QUOTA_DEFAULT,
        }
    }
}

impl TenantQuotas {
    /// Every quota with its bound and wire name, in the order of the fields.
    pub fn each(&self) -> [(&'static str, u64, Bound); 8] {
        [
            ("agents", self.agents, Bound::AgentsPerTenant),
            ("tools", self.tools, Bound::ToolsPerTenant),
            ("limits", self.limits, Bound::LimitsPerTenant),
            ("keys", self.keys, Bound::KeysPerTenant),
            (
                "reservations_in_flight",
                self.reservations_in_flight,
                Bound::ReservationsInFlightPerTenant,
            ),
            ("answers", self.answers, Bound::AnswersPerTenant),
            (
                "proposals_queued",
                self.proposals_queued,
                Bound::ProposalsQueuedPerTenant,
            ),
            ("sessions", self.sessions, Bound::SessionsPerTenant),
        ]
    }

    /// Each quota within 1 and its bound.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        for (name, value, bound) in self.each() {
            if value == 0 || value > bound.max() {
                return Err(InvalidInput(format!(
                    "quota {name} is {value}; it must be within 1 and {} ({})",
                    bound.name(),
                    bound.max()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(quotas: TenantQuotas, name: &str, value: u64) -> TenantQuotas {
        let mut q = quotas;
        let field = match name {
            "agents" => &mut q.agents,
            "tools" => &mut q.tools,
            "limits" => &mut q.limits,
            "keys" => &mut q.keys,
            "reservations_in_flight" => &mut q.reservations_in_flight,
            "answers" => &mut q.answers,
            "sessions" => &mut q.sessions,
            _ => &mut q.proposals_queued,
        };
        *field = value;
        q
    }

    /// Defaults are valid; each quota may be 1 or its bound, never 0 or above the bound
    /// (whose name the error gives).
    #[test]
    fn defaults_are_valid_and_each_bound_is_enforced() {
        let defaults = TenantQuotas::default();
        defaults.validate().unwrap();
        for (name, _, bound) in defaults.each() {
            with(defaults, name, bound.max()).validate().unwrap();
            with(defaults, name, 1).validate().unwrap();
            let error = with(defaults, name, bound.max() + 1)
                .validate()
                .unwrap_err()
                .0;
            assert!(
                error.contains(bound.name()) && error.contains(name),
                "{error}"
            );
            assert!(with(defaults, name, 0).validate().is_err(), "{name} = 0");
        }
    }
}
