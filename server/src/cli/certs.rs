//! `tollgate certs init`: a cluster CA, a certificate per node and per client, and a
//! bootstrap admin key, for a cluster that runs with mutual TLS from its first start.
//!
//! Node certificates name their node in the SAN URI `tollgate://node/<id>` (what the peer
//! listener admits) and their host names for the TLS name check; client certificates name
//! `tollgate://client/<name>`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::raft::NodeId;
use crate::tls::{CLIENT_URI_PREFIX, NODE_URI_PREFIX};

/// How long the CA is valid: certificates are renewed from it many times over.
pub const CA_VALID_DAYS: i64 = 3650;
/// How long a node or client certificate is valid; renew before (docs/operations.md).
pub const LEAF_VALID_DAYS: i64 = 825;
/// Most nodes and clients one `certs init` issues.
pub const CERTS_PER_RUN_MAX: usize = 64;
/// Longest client name or host name accepted.
pub const NAME_BYTES_MAX: usize = 253;
/// What the bootstrap admin key starts with; 64 lowercase hex characters follow.
pub const BOOTSTRAP_KEY_PREFIX: &str = "tg_bootstrap_";

#[derive(Clone, Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Write a cluster CA (or reuse the one in --dir), node and client certificates, and a
    /// bootstrap admin key (`admin.key`).
    Init(InitArgs),
}

#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write into (created if missing). A `ca.pem` and `ca.key` already there
    /// sign the new certificates; an `admin.key` already there is kept.
    #[arg(long)]
    pub dir: PathBuf,
    /// A node certificate, `ID=HOST` (the host its peers and clients dial); repeat per node.
    #[arg(long = "node", value_name = "ID=HOST")]
    pub nodes: Vec<String>,
    /// A client certificate for NAME (`tollgate://client/NAME`); repeat per client.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Replace node and client files that already exist.
    #[arg(long, conflicts_with = "keep_existing")]
    pub force: bool,
    /// Keep node and client files that already exist and write only the missing ones, so
    /// the command can run at every start (as the compose `certs` service does).
    #[arg(long)]
    pub keep_existing: bool,
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that signs node and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind the issuer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn ia5(text: &str) -> anyhow::Result<rcgen::string::Ia5String> {
    rcgen::string::Ia5String::try_from(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is not an ASCII name: {e}"))
}

impl Ca {
    /// A new CA with a fresh P-256 key.
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALID_DAYS);
        let cert = params.self_signed(&key).context("signing the CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of an earlier `certs init`, from its PEM files' contents.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("the CA key does not parse")?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).context("the CA does not parse")?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> anyhow::Result<Issued> {
        let key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALID_DAYS);
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate of {common_name}"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Node `id`'s certificate, for `host`, `localhost` and `127.0.0.1`, server and client
    /// use (it is presented on both listeners and when dialing peers).
    pub fn node(&self, id: NodeId, host: &str) -> anyhow::Result<Issued> {
        let mut sans = vec![SanType::URI(ia5(&format!("{NODE_URI_PREFIX}{id}"))?)];
        for name in [host, "localhost", "127.0.0.1"] {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(name)?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(&format!("tollgate node {id}"), sans, usages)
    }

    /// A client's certificate, `tollgate://client/<name>`, for client use only.
    pub fn client(&self, name: &str) -> anyhow::Result<Issued> {
        let sans = vec![SanType::URI(ia5(&format!("{CLIENT_URI_PREFIX}{name}"))?)];
        let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&format!("tollgate client {name}"), sans, usages)
    }
}

/// A fresh bootstrap admin key: `tg_bootstrap_` and 64 lowercase hex characters (256 bits
/// from the thread's CSPRNG, seeded by the OS).
pub fn bootstrap_admin_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!("{BOOTSTRAP_KEY_PREFIX}{}\n", hex::encode(bytes))
}

fn check_name(kind: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !ok {
        bail!(
            "{kind} {name:?} must be 1 to {NAME_BYTES_MAX} letters, digits, '.', '-', '_' or ':'"
        );
    }
    Ok(())
}

/// `--node ID=HOST` values as (id, host), checked.
fn parse_nodes(nodes: &[String]) -> anyhow::Result<Vec<(NodeId, String)>> {
    let mut parsed: Vec<(NodeId, String)> = Vec::new();
    for node in nodes {
        let Some((id, host)) = node.split_once('=') else {
            bail!("--node {node:?} is not ID=HOST (e.g. --node 1=node1)");
        };
        let id: NodeId = match id.trim().parse() {
            Ok(id) if id > 0 => id,
            _ => bail!("--node {node:?}: the id must be a number from 1"),
        };
        let host = host.trim();
        check_name("host", host)?;
        if parsed.iter().any(|(seen, _)| *seen == id) {
            bail!("--node: node {id} is given twice");
        }
        parsed.push((id, host.to_string()));
    }
    Ok(parsed)
}

/// One file to write: where, what, and whether it is a secret (mode 0600).
struct Output {
    path: PathBuf,
    contents: String,
    secret: bool,
}

fn write_file(output: &Output, replace: bool) -> anyhow::Result<()> {
    let mode = if output.secret { 0o600 } else { 0o644 };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let path = &output.path;
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only to a file created now: a replaced one gets it here.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(output.contents.as_bytes()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The CA in `dir` if an earlier run left one, else a new one (and its files to write).
fn load_or_generate_ca(dir: &Path, outputs: &mut Vec<Output>) -> anyhow::Result<Ca> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            Ca::from_pem(&read(&cert_path)?, &read(&key_path)?)
                .with_context(|| format!("the CA in {}", dir.display()))
        }
        (false, false) => {
            let ca = Ca::generate()?;
            outputs.push(Output {
                path: cert_path,
                contents: ca.cert_pem.clone(),
                secret: false,
            });
            outputs.push(Output {
                path: key_path,
                contents: ca.key_pem.clone(),
                secret: true,
            });
            Ok(ca)
        }
        _ => bail!(
            "{} holds one of ca.pem and ca.key but not the other: restore it or use another --dir",
            dir.display()
        ),
    }
}

fn push_issued(outputs: &mut Vec<Output>, dir: &Path, stem: &str, issued: Issued) {
    outputs.push(Output {
        path: dir.join(format!("{stem}.pem")),
        contents: issued.cert_pem,
        secret: false,
    });
    outputs.push(Output {
        path: dir.join(format!("{stem}.key")),
        contents: issued.key_pem,
        secret: true,
    });
}

/// Everything `init` writes, generated before anything is written.
fn plan(args: &InitArgs) -> anyhow::Result<Vec<Output>> {
    let nodes = parse_nodes(&args.nodes)?;
    for client in &args.clients {
        check_name("client name", client)?;
    }
    let issued = nodes.len() + args.clients.len();
    if issued == 0 || issued > CERTS_PER_RUN_MAX {
        bail!("give 1 to {CERTS_PER_RUN_MAX} --node or --client, not {issued}");
    }
    let mut outputs = Vec::new();
    let ca = load_or_generate_ca(&args.dir, &mut outputs)?;
    for (id, host) in &nodes {
        push_issued(
            &mut outputs,
            &args.dir,
            &format!("node-{id}"),
            ca.node(*id, host)?,
        );
    }
    for client in &args.clients {
        push_issued(
            &mut outputs,
            &args.dir,
            &format!("client-{client}"),
            ca.client(client)?,
        );
    }
    let admin_key = args.dir.join("admin.key");
    if !admin_key.exists() {
        outputs.push(Output {
            path: admin_key,
            contents: bootstrap_admin_key(),
            secret: true,
        });
    }
    Ok(outputs)
}

/// Writes the files of `args`; returns their paths. Refuses, before writing anything, to
/// replace a node or client file unless `--force` (or skips it with `--keep-existing`).
pub fn init(args: &InitArgs) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut outputs = plan(args)?;
    if args.keep_existing {
        outputs.retain(|output| !output.path.exists());
    }
    let existing: Vec<String> = outputs
        .iter()
        .filter(|output| output.path.exists())
        .map(|output| output.path.display().to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        bail!(
            "refusing to overwrite {}; pass --force to replace them",
            existing.join(", ")
        );
    }
    for output in &outputs {
        write_file(output, args.force)?;
    }
    Ok(outputs.into_iter().map(|output| output.path).collect())
}

/// `tollgate certs ...`.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(args) => {
            for path in init(&args)? {
                println!("wrote {}", path.display());
            }
            println!(
                "keep ca.key offline; give each node ca.pem, its node-<id>.pem and node-<id>.key \
                 (--tls-ca, --tls-cert, --tls-key) and the cluster's admin key file"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{certificates_of, identity_of, CertIdentity};
    use x509_parser::extensions::GeneralName;

    fn args(dir: &Path) -> InitArgs {
        InitArgs {
            dir: dir.to_path_buf(),
            nodes: vec!["1=node1".into(), "2=node2".into()],
            clients: vec!["ops".into()],
            force: false,
            keep_existing: false,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn sans(pem: &[u8]) -> Vec<String> {
        let der = &certificates_of(pem, "test").unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                GeneralName::URI(uri) => uri.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other}"),
            })
            .collect()
    }

    #[test]
    fn init_writes_every_file_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let written = init(&args(dir.path())).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for name in [
            "ca.pem",
            "ca.key",
            "node-1.pem",
            "node-1.key",
            "node-2.pem",
            "node-2.key",
            "client-ops.pem",
            "client-ops.key",
            "admin.key",
        ] {
            assert!(names.contains(&name.to_string()), "{name} in {names:?}");
            let expected = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode(&dir.path().join(name)), expected, "{name}");
        }
        let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
        let hex = admin.trim_end().strip_prefix(BOOTSTRAP_KEY_PREFIX).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(bootstrap_admin_key(), bootstrap_admin_key());
    }

    #[test]
    fn node_and_client_certificates_name_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        init(&args(dir.path())).unwrap();
        let node = std::fs::read(dir.path().join("node-2.pem")).unwrap();
        let names = sans(&node);
        for expected in ["tollgate://node/2", "node2", "localhost"] {
            assert!(
                names.contains(&expected.to_string()),
                "{expected} in {names:?}"
            );
        }
        assert!(
            names.iter().any(|n| n.contains("127")),
            "127.0.0.1 in {names:?}"
        );
        let der = &certificates_of(&node, "node").unwrap()[0];
        assert_eq!(identity_of(der), CertIdentity::Node(2));
        let client = std::fs::read(dir.path().join("client-ops.pem")).unwrap();
        let der = &certificates_of(&client, "client").unwrap()[0];
        assert_eq!(identity_of(der), CertIdentity::Client("ops".into()));
        // The node's files load as node 2's TLS, and are refused as node 1's.
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let load = |id| {
            crate::tls::NodeTls::from_pem(
                id,
                read("ca.pem"),
                read("node-2.pem"),
                read("node-2.key"),
            )
        };
        assert!(load(2).is_ok());
        let error = load(1).unwrap_err().to_string();
        assert!(error.contains("node 2's"), "{error}");
    }

    #[test]
    fn existing_files_are_kept_unless_forced_and_the_ca_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        init(&args(dir.path())).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let admin = std::fs::read(dir.path().join("admin.key")).unwrap();
        let node = std::fs::read(dir.path().join("node-1.pem")).unwrap();

        let error = init(&args(dir.path())).unwrap_err().to_string();
        assert!(error.contains("refusing to overwrite"), "{error}");
        assert!(error.contains("--force"), "{error}");
        assert_eq!(std::fs::read(dir.path().join("node-1.pem")).unwrap(), node);

        let more = InitArgs {
            nodes: vec!["3=node3".into()],
            clients: vec![],
            ..args(dir.path())
        };
        let written = init(&more).unwrap();
        assert_eq!(written.len(), 2, "only node 3's files: {written:?}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);

        init(&InitArgs {
            force: true,
            ..args(dir.path())
        })
        .unwrap();
        let renewed = std::fs::read(dir.path().join("node-1.pem")).unwrap();
        assert_ne!(renewed, node);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        assert_eq!(std::fs::read(dir.path().join("admin.key")).unwrap(), admin);

        let keep = InitArgs {
            keep_existing: true,
            clients: vec!["ops".into(), "new".into()],
            ..args(dir.path())
        };
        let written = init(&keep).unwrap();
        assert_eq!(written.len(), 2, "only the new client's files: {written:?}");
        assert_eq!(
            std::fs::read(dir.path().join("node-1.pem")).unwrap(),
            renewed
        );
    }

    #[test]
    fn bad_arguments_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        for nodes in [
            vec!["node1"],
            vec!["0=a"],
            vec!["x=a"],
            vec!["1=a b"],
            vec!["1=a", "1=b"],
        ] {
            let bad = InitArgs {
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
                ..args(dir.path())
            };
            assert!(init(&bad).is_err(), "{nodes:?}");
        }
        let none = InitArgs {
            nodes: vec![],
            clients: vec![],
            ..args(dir.path())
        };
        assert!(init(&none).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
