//! How a [`Client`](crate::Client) reaches the cluster and how long it keeps trying.
//! Validation of addresses lives here too, so a bad endpoint fails when the client is
//! built, not on the first reservation.

use std::time::Duration;

use rand::Rng;

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
    /// What `reserve` does when the cluster cannot be reached.
    pub fail_mode: FailMode,
    /// Send concurrent reserve, commit, release and record calls to a node as one `Batch`
    /// RPC (default `true`): a lone call leaves at once, concurrent ones share one HTTP/2
    /// request. Each still gets its own answer, retries and deadline. Turn it off to send
    /// one unary RPC per call, e.g. against nodes older than `Batch`.
    pub coalesce: bool,
}

impl ClientConfig {
    /// A config for these endpoints with the defaults: no token, 5 s deadline, 1 s per
    /// attempt, 20..500 ms backoff, fail closed, coalescing on.
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
            fail_mode: FailMode::Closed,
            coalesce: true,
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
        if self.deadline.is_zero() || self.attempt_timeout.is_zero() {
            return Err(Error::Invalid(
                "deadline and attempt_timeout must be greater than zero".into(),
            ));
        }
        if self.backoff.initial.is_zero() || self.backoff.initial > self.backoff.max {
            return Err(Error::Invalid(format!(
                "backoff must satisfy 0 < initial ({:?}) <= max ({:?})",
                self.backoff.initial, self.backoff.max
            )));
        }
        let mut endpoints: Vec<String> = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let normalised = normalise_endpoint(endpoint)?;
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
        Some(path) if !path.is_empty() => read_api_key_file(std::path::Path::new(&path)).map(Some),
        _ => Ok(None),
    }
}

/// Reads an API key from `path`: its content without surrounding whitespace.
pub fn read_api_key_file(path: &std::path::Path) -> Result<String, Error> {
    let unreadable =
        |e: std::io::Error| Error::Invalid(format!("reading API key file {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > API_KEY_FILE_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "API key file {} is {len} bytes; it should hold one key",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
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

/// Turns `host:port` into `http://host:port` (keeps an explicit `http://`), and rejects
/// what tonic could not dial. TLS is not built into this client, so `https://` is refused
/// rather than failing later on every call.
pub fn normalise_endpoint(endpoint: &str) -> Result<String, Error> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(Error::Invalid("empty endpoint".into()));
    }
    if trimmed.starts_with("https://") {
        return Err(Error::Invalid(format!(
            "endpoint {endpoint:?}: TLS is not supported by this client; use http://"
        )));
    }
    let with_scheme = if trimmed.starts_with("http://") {
        trimmed.to_owned()
    } else if trimmed.contains("://") {
        return Err(Error::Invalid(format!(
            "endpoint {endpoint:?}: only http:// is supported"
        )));
    } else {
        format!("http://{trimmed}")
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
            normalise_endpoint("127.0.0.1:7001").unwrap(),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalise_endpoint(" node-1:7001/ ").unwrap(),
            "http://node-1:7001"
        );
        assert_eq!(
            normalise_endpoint("http://node-1:7001").unwrap(),
            "http://node-1:7001"
        );
        assert_eq!(
            normalise_endpoint("[::1]:7001").unwrap(),
            "http://[::1]:7001"
        );
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
                matches!(normalise_endpoint(bad), Err(Error::Invalid(_))),
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
