//! Integration tests live in tests/tests/*.rs; this crate's own code is what the compose
//! load client and checker (src/bin) share: how they reach the cluster.

use anyhow::Context;
use tollgate_client::TlsConfig;

/// TLS to the cluster from `TOLLGATE_TLS_CA` (and `TOLLGATE_TLS_CERT`, `TOLLGATE_TLS_KEY`);
/// `None` when no CA is set.
pub fn tls_from_env() -> anyhow::Result<Option<TlsConfig>> {
    TlsConfig::from_env().context("TLS from TOLLGATE_TLS_CA, TOLLGATE_TLS_CERT, TOLLGATE_TLS_KEY")
}
