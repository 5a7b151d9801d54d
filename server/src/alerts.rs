//! Alerts: the leader POSTs each `threshold_crossed` audit record to the operator's
//! webhook, signed, retried until acknowledged, then proposes `AlertsDelivered` so that a
//! new leader resumes after it. At least once: a receiver dedupes by the record's `seq`.
//!
//! Never on the decision path: this task only reads the applied ledger and proposes the
//! cursor; a slow or dead receiver delays alerts, never a reserve. One request in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::rustls;

use crate::node::Node;
use crate::raft::state_machine::read_applied;
use tollgate_ledger::{AuditFilter, AuditRecord, Command};

/// The header that carries the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">`, as Stripe signs its webhooks.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
/// Shortest secret accepted: 128 bits.
pub const SECRET_BYTES_MIN: usize = 16;
/// Longest secret accepted.
pub const SECRET_BYTES_MAX: usize = 1024;
/// Largest body sent: one audit record is well under 2 KiB.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// How long one attempt may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait after a failed attempt; doubled each time up to `RETRY_WAIT_MAX`, with
/// jitter so that a receiver coming back is not met by every sender at once.
pub const RETRY_WAIT_MIN: Duration = Duration::from_millis(250);
pub const RETRY_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a node that is not the leader, or has nothing to send, looks again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Audit records looked at per read of the ledger: bounds how long the read lock, which
/// the state machine's apply waits for, is held (about a microsecond a record).
const SCAN_RECORDS_MAX: u64 = 1_024;
/// With nothing to deliver, the cursor is still moved this far ahead, so a new leader
/// does not scan records that hold no crossing again.
const CURSOR_STEP_RECORDS: u64 = 65_536;
/// Audit records looked at per read of the trail on disk, which holds no lock the apply
/// waits for.
const DISK_SCAN_RECORDS_MAX: u64 = 65_536;
/// How long the sender waits for the trail on disk to hold what it is to read there.
const TRAIL_WAIT: Duration = Duration::from_secs(1);

/// Where and how alerts are sent; checked when the node's configuration is read.
#[derive(Clone)]
pub struct AlertWebhook {
    url: Uri,
    secret: Arc<[u8]>,
    /// Set for an `https` URL: the roots its certificate must chain to.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for AlertWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertWebhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AlertWebhook {
    /// `url` http(s); plain http only to a loopback host unless `insecure`. `ca_pem`: the
    /// roots an https receiver's certificate must chain to.
    pub fn new(
        url: &str,
        secret: &[u8],
        ca_pem: Option<&[u8]>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let url: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("alert webhook {url:?} is not a URL: {e}"))?;
        let host = url
            .host()
            .ok_or_else(|| anyhow::anyhow!("alert webhook {url} names no host"))?;
        let tls = match url.scheme_str() {
            Some("https") => Some(Arc::new(client_tls(ca_pem.ok_or_else(|| {
                anyhow::anyhow!("alert webhook {url} is https: give --alert-webhook-ca-file")
            })?)?)),
            Some("http") if insecure || is_loopback(host) => None,
            Some("http") => anyhow::bail!(
                "alert webhook {url} is plain http to a host that is not loopback: use https, \
                 or --insecure on a trusted network"
            ),
            _ => anyhow::bail!("alert webhook {url} is neither http nor https"),
        };
        let secret = secret.trim_ascii();
        if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&secret.len()) {
            anyhow::bail!(
                "the alert webhook secret is {} bytes; it must be {SECRET_BYTES_MIN} to \
                 {SECRET_BYTES_MAX}",
                secret.len()
            );
        }
        Ok(Self {
            url,
            secret: secret.into(),
            tls,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client_tls(ca_pem: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::tls::certificates_of(ca_pem, "alert webhook CA file")? {
        roots
            .add(der.into())
            .map_err(|e| anyhow::anyhow!("alert webhook CA file: {e}"))?;
    }
    // The provider tonic uses for the node's other TLS: ring (aws-lc, with post-quantum
    // key exchange, would compile far more C on two cores).
    #[allow(deprecated)]
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `t=<unix_s>,v1=<hex HMAC-SHA256(secret, "<unix_s>.<body>")>`.
pub fn signature(secret: &[u8], unix_s: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Counts applied crossings by threshold (1 to 99: a bounded label).
pub fn count_crossings(crossings: impl Iterator<Item = (u8, u32)>) {
    for (percent, n) in crossings {
        metrics::counter!("tollgate_threshold_crossings_total", "threshold" => percent.to_string())
            .increment(u64::from(n));
    }
}

/// What the trail holds for the sender: the next crossing after `from`, or how far it
/// looked without finding one.
enum Next {
    Crossing(Box<AuditRecord>),
    Scanned { up_to_seq: u64, cursor: u64 },
}

/// Records to scan that left the ledger's memory (the sender fell behind, say while the
/// webhook was down): they are read from the trail on disk.
struct OnDisk {
    filter: AuditFilter,
    up_to_seq: u64,
    cursor: u64,
}

fn next_crossing(node: &Node, scanned: u64) -> Result<Next, Box<OnDisk>> {
    let applied = read_applied(&node.applied);
    let ledger = &applied.ledger;
    let cursor = ledger.alerts_delivered_seq();
    let from = scanned.max(cursor);
    let to = from.saturating_add(SCAN_RECORDS_MAX);
    let mut filter = AuditFilter {
        after_seq: Some(from),
        to_seq: Some(to),
        event: Some("threshold_crossed".into()),
        limit: 1,
        ..AuditFilter::default()
    };
    if let Some(oldest) = (ledger.audit_oldest_seq()).filter(|&oldest| oldest > from + 1) {
        let up_to_seq = from.saturating_add(DISK_SCAN_RECORDS_MAX).min(oldest - 1);
        filter.to_seq = Some(up_to_seq);
        return Err(Box::new(OnDisk {
            filter,
            up_to_seq,
            cursor,
        }));
    }
    Ok(match ledger.audit(&filter).into_iter().next() {
        Some(record) => Next::Crossing(Box::new(record)),
        None => Next::Scanned {
            up_to_seq: to.min(ledger.chain_head().seq),
            cursor,
        },
    })
}

/// The next crossing, from memory or from the trail on disk; None when the trail cannot
/// be read now (logged): the sender tries again later, and never skips a record.
async fn find_next(node: &Node, scanned: u64) -> Option<Next> {
    let on_disk = match next_crossing(node, scanned) {
        Ok(next) => return Some(next),
        Err(on_disk) => on_disk,
    };
    let OnDisk {
        filter,
        up_to_seq,
        cursor,
    } = *on_disk;
    if !node.trail.written_through(up_to_seq, TRAIL_WAIT).await {
        return None;
    }
    let trail = node.trail.clone();
    let found = tokio::task::spawn_blocking(move || trail.store().query(&filter)).await;
    match found {
        Ok(Ok(records)) => Some(match records.into_iter().next() {
            Some(record) => Next::Crossing(Box::new(record)),
            None => Next::Scanned { up_to_seq, cursor },
        }),
        Ok(Err(error)) => {
            tracing::warn!(%error, "alerts: reading the audit trail on disk");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "alerts: reading the audit trail on disk");
            None
        }
    }
}

/// The sender: runs on every node, sends only while the node leads.
pub async fn deliver(node: Arc<Node>, webhook: AlertWebhook, mut stopped: watch::Receiver<bool>) {
    // Looked at without a crossing, on this node's term as leader; the cursor is the floor.
    let mut scanned = 0;
    loop {
        if !node.is_leader() {
            scanned = 0;
            if pause(IDLE_POLL, &mut stopped).await {
                return;
            }
            continue;
        }
        let Some(next) = find_next(&node, scanned).await else {
            if pause(IDLE_POLL, &mut stopped).await {
                return;
            }
            continue;
        };
        match next {
            Next::Crossing(record) => {
                let Some(seq) =
                    send_until_acknowledged(&node, &webhook, &record, &mut stopped).await
                else {
                    continue;
                };
                if propose_cursor(&node, seq).await {
                    scanned = seq;
                }
            }
            Next::Scanned { up_to_seq, cursor } => {
                let caught_up = up_to_seq <= scanned.max(cursor);
                scanned = up_to_seq;
                if up_to_seq.saturating_sub(cursor) >= CURSOR_STEP_RECORDS {
                    propose_cursor(&node, up_to_seq).await;
                }
                if caught_up {
                    if pause(IDLE_POLL, &mut stopped).await {
                        return;
                    }
                } else {
                    // Catching up scans chunk after chunk: let the runtime's other tasks in.
                    tokio::task::yield_now().await;
                }
            }
        }
        if *stopped.borrow() {
            return;
        }
    }
}

async fn propose_cursor(node: &Node, up_to_seq: u64) -> bool {
    match node
        .proposer
        .propose(Command::AlertsDelivered { up_to_seq })
        .await
    {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(node = node.id, %error, "alert cursor not moved");
            false
        }
    }
}

/// Sleeps `wait` unless stopped first; true: stopped.
async fn pause(wait: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}

/// POSTs the record until a 2xx, with exponential backoff and jitter. Some(seq) once
/// acknowledged; None if the node stopped leading or stopped (the next leader sends it).
async fn send_until_acknowledged(
    node: &Node,
    webhook: &AlertWebhook,
    record: &AuditRecord,
    stopped: &mut watch::Receiver<bool>,
) -> Option<u64> {
    let body = match serde_json::to_vec(record) {
        Ok(body) if body.len() <= BODY_BYTES_MAX => Bytes::from(body),
        _ => {
            tracing::error!(seq = record.seq, "alert body over BODY_BYTES_MAX: skipped");
            return Some(record.seq);
        }
    };
    let mut wait = RETRY_WAIT_MIN;
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, post(webhook, body.clone())).await {
            Ok(Ok(status)) if status.is_success() => return Some(record.seq),
            Ok(Ok(status)) => tracing::warn!(seq = record.seq, %status, "alert refused"),
            Ok(Err(error)) => tracing::warn!(seq = record.seq, %error, "alert not sent"),
            Err(_) => tracing::warn!(seq = record.seq, "alert timed out"),
        }
        let jittered = wait.mul_f64(rand::random_range(0.5..1.5));
        if pause(jittered, stopped).await || !node.is_leader() {
            return None;
        }
        wait = (wait * 2).min(RETRY_WAIT_MAX);
    }
}

/// One attempt: a fresh connection (alerts are rare), one POST, the status.
async fn post(webhook: &AlertWebhook, body: Bytes) -> anyhow::Result<hyper::StatusCode> {
    let url = &webhook.url;
    let host = url.host().unwrap_or_default();
    let https = webhook.tls.is_some();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = Request::builder()
        .method(Method::POST)
        .uri(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            hyper::header::HOST,
            url.authority().map_or(host, |a| a.as_str()),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "tollgate-alerts")
        .header(SIGNATURE_HEADER, signature(&webhook.secret, unix_s, &body))
        .body(Full::new(body))?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare_host, port)).await?;
    match &webhook.tls {
        None => send(tcp, request).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await?;
            send(stream, request).await
        }
    }
}

async fn send<T>(io: T, request: Request<Full<Bytes>>) -> anyhow::Result<hyper::StatusCode>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    driver.abort();
    Ok(response?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as "<t>.<body>".
        let got = signature(b"Jefe", 0, b"what do ya want for nothing?");
        let mut mac = <Hmac<Sha256>>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(got, format!("t=0,v1={expected}"));
    }

    #[test]
    fn webhooks_are_checked_when_configured() {
        let secret = b"0123456789abcdef";
        for (url, insecure, ok) in [
            ("http://127.0.0.1:9000/hook", false, true),
            ("http://localhost/hook", false, true),
            ("http://[::1]:9000/", false, true),
            ("http://alerts.example.com/hook", false, false),
            ("http://alerts.example.com/hook", true, true),
            ("https://alerts.example.com/hook", false, false), // no CA file
            ("ftp://127.0.0.1/", true, false),
            ("not a url", true, false),
        ] {
            assert_eq!(
                AlertWebhook::new(url, secret, None, insecure).is_ok(),
                ok,
                "{url}"
            );
        }
        let short = AlertWebhook::new("http://127.0.0.1/", b"short\n", None, false);
        assert!(short.unwrap_err().to_string().contains("16"));
    }
}
