//! Connections and the leader: one lazily-connected tonic `Channel` per address, cached
//! for the life of the client, with the coalescers that batch operations to that address
//! (one per token), and the address believed to be the leader. This module never retries
//! or sleeps; the retry loop in `client.rs` decides what to try next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::cluster_client::ClusterClient;
use tollgate_proto::v1::tollgate_client::TollgateClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Response, Status};

use crate::channel::{Auth, AuthChannel};
use crate::coalescer::{Coalesced, Coalescer};
use crate::error::Error;

/// Most channels one client caches. Addresses come from the config and from leader hints;
/// a cluster has a handful of nodes, so this only bounds churn from a misbehaving cluster.
pub const CHANNELS_MAX: usize = 32;
/// Most coalescers per address, one per token sent to it (a client and its
/// [`with_token`](crate::Client::with_token) clones); beyond it the oldest is dropped and ends
/// once its queued operations are sent.
pub const COALESCERS_PER_CHANNEL_MAX: usize = 8;

/// One attempt's connection to one node, handed to the closure of
/// [`Client::call`](crate::Client::call). Cheap to clone; the underlying connection is
/// shared with every other call to the same node.
#[derive(Clone, Debug)]
pub struct Rpc {
    channel: AuthChannel,
    addr: Arc<str>,
    /// Set when this attempt's operations go through the node's coalescer.
    coalescer: Option<Coalescer>,
}

impl Rpc {
    /// The Tollgate (reserve/commit) service on this node.
    pub fn tollgate(&self) -> TollgateClient<AuthChannel> {
        TollgateClient::new(self.channel.clone())
    }

    /// The Admin service on this node.
    pub fn admin(&self) -> AdminClient<AuthChannel> {
        AdminClient::new(self.channel.clone())
    }

    /// The Cluster service on this node.
    pub fn cluster(&self) -> ClusterClient<AuthChannel> {
        ClusterClient::new(self.channel.clone())
    }

    /// The raw authenticated channel, for services not wrapped above.
    pub fn channel(&self) -> AuthChannel {
        self.channel.clone()
    }

    /// The node's address, `http://host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One reserve, commit, release or record: in the node's next `Batch` when this attempt
    /// coalesces, else its unary RPC. Either way the answer is the unary call's. A call inside
    /// a sampled trace (feature `otel`) is always unary: it carries its own trace context.
    pub(crate) async fn send<R: Coalesced>(
        &self,
        request: R,
    ) -> Result<Response<R::Response>, Status> {
        match &self.coalescer {
            Some(coalescer) if !crate::trace::sampled() => coalescer.submit(request).await,
            _ => request.unary(self.tollgate()).await,
        }
    }
}

pub(crate) struct Pool {
    /// Normalised, deduplicated, never empty.
    endpoints: Vec<String>,
    /// Time to connect, and time one batch RPC may take: the client's attempt timeout.
    attempt_timeout: Duration,
    /// How `https://` addresses are dialed; `None` for a client without TLS.
    tls: Option<ClientTlsConfig>,
    state: Mutex<PoolState>,
}

struct PoolState {
    leader: Option<String>,
    /// Which endpoint to try next while no leader is known: round robin.
    endpoint_next: usize,
    channels: HashMap<String, Connection>,
}

/// What the pool keeps per address.
struct Connection {
    channel: Channel,
    /// Created on the first coalesced operation with each token; at most
    /// `COALESCERS_PER_CHANNEL_MAX`, oldest first.
    coalescers: Vec<(Auth, Coalescer)>,
}

impl Connection {
    /// The live coalescer for `auth`, started if there is none (or its task has ended,
    /// e.g. with the runtime that started it).
    fn coalescer(
        &mut self,
        auth: &Auth,
        channel: &AuthChannel,
        batch_timeout: Duration,
    ) -> Coalescer {
        self.coalescers
            .retain(|(_, coalescer)| !coalescer.is_closed());
        if let Some((_, coalescer)) = self.coalescers.iter().find(|(a, _)| a == auth) {
            return coalescer.clone();
        }
        if self.coalescers.len() >= COALESCERS_PER_CHANNEL_MAX {
            self.coalescers.remove(0);
        }
        let client = TollgateClient::new(channel.clone());
        let coalescer = Coalescer::start(
            move |request| {
                let mut client = client.clone();
                async move { client.batch(request).await.map(Response::into_inner) }
            },
            batch_timeout,
        );
        self.coalescers.push((auth.clone(), coalescer.clone()));
        debug_assert!(self.coalescers.len() <= COALESCERS_PER_CHANNEL_MAX);
        coalescer
    }
}

impl Pool {
    pub(crate) fn new(
        endpoints: Vec<String>,
        attempt_timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Pool {
        assert!(
            !endpoints.is_empty(),
            "config validation guarantees endpoints"
        );
        Pool {
            endpoints,
            attempt_timeout,
            tls,
            state: Mutex::new(PoolState {
                leader: None,
                endpoint_next: 0,
                channels: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // Nothing panics while the lock is held, but a poisoned cache is still a valid cache.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The address to try next for a leader-only call: the known leader, else the next
    /// configured endpoint in turn.
    pub(crate) fn pick(&self) -> String {
        let mut state = self.state();
        if let Some(leader) = &state.leader {
            return leader.clone();
        }
        let index = state.endpoint_next % self.endpoints.len();
        state.endpoint_next = index + 1;
        self.endpoints[index].clone()
    }

    pub(crate) fn leader(&self) -> Option<String> {
        self.state().leader.clone()
    }

    pub(crate) fn set_leader(&self, addr: &str) {
        let mut state = self.state();
        if state.leader.as_deref() != Some(addr) {
            tracing::debug!(leader = addr, "leader changed");
            state.leader = Some(addr.to_owned());
        }
    }

    /// Forgets `addr` as leader (it failed); a different remembered leader stays.
    pub(crate) fn forget_leader(&self, addr: &str) {
        let mut state = self.state();
        if state.leader.as_deref() == Some(addr) {
            state.leader = None;
        }
    }

    /// The cached channel to `addr`, created (not connected) on first use, and, when
    /// `coalesce`, the coalescer for (`addr`, `auth`), started on first use. Must run inside
    /// a tokio runtime: tonic spawns the channel's worker task, and a coalescer is a task.
    pub(crate) fn rpc(&self, addr: &str, auth: &Auth, coalesce: bool) -> Result<Rpc, Error> {
        let mut state = self.state();
        if !state.channels.contains_key(addr) {
            let channel = self.endpoint(addr)?.connect_lazy();
            if state.channels.len() >= CHANNELS_MAX {
                // Prefer dropping a hint-learned address over a configured one.
                let victim = state
                    .channels
                    .keys()
                    .find(|k| !self.endpoints.contains(k))
                    .or_else(|| state.channels.keys().next())
                    .cloned();
                if let Some(victim) = victim {
                    state.channels.remove(&victim);
                }
            }
            let connection = Connection {
                channel,
                coalescers: Vec::new(),
            };
            state.channels.insert(addr.to_owned(), connection);
        }
        debug_assert!(state.channels.len() <= CHANNELS_MAX);
        let Some(connection) = state.channels.get_mut(addr) else {
            unreachable!("inserted above");
        };
        let channel = InterceptedService::new(connection.channel.clone(), auth.clone());
        let coalescer =
            coalesce.then(|| connection.coalescer(auth, &channel, self.attempt_timeout));
        Ok(Rpc {
            channel,
            addr: Arc::from(addr),
            coalescer,
        })
    }

    /// How to dial `addr`: with the client's TLS settings for `https://` (addresses are
    /// normalised to the client's scheme, so a TLS client never dials clear text).
    fn endpoint(&self, addr: &str) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| Error::Invalid(format!("address {addr:?}: {e}")))?
            .connect_timeout(self.attempt_timeout)
            .tcp_nodelay(true);
        match (&self.tls, addr.starts_with("https://")) {
            (Some(tls), true) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::Invalid(format!("TLS settings for {addr:?}: {e}"))),
            (None, false) => Ok(endpoint),
            _ => Err(Error::Invalid(format!(
                "address {addr:?} does not match the client's TLS setting"
            ))),
        }
    }

    #[cfg(test)]
    fn channels_len(&self) -> usize {
        self.state().channels.len()
    }

    #[cfg(test)]
    fn coalescers_len(&self, addr: &str) -> usize {
        self.state()
            .channels
            .get(addr)
            .map_or(0, |connection| connection.coalescers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_rotates_endpoints_until_a_leader_is_known() {
        let pool = Pool::new(
            vec!["http://a:1".into(), "http://b:2".into()],
            Duration::from_secs(1),
            None,
        );
        assert_eq!(pool.pick(), "http://a:1");
        assert_eq!(pool.pick(), "http://b:2");
        assert_eq!(pool.pick(), "http://a:1");
        pool.set_leader("http://c:3");
        assert_eq!(pool.pick(), "http://c:3");
        assert_eq!(pool.pick(), "http://c:3");
        pool.forget_leader("http://a:1");
        assert_eq!(
            pool.leader().as_deref(),
            Some("http://c:3"),
            "another node's failure"
        );
        pool.forget_leader("http://c:3");
        assert_eq!(pool.leader(), None);
    }

    #[tokio::test]
    async fn channels_are_reused_and_bounded() {
        let pool = Pool::new(vec!["http://a:1".into()], Duration::from_secs(1), None);
        let auth = Auth::default();
        pool.rpc("http://a:1", &auth, false).unwrap();
        pool.rpc("http://a:1", &auth, true).unwrap();
        assert_eq!(pool.channels_len(), 1);
        for port in 0..(CHANNELS_MAX as u16 * 2) {
            pool.rpc(&format!("http://h:{}", port + 10), &auth, true)
                .unwrap();
        }
        assert_eq!(pool.channels_len(), CHANNELS_MAX);
    }

    #[tokio::test]
    async fn one_coalescer_per_token_and_address_bounded() {
        let pool = Pool::new(vec!["http://a:1".into()], Duration::from_secs(1), None);
        let auth = Auth::new(Some("t-0")).unwrap();
        assert!(pool
            .rpc("http://a:1", &auth, false)
            .unwrap()
            .coalescer
            .is_none());
        let first = pool
            .rpc("http://a:1", &auth, true)
            .unwrap()
            .coalescer
            .unwrap();
        let again = pool
            .rpc("http://a:1", &auth, true)
            .unwrap()
            .coalescer
            .unwrap();
        assert!(
            first.same_queue(&again),
            "one coalescer per (address, token)"
        );
        for token in 1..(COALESCERS_PER_CHANNEL_MAX * 2) {
            let auth = Auth::new(Some(&format!("t-{token}"))).unwrap();
            pool.rpc("http://a:1", &auth, true).unwrap();
        }
        assert_eq!(
            pool.coalescers_len("http://a:1"),
            COALESCERS_PER_CHANNEL_MAX
        );
    }
}
