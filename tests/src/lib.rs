//! Integration tests live in tests/tests/*.rs; this crate's own code is what the compose
//! load client and checker (src/bin) and the tests share: how they reach the cluster, and
//! the policy of a tenant that lends leases.

use anyhow::Context;
use tollgate_client::TlsConfig;

/// TLS to the cluster from `TOLLGATE_TLS_CA` (and `TOLLGATE_TLS_CERT`, `TOLLGATE_TLS_KEY`);
/// `None` when no CA is set.
pub fn tls_from_env() -> anyhow::Result<Option<TlsConfig>> {
    TlsConfig::from_env().context("TLS from TOLLGATE_TLS_CA, TOLLGATE_TLS_CERT, TOLLGATE_TLS_KEY")
}

/// The default policy (what `put_tenant` with none gives), with leases on.
pub fn leased_policy() -> tollgate_client::v1::TenantPolicy {
    use tollgate_client::v1;
    let d = tollgate_ledger::TenantPolicy::default();
    v1::TenantPolicy {
        expiry: v1::ExpiryPolicy::Charge.into(),
        repeat_max: d.repeat_max,
        repeat_window_ms: d.repeat_window_ms,
        velocity_factor: d.velocity_factor,
        velocity_window_ms: d.velocity_window_ms,
        velocity_dimension: v1::Dimension::Cost.into(),
        velocity_floor: d.velocity_floor,
        trip_cooldown_ms: d.trip_cooldown_ms,
        quotas: None,
        shape_floor: d.shape_floor,
        leases: true,
    }
}
