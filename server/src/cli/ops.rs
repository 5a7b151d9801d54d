//! What every operator command shares: which cluster to talk to (`Target`), the handle a
//! handler gets (`Ops`), how failures become advice, and how output reaches stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::{json, Value};
use tollgate_client::{Applied, Client, ClientConfig, Error, TlsConfig};

use super::render;

/// Default number of rows of `audit query` and `reservations`.
pub const ROWS_DEFAULT: u32 = 100;

/// Which cluster to talk to, with which credentials, and how to print.
#[derive(Clone, Debug, Args)]
pub struct Target {
    /// Cluster nodes, comma separated host:port (any node will do; followers point to the
    /// leader).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_CLUSTER",
        value_name = "ADDRS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub cluster: Vec<String>,
    /// A file holding the API key to call with (an admin key, or a tenant-admin or worker
    /// key for what its role allows). Without it, the key in TOLLGATE_API_KEY if set.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_API_KEY_FILE",
        value_name = "PATH"
    )]
    pub api_key_file: Option<PathBuf>,
    /// The CA that signed the nodes' certificates (PEM): connect with TLS (`https://`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_TLS_CA",
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate to present (PEM, with --tls-key), when the nodes ask for one.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Print JSON instead of tables (audit export always writes JSON lines).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
}

impl Target {
    fn endpoints(&self) -> Vec<String> {
        self.cluster
            .iter()
            .map(|addr| addr.trim().to_owned())
            .filter(|addr| !addr.is_empty())
            .collect()
    }

    /// TLS settings from --tls-ca (and --tls-cert, --tls-key); `None` without a CA.
    pub fn tls(&self) -> anyhow::Result<Option<TlsConfig>> {
        let Some(ca) = self
            .tls_ca
            .as_deref()
            .filter(|ca| !ca.as_os_str().is_empty())
        else {
            if self.tls_cert.is_some() {
                anyhow::bail!("--tls-cert needs --tls-ca (TOLLGATE_TLS_CA) as well");
            }
            return Ok(None);
        };
        TlsConfig::from_files(ca, self.tls_cert.as_deref(), self.tls_key.as_deref())
            .map(Some)
            .context("check --tls-ca, --tls-cert and --tls-key")
    }

    /// The API key: from `--api-key-file`, else `TOLLGATE_API_KEY`; None with neither.
    fn api_key(&self) -> anyhow::Result<Option<String>> {
        match &self.api_key_file {
            Some(path) => Ok(Some(
                tollgate_client::read_api_key_file(path).map_err(|e| anyhow!("{e}"))?,
            )),
            None => Ok(std::env::var(tollgate_client::API_KEY_ENV)
                .ok()
                .filter(|key| !key.is_empty())),
        }
    }

    pub(super) fn client_config(&self) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig {
            token: self.api_key()?,
            tls: self.tls()?,
            ..ClientConfig::new(self.endpoints())
        })
    }

    pub(super) fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.client_config()?).context("check --cluster (or TOLLGATE_CLUSTER)")
    }

    /// A client whose calls may take `wait` to be answered (a freeze waits for the leases
    /// on its scope to end), without being cut short and retried meanwhile.
    pub(super) fn patient_client(&self, wait: Duration) -> anyhow::Result<Client> {
        let mut config = self.client_config()?;
        config.attempt_timeout = config.attempt_timeout.saturating_add(wait);
        config.deadline = config.deadline.saturating_add(wait);
        Client::new(config).context("check --cluster (or TOLLGATE_CLUSTER)")
    }

    /// The connection flags to repeat in a suggested command: the cluster this command
    /// used, the TLS files, and the key file it used (paths, never a key).
    pub(super) fn hint_flags(&self) -> String {
        let mut flags = format!("--cluster {}", self.endpoints().join(","));
        for (flag, path) in [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--api-key-file", &self.api_key_file),
        ] {
            if let Some(path) = path {
                flags.push_str(&format!(" {flag} {}", path.display()));
            }
        }
        flags
    }
}

/// A mistake in the flags that only shows once they are read together (money given for
/// a count, say): reported like clap's own usage errors, with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What every handler needs: the client, how to print, and the flags hints repeat.
pub(super) struct Ops {
    pub(super) client: Client,
    pub(super) json: bool,
    pub(super) hint_flags: String,
}

/// The hint that passes credentials.
pub(super) const TOKEN_HINT: &str = "pass an API key whose role allows this with \
     --api-key-file <PATH> (or TOLLGATE_API_KEY_FILE, or TOLLGATE_API_KEY)";

/// A failed call as a person can act on it: what was attempted, why it failed, and for
/// the usual causes what to do, with `hint_flags` (see [`Target::hint_flags`]) in a
/// suggested command.
pub(super) fn failed(
    hint_flags: &str,
    what: impl std::fmt::Display,
    error: Error,
) -> anyhow::Error {
    let hint = match &error {
        Error::PermissionDenied(_) => Some(TOKEN_HINT.to_owned()),
        Error::Unavailable { .. } => Some(format!(
            "check --cluster (or TOLLGATE_CLUSTER) and that a majority of nodes is up: \
             tollgate status {hint_flags}"
        )),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow!("{what}: {error}\nhint: {hint}"),
        None => anyhow!("{what}: {error}"),
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
pub(super) fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("could not write to stdout")
        }
        _ => Ok(()),
    }
}

pub(super) fn out_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("could not encode JSON")?;
    text.push('\n');
    out(&text)
}

impl Ops {
    /// [`failed`] with the flags of this command.
    pub(super) fn failed(&self, what: impl std::fmt::Display, error: Error) -> anyhow::Error {
        failed(&self.hint_flags, what, error)
    }

    /// Reports a mutation: `message` and where it landed in the log, or JSON.
    pub(super) fn applied(&self, message: &str, applied: Applied) -> anyhow::Result<()> {
        if self.json {
            out_json(&json!({ "ok": true, "applied": render::applied_json(applied) }))
        } else {
            out(&format!(
                "{message} (log index {}, term {})\n",
                applied.log_index, applied.term
            ))
        }
    }
}
