//! The `Client` handle and its retry loop: the one place that decides where an RPC goes
//! (the leader, or one named node), how long it may take, and whether to try again.
//! The operations themselves (`tollgate.rs`, `admin.rs`) are thin wrappers over `call`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Response, Status};

use crate::breaker::{Admit, Breaker};
use crate::channel::{leader_hint, Auth};
use crate::config::{normalise_endpoint, ClientConfig, FailMode, TlsConfig};
use crate::error::{is_connect_failure, is_retryable, Error};
use crate::lease::LeaseBook;
use crate::local::LocalCap;
use crate::pool::{Pool, Rpc};

/// Most attempts one operation makes, whatever the deadline: bounds the work a single
/// call causes when every node keeps answering UNAVAILABLE. With the default backoff,
/// 32 attempts span well over the default 5 s deadline, so the deadline usually ends first.
/// An endpoint's first refused connection in a round is not counted: it costs no time and
/// is followed at once by the next endpoint, not by a pause.
pub const ATTEMPTS_MAX: u32 = 32;

/// A handle to a Tollgate cluster. Cheap to clone: clones share connections, the
/// remembered leader and the fail-open allowance.
///
/// Connections open on first use and belong to the tokio runtime that first used them,
/// so use one client within one runtime.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    auth: Auth,
}

pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    pub(crate) pool: Pool,
    pub(crate) local: Option<LocalCap>,
    /// Budget leases held by this client and its clones.
    pub(crate) leases: Arc<LeaseBook>,
    breaker: Breaker,
}

/// Where a call goes.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The leader, found by trying endpoints and following hints.
    Leader,
    /// Exactly this node (normalised address); hints are not followed.
    Node(&'a str),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.shared.pool.endpoints())
            .field("leader", &self.shared.pool.leader())
            .field("fail_mode", &self.shared.config.fail_mode)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client. Connects to nothing yet (connections open on first use), so it
    /// needs no runtime and fails only on a bad config.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        let endpoints = config.validate()?;
        let auth = Auth::new(config.token.as_deref())?;
        let local = match config.fail_mode {
            FailMode::Closed => None,
            FailMode::Open { local_cap } => Some(LocalCap::new(local_cap)),
        };
        let tls = config.tls.as_ref().map(TlsConfig::tonic);
        let pool = Pool::new(endpoints, config.attempt_timeout, tls);
        let breaker = Breaker::new(config.probe_interval);
        Ok(Client {
            shared: Arc::new(Shared {
                config,
                pool,
                local,
                leases: Arc::new(LeaseBook::new()),
                breaker,
            }),
            auth,
        })
    }

    /// A client of `shared` sending `auth`.
    pub(crate) fn from_parts(shared: Arc<Shared>, auth: Auth) -> Client {
        Client { shared, auth }
    }

    /// The credentials this client sends.
    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The same client (connections, leader, fail-open allowance) sending another token,
    /// e.g. the admin token for setup and a tenant's token for reservations.
    pub fn with_token(&self, token: Option<&str>) -> Result<Client, Error> {
        Ok(Client {
            shared: Arc::clone(&self.shared),
            auth: Auth::new(token)?,
        })
    }

    /// The node this client currently believes is the leader (`http://host:port`).
    pub fn leader(&self) -> Option<String> {
        self.shared.pool.leader()
    }

    /// The config this client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// Runs one RPC against the leader with the client's policy: tries endpoints until
    /// one answers, follows `tollgate-leader` hints, retries retryable failures with
    /// backoff inside the deadline and at most [`ATTEMPTS_MAX`] times.
    ///
    /// `f` is called once per attempt and must send the *same* request each time (same
    /// request id), so a retry is never a second effect:
    ///
    /// ```no_run
    /// # async fn example(client: tollgate_client::Client) -> Result<(), tollgate_client::Error> {
    /// use tollgate_client::v1;
    /// let request = v1::ListTenantsRequest {};
    /// let tenants = client
    ///     .call(|rpc| async move { rpc.admin().list_tenants(request).await })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Non-retryable statuses come back at once as the matching [`Error`]; running out of
    /// time or attempts returns [`Error::Unavailable`] naming the nodes tried and the last
    /// error. When every endpoint refuses the connection, that is [`Error::Unavailable`] at
    /// once, and so is every call until a probe reaches a node again
    /// ([`ClientConfig::probe_interval`]).
    ///
    /// The `Rpc` handed to `f` sends unary calls; only the client's own reserve, commit,
    /// release and record are coalesced into `Batch` calls.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.run(Target::Leader, false, f).await
    }

    /// [`call`](Self::call) for reserve, commit, release and record: the `Rpc` handed to `f`
    /// coalesces them with concurrent ones into one `Batch` RPC when the config says so
    /// ([`ClientConfig::coalesce`]). Retries and leader-following are the same: each
    /// operation gets its own answer, and a retry resends the same request (same id).
    pub(crate) async fn call_op<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.run(Target::Leader, self.shared.config.coalesce, f)
            .await
    }

    /// Like [`call`](Self::call) but against exactly the node at `addr` (`host:port`):
    /// retries transient failures within the deadline, never follows leader hints. For
    /// per-node questions such as `Cluster.Status`.
    pub async fn call_node<T, F, Fut>(&self, addr: &str, f: F) -> Result<T, Error>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let addr = normalise_endpoint(addr, self.shared.config.tls.is_some())?;
        self.run(Target::Node(&addr), false, f).await
    }

    /// The cluster answered (with a result or a refusal): what was granted while it did not
    /// can be reported now.
    fn answered<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        self.report_offline_spend();
        result
    }

    async fn run<T, F, Fut>(&self, target: Target<'_>, coalesce: bool, mut f: F) -> Result<T, Error>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let config = &self.shared.config;
        self.admit(target)?;
        let deadline = Instant::now() + config.deadline;
        let mut attempts: u32 = 0;
        let mut backoff_step: u32 = 0;
        let mut tried: Vec<String> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        let mut error_last = String::from("no attempt was made");
        // Follow a hint without pausing once; a second hint in a row means the cluster is
        // mid-election, so pause as for any other failure.
        let mut hint_just_followed = false;

        while attempts < ATTEMPTS_MAX {
            let Some(attempt_time_left) = time_left(deadline) else {
                break;
            };
            attempts += 1;
            let addr = match target {
                Target::Leader => self.shared.pool.pick(),
                Target::Node(addr) => addr.to_owned(),
            };
            if !tried.contains(&addr) {
                tried.push(addr.clone());
            }
            let attempt_timeout = attempt_time_left.min(config.attempt_timeout);
            let status = match self
                .attempt(target, &addr, coalesce, attempt_timeout, &mut f)
                .await
            {
                Attempt::Done(result) => return self.answered(result),
                Attempt::Retry(status) => status,
            };
            error_last = format!("{addr}: {:?}: {}", status.code(), status.message());
            tracing::debug!(attempt = attempts, error = %error_last, "tollgate call failed, retrying");

            match self.after_failure(target, &addr, &status, &mut refused) {
                Next::Now if !hint_just_followed => {
                    hint_just_followed = true;
                    continue;
                }
                Next::Refused => {
                    // Free: it cost no time, and each endpoint refuses once per round.
                    attempts -= 1;
                    continue;
                }
                Next::EveryEndpointRefused => return Err(self.cluster_down(&refused, &error_last)),
                Next::Now | Next::Pause => {}
            }
            hint_just_followed = false;
            if !self.pause(deadline, &mut backoff_step).await {
                break;
            }
        }

        Err(Error::Unavailable {
            reason: format!(
                "no answer within the {} ms deadline after {attempts} attempt(s) (at most {ATTEMPTS_MAX}); tried {}; last error: {error_last}",
                config.deadline.as_millis(),
                tried.join(", "),
            ),
        })
    }

    /// Fails a leader call at once while the breaker is open (every endpoint refused the
    /// connection), unless it is the interval's probe.
    fn admit(&self, target: Target<'_>) -> Result<(), Error> {
        if let Target::Leader = target {
            if let Admit::Refused(reason) = self.shared.breaker.admit(Instant::now()) {
                return Err(Error::Unavailable { reason });
            }
        }
        Ok(())
    }

    /// Every endpoint refused the connection: opens the breaker and says so.
    fn cluster_down(&self, refused: &[String], error_last: &str) -> Error {
        let reason = format!(
            "every endpoint refused the connection ({}); last error: {error_last}",
            refused.join(", ")
        );
        self.shared.breaker.open(Instant::now(), &reason);
        Error::Unavailable { reason }
    }

    /// What follows a failed attempt at `addr`. A refused connection costs no time, so the
    /// next endpoint is tried at once the first time; once every configured endpoint has
    /// refused since a node last answered, the cluster is down. Any other failure but a
    /// timeout means a node answered: the breaker closes, the round of refusals starts
    /// over, and a leader hint is followed at once.
    fn after_failure(
        &self,
        target: Target<'_>,
        addr: &str,
        status: &Status,
        refused: &mut Vec<String>,
    ) -> Next {
        if let Target::Leader = target {
            if is_connect_failure(status) {
                self.shared.pool.forget_leader(addr);
                let first_refusal = !refused.iter().any(|known| known == addr);
                if first_refusal {
                    refused.push(addr.to_owned());
                }
                let endpoints = self.shared.pool.endpoints();
                if endpoints.iter().all(|endpoint| refused.contains(endpoint)) {
                    return Next::EveryEndpointRefused;
                }
                // Only the first refusal of each endpoint is free: after a round, refused
                // attempts pause like any other, so they cannot use up the attempts early.
                return if first_refusal {
                    Next::Refused
                } else {
                    Next::Pause
                };
            }
            if status.code() != tonic::Code::DeadlineExceeded {
                self.shared.breaker.close();
                refused.clear();
            }
        }
        if self.follow_hint(target, addr, status) {
            Next::Now
        } else {
            Next::Pause
        }
    }

    /// One attempt at `addr` within `attempt_timeout`: the call's result, or the
    /// retryable status to try again after.
    async fn attempt<T, F, Fut>(
        &self,
        target: Target<'_>,
        addr: &str,
        coalesce: bool,
        attempt_timeout: Duration,
        f: &mut F,
    ) -> Attempt<T>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let rpc = match self.shared.pool.rpc(addr, &self.auth, coalesce) {
            Ok(rpc) => rpc,
            Err(error) => return Attempt::Done(Err(error)),
        };
        match tokio::time::timeout(attempt_timeout, f(rpc)).await {
            Ok(Ok(response)) => {
                if let Target::Leader = target {
                    // Followers refuse every leader-only call, so an answer means leader.
                    self.shared.pool.set_leader(addr);
                    self.shared.breaker.close();
                }
                Attempt::Done(Ok(response.into_inner()))
            }
            Ok(Err(status)) if !is_retryable(&status) => {
                // A node answered, if only to refuse.
                self.shared.breaker.close();
                Attempt::Done(Err(Error::from_status(&status)))
            }
            Ok(Err(status)) => Attempt::Retry(status),
            Err(_elapsed) => Attempt::Retry(Status::deadline_exceeded(format!(
                "no answer within {} ms",
                attempt_timeout.as_millis()
            ))),
        }
    }

    /// After a failed leader call: remembers the leader that `status` names and returns
    /// true, or forgets `addr` as leader. A call to one node follows no hint.
    fn follow_hint(&self, target: Target<'_>, addr: &str, status: &Status) -> bool {
        let Target::Leader = target else {
            return false;
        };
        match leader_hint(status.metadata(), self.shared.config.tls.is_some()) {
            Some(hint) if hint != addr => {
                self.shared.pool.set_leader(&hint);
                true
            }
            _ => {
                self.shared.pool.forget_leader(addr);
                false
            }
        }
    }

    /// Sleeps the backoff of `backoff_step` (cut at the deadline) and counts the step;
    /// false, without sleeping, once the deadline has passed.
    async fn pause(&self, deadline: Instant, backoff_step: &mut u32) -> bool {
        let Some(pause_time_left) = time_left(deadline) else {
            return false;
        };
        let delay = self
            .shared
            .config
            .backoff
            .delay(*backoff_step, &mut rand::rng())
            .min(pause_time_left);
        *backoff_step = backoff_step.saturating_add(1);
        tokio::time::sleep(delay).await;
        true
    }
}

/// What the retry loop does after a failed attempt.
enum Next {
    /// Try again at once (a leader hint to follow).
    Now,
    /// This endpoint refused the connection; try the next one at once.
    Refused,
    /// Every configured endpoint refused the connection in this operation.
    EveryEndpointRefused,
    /// Pause for the backoff, then try again.
    Pause,
}

/// How one attempt ended.
enum Attempt<T> {
    /// With the call's result: a response, or an error that retrying cannot change.
    Done(Result<T, Error>),
    /// With a status worth another attempt.
    Retry(Status),
}

/// Time until `deadline`, or `None` once it has passed.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
}
