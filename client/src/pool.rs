//! Connections and the leader: one lazily-connected tonic `Channel` per address, cached
//! for the life of the client, and the address believed to be the leader. This module
//! never retries or sleeps; the retry loop in `client.rs` decides what to try next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::cluster_client::ClusterClient;
use tollgate_proto::v1::tollgate_client::TollgateClient;
use tollgate_proto::LEADER_METADATA_KEY;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::normalise_endpoint;
use crate::error::Error;

/// Most channels one client caches. Addresses come from the config and from leader hints;
/// a cluster has a handful of nodes, so this only bounds churn from a misbehaving cluster.
pub const CHANNELS_MAX: usize = 32;

/// A channel that adds `authorization: Bearer <token>` to every request.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// Adds the configured bearer token to each request.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    header: Option<AsciiMetadataValue>,
}

impl Auth {
    /// An interceptor for `token`; `None` sends no credentials.
    pub fn new(token: Option<&str>) -> Result<Auth, Error> {
        let header = match token {
            None => None,
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                Error::Invalid("token contains characters not allowed in a header".into())
            })?),
        };
        Ok(Auth { header })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// One attempt's connection to one node, handed to the closure of
/// [`Client::call`](crate::Client::call). Cheap to clone; the underlying connection is
/// shared with every other call to the same node.
#[derive(Clone, Debug)]
pub struct Rpc {
    channel: AuthChannel,
    addr: Arc<str>,
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
}

/// The leader's address from an UNAVAILABLE status, normalised; `None` when the node
/// named no leader or named something that is not an address.
pub fn leader_hint(metadata: &MetadataMap) -> Option<String> {
    let raw = metadata.get(LEADER_METADATA_KEY)?.to_str().ok()?;
    match normalise_endpoint(raw) {
        Ok(addr) => Some(addr),
        Err(error) => {
            tracing::warn!(hint = raw, %error, "ignoring unusable leader hint");
            None
        }
    }
}

pub(crate) struct Pool {
    /// Normalised, deduplicated, never empty.
    endpoints: Vec<String>,
    connect_timeout: Duration,
    state: Mutex<PoolState>,
}

struct PoolState {
    leader: Option<String>,
    /// Which endpoint to try next while no leader is known: round robin.
    endpoint_next: usize,
    channels: HashMap<String, Channel>,
}

impl Pool {
    pub(crate) fn new(endpoints: Vec<String>, connect_timeout: Duration) -> Pool {
        assert!(
            !endpoints.is_empty(),
            "config validation guarantees endpoints"
        );
        Pool {
            endpoints,
            connect_timeout,
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

    /// The cached channel to `addr`, created (not connected) on first use. Must run inside
    /// a tokio runtime: tonic spawns the channel's worker task.
    pub(crate) fn rpc(&self, addr: &str, auth: &Auth) -> Result<Rpc, Error> {
        let mut state = self.state();
        let channel = match state.channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(addr.to_owned())
                    .map_err(|e| Error::Invalid(format!("address {addr:?}: {e}")))?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
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
                state.channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        debug_assert!(state.channels.len() <= CHANNELS_MAX);
        Ok(Rpc {
            channel: InterceptedService::new(channel, auth.clone()),
            addr: Arc::from(addr),
        })
    }

    #[cfg(test)]
    fn channels_len(&self) -> usize {
        self.state().channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata_with(hint: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(LEADER_METADATA_KEY, hint.parse().unwrap());
        metadata
    }

    #[test]
    fn leader_hint_is_parsed_and_normalised() {
        assert_eq!(
            leader_hint(&metadata_with("10.0.0.2:7001")),
            Some("http://10.0.0.2:7001".into())
        );
        assert_eq!(
            leader_hint(&metadata_with("http://n2:7001")),
            Some("http://n2:7001".into())
        );
        assert_eq!(leader_hint(&metadata_with("")), None);
        assert_eq!(leader_hint(&metadata_with("no-port")), None);
        assert_eq!(leader_hint(&MetadataMap::new()), None);
    }

    #[test]
    fn pick_rotates_endpoints_until_a_leader_is_known() {
        let pool = Pool::new(
            vec!["http://a:1".into(), "http://b:2".into()],
            Duration::from_secs(1),
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

    #[test]
    fn token_with_newline_is_rejected() {
        assert!(Auth::new(Some("abc")).is_ok());
        assert!(matches!(Auth::new(Some("a\nb")), Err(Error::Invalid(_))));
    }

    #[tokio::test]
    async fn channels_are_reused_and_bounded() {
        let pool = Pool::new(vec!["http://a:1".into()], Duration::from_secs(1));
        let auth = Auth::default();
        pool.rpc("http://a:1", &auth).unwrap();
        pool.rpc("http://a:1", &auth).unwrap();
        assert_eq!(pool.channels_len(), 1);
        for port in 0..(CHANNELS_MAX as u16 * 2) {
            pool.rpc(&format!("http://h:{}", port + 10), &auth).unwrap();
        }
        assert_eq!(pool.channels_len(), CHANNELS_MAX);
    }
}
