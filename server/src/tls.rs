//! A node's TLS: the cluster CA, its certificate and key, the rustls settings built from them
//! for both listeners and for dialing peers, and who a peer's certificate says it is.
//!
//! Identities live in a certificate's SAN URIs: `tollgate://node/<id>` for a node,
//! `tollgate://client/<name>` for a client (`tollgate certs init` writes both). The CA
//! vouches for the certificate; the URI says which node or client holds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::raft::NodeId;

/// The SAN URI prefix of a node certificate; the node's id follows.
pub const NODE_URI_PREFIX: &str = "tollgate://node/";
/// The SAN URI prefix of a client certificate; the client's name follows.
pub const CLIENT_URI_PREFIX: &str = "tollgate://client/";
/// Longest a TLS handshake may take before the connection is dropped, so a connection that
/// never finishes its handshake holds nothing for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who a certificate names in its SAN URIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    /// `tollgate://node/<id>`.
    Node(NodeId),
    /// `tollgate://client/<name>`.
    Client(String),
    /// No Tollgate URI, more than one, or a certificate that does not parse.
    Unknown,
}

/// The identity in a DER certificate's SAN URIs. Exactly one `tollgate://` URI counts: a
/// certificate naming two identities names none.
pub fn identity_of(der: &[u8]) -> CertIdentity {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return CertIdentity::Unknown;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return CertIdentity::Unknown;
    };
    let mut found = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("tollgate://") => Some(*uri),
            _ => None,
        });
    match (found.next(), found.next()) {
        (Some(uri), None) => parse_identity_uri(uri),
        _ => CertIdentity::Unknown,
    }
}

fn parse_identity_uri(uri: &str) -> CertIdentity {
    if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
        // Digits only: `+1` or `01` are not how `certs init` writes an id.
        let canonical =
            id.bytes().all(|b| b.is_ascii_digit()) && (id == "0" || !id.starts_with('0'));
        return match id.parse::<NodeId>() {
            Ok(id) if canonical => CertIdentity::Node(id),
            _ => CertIdentity::Unknown,
        };
    }
    match uri.strip_prefix(CLIENT_URI_PREFIX) {
        Some(name) if !name.is_empty() => CertIdentity::Client(name.to_string()),
        _ => CertIdentity::Unknown,
    }
}

/// Where a node's TLS files are: `--tls-ca`, `--tls-cert`, `--tls-key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    /// The flags of the files not set, for an error that names them.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.ca.is_none(), "--tls-ca"),
            (self.cert.is_none(), "--tls-cert"),
            (self.key.is_none(), "--tls-key"),
        ]
        .into_iter()
        .filter_map(|(missing, flag)| missing.then_some(flag))
        .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.missing().len() == 3
    }
}

/// A PEM file, as clients read theirs (`tollgate_client::read_pem`).
fn pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    tollgate_client::read_pem(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The certificates (DER) of a PEM buffer; an error if it holds none or a bad block.
pub fn certificates_of(pem: &[u8], what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut certs = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| anyhow::anyhow!("{what}: bad PEM block: {e}"))?;
        if block.label == "CERTIFICATE" {
            block
                .parse_x509()
                .map_err(|e| anyhow::anyhow!("{what}: a certificate does not parse: {e}"))?;
            certs.push(block.contents);
        }
    }
    if certs.is_empty() {
        bail!("{what} holds no PEM certificate");
    }
    Ok(certs)
}

/// A node's TLS material, in PEM: the cluster CA (one or more certificates: a bundle holds
/// old and new CA during a rotation), its certificate chain and its private key.
#[derive(Clone)]
pub struct NodeTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// From PEM bytes, checked: the CA and the certificate parse, the certificate is the
    /// node certificate of `id`.
    pub fn from_pem(id: NodeId, ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>) -> anyhow::Result<Self> {
        certificates_of(&ca, "the CA file")?;
        let leaf = certificates_of(&cert, "the certificate file")?;
        match identity_of(&leaf[0]) {
            CertIdentity::Node(cert_id) if cert_id == id => {}
            CertIdentity::Node(cert_id) => bail!(
                "the certificate is node {cert_id}'s ({NODE_URI_PREFIX}{cert_id}), this is node {id}"
            ),
            other => bail!(
                "the certificate is not a node certificate (its SAN URI must be \
                 {NODE_URI_PREFIX}{id}; found {other:?})"
            ),
        }
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            bail!("the key file holds no PEM private key");
        }
        Ok(Self {
            ca_pem: ca,
            cert_pem: cert,
            key_pem: key,
        })
    }

    /// Reads and checks the files of `paths`, all three of which must be set.
    pub fn load(id: NodeId, paths: &TlsPaths) -> anyhow::Result<Self> {
        let (Some(ca), Some(cert), Some(key)) = (&paths.ca, &paths.cert, &paths.key) else {
            bail!("TLS needs {} as well", paths.missing().join(", "));
        };
        Self::from_pem(id, pem(ca)?, pem(cert)?, pem(key)?).with_context(|| {
            format!(
                "TLS files --tls-ca {} --tls-cert {} --tls-key {}",
                ca.display(),
                cert.display(),
                key.display()
            )
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }

    /// The peer listener: a client certificate from the cluster CA is required.
    pub fn peer_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The client listener: a client certificate is optional, and checked against the
    /// cluster CA when one is presented.
    pub fn client_server(&self) -> ServerTlsConfig {
        self.peer_server().client_auth_optional(true)
    }

    /// The HTTP listener (`/metrics`, `/ui`): HTTPS with the node's certificate, HTTP/1.1,
    /// no client certificate (browsers and Prometheus authenticate with a bearer key).
    pub fn https_server(&self) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("the certificate file, for HTTPS")?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.key_pem).context("the key file, for HTTPS")?;
        // ring, as tonic's `tls-ring` uses for the gRPC listeners (aws-lc, with its
        // post-quantum key exchange, is not built); the same suites as those listeners.
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("HTTPS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the HTTPS certificate and key")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    /// How this node's own processes dial the cluster's client listeners (the console):
    /// the cluster CA, no client certificate (the client listener does not require one).
    pub fn client_config(&self) -> tollgate_client::TlsConfig {
        tollgate_client::TlsConfig::new(self.ca_pem.clone())
    }

    /// Dialing a peer: the peer's certificate must come from the cluster CA and name the
    /// host dialed; this node's certificate goes along as the client certificate.
    pub fn dialer(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_parse_strictly() {
        assert_eq!(
            parse_identity_uri("tollgate://node/7"),
            CertIdentity::Node(7)
        );
        assert_eq!(
            parse_identity_uri("tollgate://client/ops-bot"),
            CertIdentity::Client("ops-bot".into())
        );
        for bad in [
            "tollgate://node/",
            "tollgate://node/+7",
            "tollgate://node/07",
            "tollgate://node/7/x",
            "tollgate://node/99999999999999999999999",
            "tollgate://client/",
            "tollgate://other/1",
        ] {
            assert_eq!(parse_identity_uri(bad), CertIdentity::Unknown, "{bad}");
        }
    }

    #[test]
    fn missing_paths_are_named() {
        let paths = TlsPaths {
            cert: Some("c.pem".into()),
            ..TlsPaths::default()
        };
        assert_eq!(paths.missing(), ["--tls-ca", "--tls-key"]);
        assert!(!paths.is_empty());
        assert!(TlsPaths::default().is_empty());
    }
}
