//! How a [`Client`](crate::Client) reaches the cluster and how long it keeps trying.
//! Validation of addresses lives here too, so a bad endpoint fails when the client is
//! built, not on the first reservation.

use std::path::Path;
use std::time::Duration;

use rand::Rng;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::Error;
use crate::types::Amounts;

/// Whole-operation deadline, retries included, unless the config says otherwise.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(5);
/// Time one attempt (connect + RPC) may take before it is abandoned and retried.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// First pause between retries.
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(20);
/// Longest pause between retries.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_millis(500);
/// While every endpoint refuses connections, how often one operation is let through to see
/// whether the cluster is back; the others fail at once. Short enough that a restarted
/// cluster is noticed within about half a second, long enough that a dead one costs one
/// round of refused connections per interval.
pub const PROBE_INTERVAL_DEFAULT: Duration = Duration::from_millis(500);
/// Most endpoints one client may be configured with: a cluster has three or five nodes,
/// so more than this is a configuration mistake.
pub const ENDPOINTS_MAX: usize = 16;

/// Everything a [`Client`](crate::Client) needs; start from [`ClientConfig::new`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Cluster nodes, `host:port` or `http://host:port`. Any node will do: followers
    /// point the client at the leader.
    pub endpoints: Vec<String>,
    /// The API key, sent as `authorization: Bearer <key>`: a worker key for reservations,
    /// an admin or tenant-admin key for Admin calls, an admin key for Cluster calls.
    /// [`api_key_from_env`] reads one from the environment. `None` for `--insecure` nodes.
    pub token: Option<String>,
    /// Time one operation may take, all retries included.
    pub deadline: Duration,
    /// Time one attempt may take before it is abandoned and retried with the same request id.
    pub attempt_timeout: Duration,
    /// Pauses between retries.
    pub backoff: Backoff,
    /// When every endpoint refuses the connection within one operation, operations fail at
    /// once with [`Error::Unavailable`] (or fail open) instead of retrying to the deadline,
    /// and one operation per `probe_interval` tries the cluster again; the first node that
    /// answers ends it. A node that answers but has no leader (an election) does not count:
    /// those calls retry to the deadline.
    pub probe_interval: Duration,
    /// What `reserve` does when the cluster cannot be reached.
    pub fail_mode: FailMode,
    /// Send concurrent reserve, commit, release and record calls to a node as one `Batch`
    /// RPC (default `true`): a lone call leaves at once, concurrent ones share one HTTP/2
    /// request. Each still gets its own answer, retries and deadline. Turn it off to send
    /// one unary RPC per call, e.g. against nodes older than `Batch`.
    pub coalesce: bool,
    /// TLS to the nodes; `None` speaks clear text (`http://`, dev clusters only). With TLS,
    /// endpoints and leader hints without a scheme are dialed as `https://`.
    pub tls: Option<TlsConfig>,
    /// Decide calls locally inside budget leases when the tenant allows them (default
    /// `true`): a reserve naming no session and no usage is granted from a slice of its
    /// (tenant, agent, tool) that this client holds, without a network round trip, and
    /// reported in the background. Tenants without leases are served per call (the client
    /// asks again every [`LEASE_OFF_MEMORY`](crate::LEASE_OFF_MEMORY)). Off: every call
    /// goes per call.
    pub leases: bool,
    /// Calls this client may have in flight at once inside one lease (its concurrency
    /// units), 1 to [`LEASE_UNITS_MAX`](crate::LEASE_UNITS_MAX); default
    /// [`LEASE_UNITS_DEFAULT`](crate::LEASE_UNITS_DEFAULT).
    pub lease_units: u32,
}

/// Largest PEM file [`TlsConfig::from_files`] reads.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// TLS settings of a client: the CA that signed the nodes' certificates (a bundle of
/// several during a CA rotation) and, optionally, this client's certificate and key.
#[derive(Clone)]
pub struct TlsConfig {
    /// PEM of the CA certificate(s) the nodes' certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// PEM of this client's certificate and of its private key, sent when a node asks.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// The bytes of the file at `path`, refused beyond `max` bytes: what a client or a node
/// reads at start (PEM files, key files) never costs more than its bound, however large
/// the file has grown.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let invalid = |e: std::io::Error| Error::Invalid(format!("reading {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(invalid)?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(invalid)?;
    Ok(bytes)
}

/// A PEM file: at most `PEM_FILE_BYTES_MAX` bytes, starting with `-----BEGIN`. Nodes read
/// their CA, certificate and key with it too.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = read_bounded(path, PEM_FILE_BYTES_MAX)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX || !bytes.starts_with(b"-----BEGIN") {
        return Err(Error::Invalid(format!(
            "{} is not a PEM file (at most {PEM_FILE_BYTES_MAX} bytes, starting with -----BEGIN)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl TlsConfig {
    /// Trust the nodes whose certificates chain to the CA in `ca_pem`; no client certificate.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        TlsConfig {
            ca_pem: ca_pem.into(),
            identity: None,
        }
    }

    /// Also present this client certificate and key (PEM).
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Reads the CA file, and the certificate and key files when given (both or neither).
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, Error> {
        let tls = TlsConfig::new(read_pem(ca)?);
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(tls.with_identity(read_pem(cert)?, read_pem(key)?)),
            (None, None) => Ok(tls),
            _ => Err(Error::Invalid(
                "a client certificate needs its key, and a key its certificate".into(),
            )),
        }
    }

    /// From the files named by `TOLLGATE_TLS_CA`, `TOLLGATE_TLS_CERT` and
    /// `TOLLGATE_TLS_KEY`; `None` when `TOLLGATE_TLS_CA` is unset or empty.
    pub fn from_env() -> Result<Option<Self>, Error> {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let Some(ca) = var("TOLLGATE_TLS_CA") else {
            return Ok(None);
        };
        let (cert, key) = (var("TOLLGATE_TLS_CERT"), var("TOLLGATE_TLS_KEY"));
        TlsConfig::from_files(
            Path::new(&ca),
            cert.as_deref().map(Path::new),
            key.as_deref().map(Path::new),
        )
        .map(Some)
    }

    /// The settings tonic dials with.
    pub fn tonic(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

impl ClientConfig {
    /// A config for these endpoints with the defaults: no token, 5 s deadline, 1 s per
    /// attempt, 20..500 ms backoff, a probe every 500 ms while the cluster refuses
    /// connections, fail closed, coalescing on, leases on with 64 units.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            token: None,
            deadline: DEADLINE_DEFAULT,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            backoff: Backoff::default(),
            probe_interval: PROBE_INTERVAL_DEFAULT,
            fail_mode: FailMode::Closed,
            coalesce: true,
            tls: None,
            leases: true,
            lease_units: crate::lease::LEASE_UNITS_DEFAULT,
        }
    }

    /// Checks the config and returns the normalised endpoints.
    pub(crate) fn validate(&self) -> Result<Vec<String>, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Invalid("no endpoints configured".into()));
        }
        if self.endpoints.len() > ENDPOINTS_MAX {
            return Err(Error::Invalid(format!(
                "{} endpoints configured, at most {ENDPOINTS_MAX} (ENDPOINTS_MAX) are allowed",
                self.endpoints.len()
            )));
        }
        if self.deadline.is_zero()
            || self.attempt_timeout.is_zero()
            || self.probe_interval.is_zero()
        {
            return Err(Error::Invalid(
                "deadline, attempt_timeout and probe_interval must be greater than zero".into(),
            ));
        }
        if self.backoff.initial.is_zero() || self.backoff.initial > self.backoff.max {
            return Err(Error::Invalid(format!(
                "backoff must satisfy 0 < initial ({:?}) <= max ({:?})",
                self.backoff.initial, self.backoff.max
            )));
        }
        if !(1..=crate::lease::LEASE_UNITS_MAX).contains(&self.lease_units) {
            return Err(Error::Invalid(format!(
                "lease_units is {}; it must be 1 to {} (LEASE_UNITS_MAX)",
                self.lease_units,
                crate::lease::LEASE_UNITS_MAX
            )));
        }
        let mut endpoints: Vec<String> = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let normalised = normalise_endpoint(endpoint, self.tls.is_some())?;
            if !endpoints.contains(&normalised) {
                endpoints.push(normalised);
            }
        }
        Ok(endpoints)
    }
}

/// Environment variable holding an API key.
pub const API_KEY_ENV: &str = "TOLLGATE_API_KEY";
/// Environment variable naming a file that holds an API key (read when `TOLLGATE_API_KEY`
/// is unset).
pub const API_KEY_FILE_ENV: &str = "TOLLGATE_API_KEY_FILE";
/// Longest API key file read.
const API_KEY_FILE_BYTES_MAX: u64 = 4096;

/// The API key from the environment: `TOLLGATE_API_KEY`, else the content of the file
/// `TOLLGATE_API_KEY_FILE` names (without surrounding whitespace); None if neither is set.
pub fn api_key_from_env() -> Result<Option<String>, Error> {
    if let Some(key) = std::env::var(API_KEY_ENV)
        .ok()
        .filter(|key| !key.is_empty())
    {
        return Ok(Some(key));
    }
    match std::env::var_os(API_KEY_FILE_ENV) {
        Some(path) if !path.is_empty() => read_api_key_file(Path::new(&path)).map(Some),
        _ => Ok(None),
    }
}

/// Reads an API key from `path`: its content without surrounding whitespace. Nodes read
/// their bootstrap admin key with it too.
pub fn read_api_key_file(path: &Path) -> Result<String, Error> {
    let bytes = read_bounded(path, API_KEY_FILE_BYTES_MAX)?;
    if bytes.len() as u64 > API_KEY_FILE_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "key file {} is over {API_KEY_FILE_BYTES_MAX} bytes; it should hold one key of at \
             most 256 bytes",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("key file {} is not UTF-8 text", path.display())))?;
    Ok(text.trim().to_owned())
}

/// What `reserve` does when the cluster cannot be reached within the deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Deny: `reserve` returns [`Error::Unavailable`] saying why. The default, and the only
    /// mode that keeps SPEC guarantee 1 (never overspend) during an outage.
    #[default]
    Closed,
    /// Grant locally, up to `local_cap` summed over every local reservation this client
    /// (and its clones) made since it was built. Local reservations are marked
    /// [`Reservation::is_local`](crate::Reservation::is_local), logged as warnings, and
    /// never reach the cluster. A reserve whose answer was lost (not refused) may still
    /// hold spend in the cluster until its TTL expires.
    Open {
        /// Spend this process may make without the cluster.
        local_cap: Amounts,
    },
}

/// Exponential backoff with jitter between retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Pause before the first retry (before jitter).
    pub initial: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: BACKOFF_INITIAL_DEFAULT,
            max: BACKOFF_MAX_DEFAULT,
        }
    }
}

impl Backoff {
    /// Upper bound of the pause before retry number `step` (0-based): `initial * 2^step`,
    /// capped at `max`.
    pub fn ceiling(&self, step: u32) -> Duration {
        // 2^16 * initial is far above any sane max; the cap keeps the multiply in range.
        let factor = 1u32 << step.min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The pause before retry number `step`: uniformly random in `[ceiling/2, ceiling]`.
    /// Half of it is jitter, so clients that failed together do not retry together, and
    /// half is fixed, so the pause still grows with every step.
    pub fn delay<R: Rng + ?Sized>(&self, step: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(step);
        let floor = ceiling / 2;
        let span_us = u64::try_from((ceiling - floor).as_micros()).unwrap_or(u64::MAX);
        floor + Duration::from_micros(rng.random_range(0..=span_us))
    }
}

/// Turns `host:port` into `https://host:port` with `tls`, `http://host:port` without (an
/// explicit scheme must match), and rejects what tonic could not dial. A scheme that does
/// not match the client's TLS setting is refused here rather than failing on every call.
pub fn normalise_endpoint(endpoint: &str, tls: bool) -> Result<String, Error> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(Error::Invalid("empty endpoint".into()));
    }
    let (scheme, other) = if tls {
        ("https://", "http://")
    } else {
        ("http://", "https://")
    };
    if trimmed.starts_with(other) {
        let why = if tls {
            "this client is configured for TLS; use https:// or no scheme"
        } else {
            "TLS needs a CA (TlsConfig, TOLLGATE_TLS_CA or --tls-ca)"
        };
        return Err(Error::Invalid(format!("endpoint {endpoint:?}: {why}")));
    }
    let with_scheme = if trimmed.starts_with(scheme) {
        trimmed.to_owned()
    } else if trimmed.contains("://") {
        return Err(Error::Invalid(format!(
            "endpoint {endpoint:?}: only http:// and https:// are supported"
        )));
    } else {
        format!("{scheme}{trimmed}")
    };
    let uri: tonic::codegen::http::Uri = with_scheme
        .parse()
        .map_err(|e| Error::Invalid(format!("endpoint {endpoint:?} is not an address: {e}")))?;
    if uri.port_u16().is_none() || uri.host().is_none_or(str::is_empty) {
        return Err(Error::Invalid(format!(
            "endpoint {endpoint:?} needs a host and a port, e.g. 10.0.0.1:7001"
        )));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_without_scheme_gets_http() {
        assert_eq!(
            normalise_endpoint("127.0.0.1:7001", false).unwrap(),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalise_endpoint(" node-1:7001/ ", false).unwrap(),
            "http://node-1:7001"
        );
        assert_eq!(
            normalise_endpoint("http://node-1:7001", false).unwrap(),
            "http://node-1:7001"
        );
        assert_eq!(
            normalise_endpoint("[::1]:7001", false).unwrap(),
            "http://[::1]:7001"
        );
    }

    #[test]
    fn endpoint_with_tls_gets_https_and_a_mismatched_scheme_is_refused() {
        assert_eq!(
            normalise_endpoint("node-1:7001", true).unwrap(),
            "https://node-1:7001"
        );
        assert_eq!(
            normalise_endpoint("https://node-1:7001", true).unwrap(),
            "https://node-1:7001"
        );
        let error = normalise_endpoint("http://node-1:7001", true).unwrap_err();
        assert!(error.to_string().contains("configured for TLS"), "{error}");
        let error = normalise_endpoint("https://node-1:7001", false).unwrap_err();
        assert!(error.to_string().contains("TLS needs a CA"), "{error}");
    }

    #[test]
    fn tls_files_must_be_pem_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not pem").unwrap();
        assert!(TlsConfig::from_files(&pem, None, None).is_ok());
        assert!(TlsConfig::from_files(&junk, None, None).is_err());
        assert!(TlsConfig::from_files(&pem, Some(&pem), None).is_err());
        assert!(TlsConfig::from_files(&dir.path().join("missing"), None, None).is_err());
        let with_identity = TlsConfig::from_files(&pem, Some(&pem), Some(&pem)).unwrap();
        assert!(format!("{with_identity:?}").contains("client_certificate: true"));
    }

    #[test]
    fn endpoint_that_cannot_be_dialled_is_rejected() {
        for bad in [
            "",
            "node-1",
            "https://node-1:7001",
            "grpc://node-1:7001",
            "a b:1",
        ] {
            assert!(
                matches!(normalise_endpoint(bad, false), Err(Error::Invalid(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn config_rejects_no_endpoints_and_dedups() {
        assert!(ClientConfig::new(Vec::<String>::new()).validate().is_err());
        let endpoints = ClientConfig::new(["a:1", "http://a:1", "b:2"])
            .validate()
            .unwrap();
        assert_eq!(endpoints, ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn backoff_grows_is_capped_and_jitter_stays_in_bounds() {
        let backoff = Backoff::default();
        let mut rng = rand::rng();
        let mut ceiling_previous = Duration::ZERO;
        for step in 0..40 {
            let ceiling = backoff.ceiling(step);
            assert!(ceiling >= ceiling_previous, "ceiling shrank at step {step}");
            assert!(ceiling <= backoff.max);
            ceiling_previous = ceiling;
            for _ in 0..100 {
                let delay = backoff.delay(step, &mut rng);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} at step {step}"
                );
            }
        }
        assert_eq!(backoff.ceiling(0), BACKOFF_INITIAL_DEFAULT);
        assert_eq!(backoff.ceiling(1), BACKOFF_INITIAL_DEFAULT * 2);
        assert_eq!(backoff.ceiling(39), BACKOFF_MAX_DEFAULT);
    }

    #[test]
    fn backoff_jitter_is_not_constant() {
        let backoff = Backoff::default();
        let mut rng = rand::rng();
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff.delay(4, &mut rng)).collect();
        assert!(delays.len() > 1, "50 delays were all equal: no jitter");
    }
}
