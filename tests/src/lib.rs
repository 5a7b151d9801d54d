//! Integration tests live in tests/tests/*.rs; this crate's own code is what the compose
//! load client and checker (src/bin) share: how they reach the cluster and with what key.

use anyhow::Context;
use tollgate_client::TlsConfig;

/// TLS to the cluster from `TOLLGATE_TLS_CA` (and `TOLLGATE_TLS_CERT`, `TOLLGATE_TLS_KEY`);
/// `None` when no CA is set.
pub fn tls_from_env() -> anyhow::Result<Option<TlsConfig>> {
    TlsConfig::from_env().context("TLS from TOLLGATE_TLS_CA, TOLLGATE_TLS_CERT, TOLLGATE_TLS_KEY")
}

/// Longest admin key file read.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// The admin credential: the key in the file `TOLLGATE_API_KEY_FILE` names when it is set,
/// else `token`.
pub fn admin_credential(token: Option<&str>) -> anyhow::Result<String> {
    use std::io::Read;
    if let Some(path) = std::env::var_os("TOLLGATE_API_KEY_FILE").filter(|p| !p.is_empty()) {
        let mut key = String::new();
        std::fs::File::open(&path)
            .and_then(|file| file.take(KEY_FILE_BYTES_MAX).read_to_string(&mut key))
            .with_context(|| format!("reading TOLLGATE_API_KEY_FILE {}", path.to_string_lossy()))?;
        return Ok(key.trim().to_owned());
    }
    token
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .context("no admin credential: set TOLLGATE_API_KEY_FILE or TOLLGATE_ADMIN_TOKEN")
}
