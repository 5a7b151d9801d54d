//! A node's configuration from flags, environment variables and a TOML file, in that order of
//! precedence (clap reads flags and env; the file fills what both left unset).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::alerts::AlertWebhook;
use crate::auth::Auth;
use crate::metrics::tenants::{METRICS_TENANTS_DEFAULT, METRICS_TENANTS_MAX};
use crate::node::NodeConfig;
use crate::raft::{Member, NodeId};
use crate::tls::{NodeTls, TlsPaths};

/// The client listener unless `--listen` says otherwise: loopback, so a node reachable from
/// elsewhere is always a decision.
pub const LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7001);
/// The peer listener unless `--peer-listen` says otherwise.
pub const PEER_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7101);

/// Flags of `tollgate serve`; each also reads an environment variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// This node's id, unique in the cluster (1, 2, 3, ...).
    #[arg(long, env = "TOLLGATE_ID")]
    pub id: Option<NodeId>,
    /// Address of the client listener [default: 127.0.0.1:7001].
    #[arg(long, env = "TOLLGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address clients reach this node at, named in leader hints (default: this node's
    /// entry in --peers, else the listen address).
    #[arg(long, env = "TOLLGATE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address of the peer listener, which serves Raft to the other nodes and nothing
    /// else [default: 127.0.0.1:7101].
    #[arg(long, env = "TOLLGATE_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Address peers reach the peer listener at (default: this node's entry in --peers,
    /// else the peer listen address).
    #[arg(long, env = "TOLLGATE_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// Initial voters, this node included, comma separated:
    /// `ID=CLIENT_HOST:PORT/PEER_HOST:PORT`, e.g. `1=node1:7001/node1:7101`.
    #[arg(long, env = "TOLLGATE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// The cluster CA (PEM; a bundle during a CA rotation): verifies peers, both ways.
    #[arg(long, env = "TOLLGATE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM, SAN URI `tollgate://node/<id>`), presented on both
    /// listeners and to peers.
    #[arg(long, env = "TOLLGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS, and without authentication unless a bootstrap admin key is
    /// given: client and Raft traffic in clear text. Only for a trusted network or
    /// loopback; without it, a node with no TLS or no admin key refuses to start.
    #[arg(
        long,
        env = "TOLLGATE_INSECURE",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    pub insecure: bool,
    /// Where the Raft log and snapshots live.
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the node's HTTP listener: Prometheus metrics (`/metrics`) and the web
    /// console (`/ui`). HTTPS with the node's certificate when it has TLS; with an admin key,
    /// `/metrics` needs it and the console needs a key.
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How many tenants the leader exports limit gauges for (those closest to a limit);
    /// 0 turns them off [default: 50, at most 1000].
    #[arg(long, env = "TOLLGATE_METRICS_TENANTS_MAX")]
    pub metrics_tenants_max: Option<usize>,
    /// A file holding the bootstrap admin key (32 to 256 printable ASCII bytes; `tollgate
    /// key generate` makes one). The key itself may come from `TOLLGATE_ADMIN_KEY`, never
    /// from the command line.
    #[arg(long, env = "TOLLGATE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Export a trace span of each client RPC to this OTLP/gRPC collector
    /// (`http://collector:4317`); no traces when unset.
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Where the leader POSTs each soft-threshold crossing (signed JSON, retried until a
    /// 2xx). https, or http to loopback (anywhere with --insecure).
    #[arg(long, env = "TOLLGATE_ALERT_WEBHOOK", value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// A file holding the webhook's signing secret (16 to 1024 bytes); required with
    /// --alert-webhook.
    #[arg(long, env = "TOLLGATE_ALERT_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// The roots (PEM) an https webhook's certificate must chain to, e.g. the system's
    /// /etc/ssl/certs/ca-certificates.crt.
    #[arg(long, env = "TOLLGATE_ALERT_WEBHOOK_CA_FILE", value_name = "PATH")]
    pub alert_webhook_ca_file: Option<PathBuf>,
    /// Archive the audit trail continuously into sealed segments in this directory (as
    /// `tollgate audit archive` writes them): every node its own copy, on its own disk.
    #[arg(long, env = "TOLLGATE_AUDIT_ARCHIVE_DIR", value_name = "DIR")]
    pub audit_archive_dir: Option<PathBuf>,
    /// How long the audit trail on disk keeps records (e.g. `7d`, `30d`).
    #[arg(long, env = "TOLLGATE_AUDIT_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// Most disk the audit trail takes (e.g. `16GiB`); beyond, the oldest records are
    /// purged even if younger than the retention (logged, and shown by `tollgate status`).
    #[arg(long, env = "TOLLGATE_AUDIT_MAX_BYTES", value_name = "SIZE", value_parser = parse_bytes)]
    pub audit_max_bytes: Option<u64>,
    /// How long a retry gets its first answer back (e.g. `24h`). Give every node the same.
    #[arg(long, env = "TOLLGATE_ANSWER_HORIZON", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub answer_horizon: Option<Duration>,
    /// Most disk the remembered answers take; beyond, the oldest are forgotten and the
    /// horizon shortens (logged, and shown by `tollgate status`).
    #[arg(long, env = "TOLLGATE_ANSWERS_MAX_BYTES", value_name = "SIZE", value_parser = parse_bytes)]
    pub answers_max_bytes: Option<u64>,
    /// A TOML file with the same settings (keys as the flags, with underscores).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The TOML file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<NodeId>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    peer_listen: Option<SocketAddr>,
    peer_advertise: Option<String>,
    peers: Option<BTreeMap<String, String>>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure: Option<bool>,
    data_dir: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    metrics_tenants_max: Option<usize>,
    admin_key_file: Option<PathBuf>,
    otlp_endpoint: Option<String>,
    alert_webhook: Option<String>,
    alert_webhook_secret_file: Option<PathBuf>,
    alert_webhook_ca_file: Option<PathBuf>,
    audit_archive_dir: Option<PathBuf>,
    audit_retention: Option<String>,
    audit_max_bytes: Option<String>,
    answer_horizon: Option<String>,
    answers_max_bytes: Option<String>,
}

/// Settings beyond the node itself.
#[derive(Debug)]
pub struct ServeConfig {
    pub node: NodeConfig,
    pub metrics_listen: Option<SocketAddr>,
    /// Tenants the leader exports limit gauges for (see `metrics::tenants`).
    pub metrics_tenants_max: usize,
    /// `--insecure`: serving without TLS was asked for.
    pub insecure: bool,
    /// Where trace spans go (OTLP over gRPC); `None`: no traces.
    pub otlp_endpoint: Option<String>,
}

impl ServeConfig {
    /// Refuses to serve without protection that was not explicitly waived: a node without
    /// TLS starts only with `--insecure`.
    pub fn check_secure(&self) -> anyhow::Result<()> {
        if self.node.tls.is_none() && !self.insecure {
            bail!(
                "TLS is not configured: set --tls-ca, --tls-cert and --tls-key (or \
                 TOLLGATE_TLS_CA, TOLLGATE_TLS_CERT, TOLLGATE_TLS_KEY, or tls_ca, tls_cert, \
                 tls_key in the config file; `tollgate certs init` makes them), or pass \
                 --insecure (TOLLGATE_INSECURE=true) to serve clear text on a trusted network"
            );
        }
        Ok(())
    }

    /// What the operator is told at every start of a node without TLS; `None` with TLS.
    pub fn insecure_warning(&self) -> Option<String> {
        if self.node.tls.is_some() {
            return None;
        }
        Some(format!(
            "insecure mode (no TLS): client traffic on {} (API keys included) and Raft traffic \
             on {} are clear text; anyone on the network path can read and replay tokens, \
             and anyone who can reach the peer port can send Raft messages that rewrite the \
             ledger",
            self.node.listen, self.node.peer_listen
        ))
    }
}

fn parse_pairs(pairs: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("{what} entry {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

/// A peer's `CLIENT_HOST:PORT/PEER_HOST:PORT`.
fn parse_member(id: NodeId, text: &str) -> anyhow::Result<Member> {
    let usage = || {
        format!(
            "peer {id} {text:?} is not CLIENT_HOST:PORT/PEER_HOST:PORT \
             (e.g. {id}=node{id}:7001/node{id}:7101)"
        )
    };
    let (addr, peer_addr) = text.split_once('/').with_context(usage)?;
    let (addr, peer_addr) = (addr.trim(), peer_addr.trim());
    let host_port = |a: &str| {
        a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
    };
    if !host_port(addr) || !host_port(peer_addr) {
        bail!(usage());
    }
    Ok(Member::new(addr, peer_addr))
}

fn parse_peers(pairs: Vec<(String, String)>) -> anyhow::Result<BTreeMap<NodeId, Member>> {
    pairs
        .into_iter()
        .map(|(id, addr)| {
            let id = id
                .parse::<NodeId>()
                .with_context(|| format!("peer id {id:?} is not a number"))?;
            Ok((id, parse_member(id, &addr)?))
        })
        .collect()
}

fn read_file(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

/// Env var holding the bootstrap admin key itself (prefer a file: `TOLLGATE_ADMIN_KEY_FILE`).
pub const ADMIN_KEY_ENV: &str = "TOLLGATE_ADMIN_KEY";
/// The credential half of a secure start: a bootstrap admin key from `key_file` or
/// `TOLLGATE_ADMIN_KEY` turns authentication on; without one, only `--insecure` starts.
fn resolve_auth(key_file: Option<PathBuf>, insecure: bool) -> anyhow::Result<Auth> {
    let key = match key_file {
        Some(path) => Some(
            tollgate_client::read_api_key_file(&path)
                .map_err(|e| anyhow::anyhow!("bootstrap admin key: {e}"))?,
        ),
        None => std::env::var(ADMIN_KEY_ENV)
            .ok()
            .filter(|key| !key.is_empty()),
    };
    match key {
        Some(key) => Auth::with_bootstrap_key(&key).map_err(|e| anyhow::anyhow!("{e}")),
        None if insecure => Ok(Auth::default()),
        None => bail!(
            "no bootstrap admin key: set --admin-key-file, TOLLGATE_ADMIN_KEY_FILE or \
             TOLLGATE_ADMIN_KEY (`tollgate key generate` makes one), or pass --insecure \
             to serve with authentication off"
        ),
    }
}

/// The alert webhook, its secret read from its file: a URL without a secret, or a secret
/// without a URL, is a mistake worth refusing to start for.
fn resolve_alerts(
    url: Option<String>,
    secret_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<Option<AlertWebhook>> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    match (url, secret_file) {
        (None, None) => Ok(None),
        (Some(_), None) => bail!(
            "--alert-webhook needs --alert-webhook-secret-file (TOLLGATE_ALERT_WEBHOOK_SECRET_FILE)"
        ),
        (None, Some(_)) => bail!("--alert-webhook-secret-file without --alert-webhook"),
        (Some(url), Some(secret_file)) => {
            let secret = read(&secret_file, "alert webhook secret")?;
            let ca = ca_file
                .map(|path| read(&path, "alert webhook CA file"))
                .transpose()?;
            Ok(Some(AlertWebhook::new(
                &url,
                &secret,
                ca.as_deref(),
                insecure,
            )?))
        }
    }
}

impl ServeArgs {
    /// The node's settings from flags, environment and file, checked (`check_secure`
    /// included): an error names what is wrong or missing.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let mut file = read_file(self.config.as_ref())?;
        let (trail_flags, trail_file) = (TrailFlags::of(&self), FileTrail::take(&mut file));
        let Some(id) = self.id.or(file.id) else {
            bail!("node id missing: --id, TOLLGATE_ID or `id` in the config file");
        };
        let tls_paths = TlsPaths {
            ca: self.tls_ca.clone().or(file.tls_ca.take()),
            cert: self.tls_cert.clone().or(file.tls_cert.take()),
            key: self.tls_key.clone().or(file.tls_key.take()),
        };
        let tls = match tls_paths.is_empty() {
            true => None,
            false => Some(NodeTls::load(id, &tls_paths)?),
        };
        let listen = self.listen.or(file.listen).unwrap_or(LISTEN_DEFAULT);
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("tollgate-data-{id}")));
        let peers = if self.peers.is_empty() {
            parse_peers(file.peers.unwrap_or_default().into_iter().collect())?
        } else {
            parse_peers(parse_pairs(&self.peers, "--peers")?)?
        };
        let insecure = self.insecure || file.insecure.unwrap_or(false);
        let admin_key_file = self.admin_key_file.or(file.admin_key_file);
        let mut node = NodeConfig::new(id, listen, data_dir);
        node.peer_listen = self
            .peer_listen
            .or(file.peer_listen)
            .unwrap_or(PEER_LISTEN_DEFAULT);
        node.advertise = self.advertise.or(file.advertise);
        node.peer_advertise = self.peer_advertise.or(file.peer_advertise);
        node.peers = peers;
        node.tls = tls;
        let metrics_tenants_max = self
            .metrics_tenants_max
            .or(file.metrics_tenants_max)
            .unwrap_or(METRICS_TENANTS_DEFAULT);
        if metrics_tenants_max > METRICS_TENANTS_MAX {
            bail!(
                "--metrics-tenants-max is {metrics_tenants_max}, more than METRICS_TENANTS_MAX \
                 ({METRICS_TENANTS_MAX}): each tenant brings five series per limit"
            );
        }
        node.alerts = resolve_alerts(
            self.alert_webhook.or(file.alert_webhook.take()),
            self.alert_webhook_secret_file
                .or(file.alert_webhook_secret_file.take()),
            self.alert_webhook_ca_file
                .or(file.alert_webhook_ca_file.take()),
            insecure,
        )?;
        node.audit_archive_dir = self.audit_archive_dir.or(file.audit_archive_dir.take());
        resolve_trail(&mut node.trail, &trail_flags, trail_file)?;
        let mut config = ServeConfig {
            node,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            metrics_tenants_max,
            insecure,
            otlp_endpoint: (self.otlp_endpoint.or(file.otlp_endpoint)).filter(|e| !e.is_empty()),
        };
        config.check_secure()?;
        // Credentials after TLS: an operator missing both hears of TLS first, then of keys.
        config.node.auth = resolve_auth(admin_key_file, insecure)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path) -> ServeArgs {
        ServeArgs {
            id: Some(1),
            data_dir: Some(dir.join("data")),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn otlp_endpoint_comes_from_the_flag_else_the_file_else_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "otlp_endpoint = \"http://collector:4317\"\n").unwrap();
        let resolve = |config: Option<PathBuf>, flag: Option<&str>| {
            ServeArgs {
                insecure: true,
                config,
                otlp_endpoint: flag.map(str::to_owned),
                ..args(dir.path())
            }
            .resolve()
            .unwrap()
            .otlp_endpoint
        };
        assert_eq!(resolve(None, None), None);
        assert_eq!(resolve(None, Some("")), None, "an empty variable is off");
        let from_file = resolve(Some(file.clone()), None);
        assert_eq!(from_file.as_deref(), Some("http://collector:4317"));
        let from_flag = resolve(Some(file), Some("http://other:4317"));
        assert_eq!(from_flag.as_deref(), Some("http://other:4317"));
    }

    #[test]
    fn trail_settings_come_from_the_flags_else_the_file_else_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "audit_retention = \"30d\"\nanswers_max_bytes = \"2GiB\"\nanswer_horizon = \"48h\"\n",
        )
        .unwrap();
        let base = ServeArgs {
            insecure: true,
            ..args(dir.path())
        };
        let defaults = base.clone().resolve().unwrap().node.trail;
        assert_eq!(defaults, tollgate_store::StoreConfig::default());
        let trail = ServeArgs {
            config: Some(file),
            answer_horizon: Some(Duration::from_secs(36 * 3_600)),
            audit_max_bytes: Some(parse_bytes("8GiB").unwrap()),
            ..base.clone()
        }
        .resolve()
        .unwrap()
        .node
        .trail;
        assert_eq!(trail.audit_retention_ms, 30 * 86_400_000, "from the file");
        assert_eq!(trail.answers_max_bytes, 2 << 30, "from the file");
        assert_eq!(trail.answer_horizon_ms, 36 * 3_600_000, "the flag wins");
        assert_eq!(trail.audit_max_bytes, 8 << 30, "the flag");
        let short = ServeArgs {
            answer_horizon: Some(Duration::from_secs(60)),
            ..base
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(short.contains("--answer-horizon"), "{short}");
    }

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("16GiB"), Ok(16 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "0", "GiB", "12GB", "-1GiB", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn metrics_tenants_max_defaults_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let insecure = ServeArgs {
            insecure: true,
            ..args(dir.path())
        };
        let config = insecure.clone().resolve().unwrap();
        assert_eq!(config.metrics_tenants_max, METRICS_TENANTS_DEFAULT);
        let error = ServeArgs {
            metrics_tenants_max: Some(METRICS_TENANTS_MAX + 1),
            ..insecure
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(error.contains("METRICS_TENANTS_MAX"), "{error}");
    }

    #[test]
    fn an_alert_webhook_needs_its_secret_and_the_secret_its_webhook() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("alert.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let with = |url: Option<&str>, secret_file: Option<&std::path::Path>| ServeArgs {
            insecure: true,
            alert_webhook: url.map(str::to_owned),
            alert_webhook_secret_file: secret_file.map(|p| p.to_path_buf()),
            ..args(dir.path())
        };
        assert!(with(None, None).resolve().unwrap().node.alerts.is_none());
        let config = with(Some("http://127.0.0.1:9000/hook"), Some(&secret));
        assert!(config.resolve().unwrap().node.alerts.is_some());
        for (url, secret_file, named) in [
            (
                Some("http://127.0.0.1:9000/hook"),
                None,
                "--alert-webhook-secret-file",
            ),
            (None, Some(secret.as_path()), "without --alert-webhook"),
            (
                Some("ftp://127.0.0.1/"),
                Some(secret.as_path()),
                "neither http nor https",
            ),
        ] {
            let error = with(url, secret_file).resolve().unwrap_err().to_string();
            assert!(error.contains(named), "{named} in {error}");
        }
    }

    #[test]
    fn serve_refuses_without_tls_unless_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let error = args(dir.path()).resolve().unwrap_err().to_string();
        for named in [
            "TLS is not configured",
            "--tls-ca",
            "--tls-key",
            "--insecure",
        ] {
            assert!(error.contains(named), "{named} in {error}");
        }
        let config = ServeArgs {
            insecure: true,
            ..args(dir.path())
        }
        .resolve()
        .unwrap();
        assert!(config.node.tls.is_none());
        assert!(config.insecure_warning().unwrap().contains("clear text"));
        assert_eq!(config.node.listen, LISTEN_DEFAULT);
        assert_eq!(config.node.peer_listen, PEER_LISTEN_DEFAULT);
        assert!(LISTEN_DEFAULT.ip().is_loopback() && PEER_LISTEN_DEFAULT.ip().is_loopback());
    }

    #[test]
    fn serve_starts_secure_with_the_files_of_certs_init() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::cli::certs::init(&crate::cli::certs::InitArgs {
            dir: certs.clone(),
            nodes: vec!["1=node1".into(), "2=node2".into()],
            clients: vec![],
            force: false,
            keep_existing: false,
        })
        .unwrap();
        let tls = |cert: &str, key: Option<&str>| ServeArgs {
            tls_ca: Some(certs.join("ca.pem")),
            tls_cert: Some(certs.join(cert)),
            tls_key: key.map(|key| certs.join(key)),
            admin_key_file: Some(certs.join("admin.key")),
            ..args(dir.path())
        };
        let config = tls("node-1.pem", Some("node-1.key")).resolve().unwrap();
        assert!(config.node.tls.is_some());
        assert!(config.node.auth.enabled());
        assert!(config.insecure_warning().is_none());

        let error = format!("{:#}", tls("node-1.pem", None).resolve().unwrap_err());
        assert!(error.contains("--tls-key"), "{error}");
        let error = format!(
            "{:#}",
            tls("node-2.pem", Some("node-2.key")).resolve().unwrap_err()
        );
        assert!(error.contains("node 2's"), "{error}");
    }

    #[test]
    fn peers_name_a_client_and_a_peer_address() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeArgs {
            insecure: true,
            peers: vec![
                "1=node1:7001/node1:7101".into(),
                "2=[::1]:7002/[::1]:7102".into(),
            ],
            ..args(dir.path())
        }
        .resolve()
        .unwrap();
        assert_eq!(
            config.node.peers[&1],
            Member::new("node1:7001", "node1:7101")
        );
        assert_eq!(
            config.node.peers[&2],
            Member::new("[::1]:7002", "[::1]:7102")
        );
        for bad in [
            "1=node1:7001",
            "1=node1:7001/",
            "1=/node1:7101",
            "1=a:0/b:1",
            "x=a:1/b:1",
        ] {
            let error = ServeArgs {
                insecure: true,
                peers: vec![bad.into()],
                ..args(dir.path())
            }
            .resolve()
            .unwrap_err()
            .to_string();
            assert!(error.contains("peer"), "{bad}: {error}");
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// A node with TLS (from `certs init` in a directory of its own), this key file and
    /// this `--insecure`.
    fn args(key_file: Option<PathBuf>, insecure: bool) -> ServeArgs {
        static CERTS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let certs = CERTS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            crate::cli::certs::init(&crate::cli::certs::InitArgs {
                dir: dir.path().to_path_buf(),
                nodes: vec!["1=node1".into()],
                clients: vec![],
                force: false,
                keep_existing: false,
            })
            .unwrap();
            dir
        });
        ServeArgs {
            id: Some(1),
            tls_ca: Some(certs.path().join("ca.pem")),
            tls_cert: Some(certs.path().join("node-1.pem")),
            tls_key: Some(certs.path().join("node-1.key")),
            admin_key_file: key_file,
            insecure,
            ..ServeArgs::default()
        }
    }

    /// Serving needs a bootstrap admin key, or `--insecure` said out loud; a bad key file
    /// is refused with what is wrong, never with the key.
    #[test]
    fn serve_refuses_without_a_bootstrap_key_unless_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let error = args(None, false)
            .resolve()
            .expect_err("refused")
            .to_string();
        assert!(error.contains("--insecure"), "{error}");
        assert!(!args(None, true).resolve().unwrap().node.auth.enabled());

        let good = dir.path().join("admin.key");
        std::fs::write(&good, format!("{}\n", crate::auth::new_bootstrap_key())).unwrap();
        assert!(args(Some(good), false)
            .resolve()
            .unwrap()
            .node
            .auth
            .enabled());

        let short = dir.path().join("short.key");
        std::fs::write(&short, "hunter2").unwrap();
        let error = args(Some(short), true)
            .resolve()
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("32 to 256") && !error.contains("hunter2"),
            "{error}"
        );
        let missing = args(Some(dir.path().join("absent")), false).resolve();
        assert!(missing.is_err());
    }
}

/// The trail's flags, as given.
struct TrailFlags {
    audit_retention: Option<Duration>,
    audit_max_bytes: Option<u64>,
    answer_horizon: Option<Duration>,
    answers_max_bytes: Option<u64>,
}

/// The trail's settings in the config file, as written.
struct FileTrail {
    audit_retention: Option<String>,
    audit_max_bytes: Option<String>,
    answer_horizon: Option<String>,
    answers_max_bytes: Option<String>,
}

impl FileTrail {
    fn take(file: &mut FileConfig) -> Self {
        Self {
            audit_retention: file.audit_retention.take(),
            audit_max_bytes: file.audit_max_bytes.take(),
            answer_horizon: file.answer_horizon.take(),
            answers_max_bytes: file.answers_max_bytes.take(),
        }
    }
}

impl TrailFlags {
    fn of(flags: &ServeArgs) -> Self {
        Self {
            audit_retention: flags.audit_retention,
            audit_max_bytes: flags.audit_max_bytes,
            answer_horizon: flags.answer_horizon,
            answers_max_bytes: flags.answers_max_bytes,
        }
    }
}

/// The trail's retention and horizon: flags first, then the file, else the defaults.
fn resolve_trail(
    trail: &mut tollgate_store::StoreConfig,
    flags: &TrailFlags,
    file: FileTrail,
) -> anyhow::Result<()> {
    let TrailFlags {
        audit_retention,
        audit_max_bytes,
        answer_horizon,
        answers_max_bytes,
    } = flags;
    let file_bytes = |value: Option<String>, key: &str| {
        value
            .map(|v| parse_bytes(&v).map_err(|e| anyhow::anyhow!("{key} in the config file: {e}")))
            .transpose()
    };
    let file_duration = |value: Option<String>, key: &str| {
        value
            .map(|v| {
                humantime::parse_duration(&v)
                    .map_err(|e| anyhow::anyhow!("{key} in the config file: {e}"))
            })
            .transpose()
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let retention_file = file_duration(file.audit_retention, "audit_retention")?;
    if let Some(d) = audit_retention.or(retention_file) {
        trail.audit_retention_ms = ms(d);
    }
    let horizon_file = file_duration(file.answer_horizon, "answer_horizon")?;
    if let Some(d) = answer_horizon.or(horizon_file) {
        trail.answer_horizon_ms = ms(d);
    }
    let audit_file = file_bytes(file.audit_max_bytes, "audit_max_bytes")?;
    if let Some(bytes) = audit_max_bytes.or(audit_file) {
        trail.audit_max_bytes = bytes;
    }
    let answers_file = file_bytes(file.answers_max_bytes, "answers_max_bytes")?;
    if let Some(bytes) = answers_max_bytes.or(answers_file) {
        trail.answers_max_bytes = bytes;
    }
    if trail.answer_horizon_ms < tollgate_ledger::DEDUP_WINDOW_MS {
        bail!(
            "--answer-horizon must be at least the ledger's memory of answers ({} s)",
            tollgate_ledger::DEDUP_WINDOW_MS / 1_000
        );
    }
    Ok(())
}

/// A size: a number of bytes, or with `KiB`, `MiB`, `GiB` or `TiB` (`16GiB`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use KiB, MiB, GiB or TiB"
            ))
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 16GiB"))?;
    number
        .checked_mul(1u64 << shift)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} is zero or too large"))
}
