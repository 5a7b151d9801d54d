//! Raft traffic between nodes: openraft's messages, postcard-encoded, over the internal
//! `tollgate.v1.Raft` gRPC service on each member's peer listener (`Member::peer_addr`),
//! with mutual TLS when the node has TLS. One lazily connected channel per peer, reused for
//! every RPC of a replication stream; the server side lives in `grpc::raft_service`.

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::v1::raft_client::RaftClient;
use tollgate_proto::v1::RaftPayload;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{guard, Member, NodeId, TypeConfig};

/// Largest Raft message between nodes, either way: room for a full append batch or a
/// snapshot chunk, far above what a client request may carry.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long to wait for a TCP connection to a peer before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Nodes cut off from every other node: Raft messages to or from them are dropped as if the
/// network were down. Empty in production; tests and the simulator share one set between the
/// nodes of a local cluster to partition it without touching the host's network.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    isolated: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl Partition {
    pub fn isolate(&self, node: NodeId) {
        self.isolated
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node);
    }

    pub fn heal(&self, node: NodeId) {
        self.isolated
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node);
    }

    fn cuts(&self, from: NodeId, to: NodeId) -> bool {
        let isolated = self.isolated.read().unwrap_or_else(|e| e.into_inner());
        isolated.contains(&from) || isolated.contains(&to)
    }
}

pub struct NetworkFactory {
    pub from: NodeId,
    pub partition: Partition,
    /// This node's certificate and the cluster CA, for dialing peers; `None` in insecure
    /// mode (clear text).
    pub tls: Option<ClientTlsConfig>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection::new(
            self.from,
            target,
            &node.peer_addr,
            self.tls.clone(),
            self.partition.clone(),
        )
    }
}

pub struct PeerConnection {
    from: NodeId,
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
    partition: Partition,
}

impl PeerConnection {
    fn new(
        from: NodeId,
        target: NodeId,
        addr: &str,
        tls: Option<ClientTlsConfig>,
        partition: Partition,
    ) -> Self {
        let client = peer_channel(addr, tls)
            .map(|channel| {
                RaftClient::new(channel)
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            })
            .map_err(|e| format!("peer {target} at {addr:?}: {e}"));
        Self {
            from,
            target,
            client,
            partition,
        }
    }

    /// Sends one message and decodes the peer's `Result<Resp, RaftError<..>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        if self.partition.cuts(self.from, self.target) {
            let text = Text(format!("partitioned from node {}", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&text)));
        }
        let client = match &mut self.client {
            Ok(client) => client,
            Err(message) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Text(
                    message.clone(),
                ))))
            }
        };
        let data = postcard::to_allocvec(request).map_err(|e| NetworkError::new(&e))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let response = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let payload = response.map_err(|status| status_to_rpc_error(&status))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&payload.into_inner().data).map_err(|e| NetworkError::new(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A lazily connected channel to the peer listener at `addr` (`host:port`), over TLS when
/// `tls` is set.
pub(crate) fn peer_channel(
    addr: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

/// `InstallSnapshotRequest` as postcard encodes it, field for field, byte for byte, but
/// with the chunk written as one slice (postcard's bytes and a sequence of `u8` share one
/// encoding: a varint length, then the bytes) instead of one serializer call per byte.
#[derive(Serialize)]
struct SnapshotChunk<'a> {
    vote: &'a Vote<NodeId>,
    meta: &'a SnapshotMeta<NodeId, Member>,
    offset: u64,
    #[serde(serialize_with = "as_bytes")]
    data: &'a [u8],
    done: bool,
}

fn as_bytes<S: serde::Serializer>(data: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(data)
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// A peer that cannot be reached gets backed off (Unreachable); anything else is retried.
fn status_to_rpc_error<E: Error>(
    status: &tonic::Status,
) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    let text = Text(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&text))
        }
        _ => RPCError::Network(NetworkError::new(&text)),
    }
}

/// A peer's answer that `guard` finds absurd fails like a broken network would: openraft
/// retries, and never stores the vote it carries.
fn plausible(vote: &Vote<NodeId>, last_log_id: Option<&LogId<NodeId>>) -> Result<(), NetworkError> {
    guard::check_answer(vote, last_log_id).map_err(|refusal| {
        tracing::warn!(%refusal, "a peer's answer was refused");
        NetworkError::new(&refusal)
    })
}

#[derive(Debug)]
struct Text<T>(T);

impl<T: std::fmt::Display> std::fmt::Display for Text<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: std::fmt::Display + std::fmt::Debug> Error for Text<T> {}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let answer: AppendEntriesResponse<NodeId> =
            self.call(Rpc::Append, &request, &option).await?;
        match &answer {
            AppendEntriesResponse::HigherVote(vote) => {
                plausible(vote, None).map_err(RPCError::Network)?
            }
            AppendEntriesResponse::PartialSuccess(matched) => {
                plausible(&request.vote, matched.as_ref()).map_err(RPCError::Network)?
            }
            AppendEntriesResponse::Success | AppendEntriesResponse::Conflict => {}
        }
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let request = SnapshotChunk {
            vote: &request.vote,
            meta: &request.meta,
            offset: request.offset,
            data: &request.data,
            done: request.done,
        };
        let answer: InstallSnapshotResponse<NodeId> =
            self.call(Rpc::Snapshot, &request, &option).await?;
        plausible(&answer.vote, None).map_err(RPCError::Network)?;
        Ok(answer)
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let answer: VoteResponse<NodeId> = self.call(Rpc::Vote, &request, &option).await?;
        plausible(&answer.vote, answer.last_log_id.as_ref()).map_err(RPCError::Network)?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    #[test]
    fn snapshot_chunk_encodes_exactly_as_openraft_request() {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 77)),
            last_membership: StoredMembership::new(
                Some(LogId::new(CommittedLeaderId::new(2, 1), 5)),
                Membership::new(vec![[1, 2, 3].into()], None),
            ),
            snapshot_id: "3-1-77".into(),
        };
        for data in [
            Vec::new(),
            vec![7u8; 1],
            (0..=255u8).cycle().take(70_000).collect(),
        ] {
            let request = InstallSnapshotRequest::<TypeConfig> {
                vote: Vote::new_committed(3, 1),
                meta: meta.clone(),
                offset: 4_096,
                data,
                done: true,
            };
            let chunk = SnapshotChunk {
                vote: &request.vote,
                meta: &request.meta,
                offset: request.offset,
                data: &request.data,
                done: request.done,
            };
            let fast = postcard::to_allocvec(&chunk).unwrap();
            assert_eq!(fast, postcard::to_allocvec(&request).unwrap());
            let decoded: InstallSnapshotRequest<TypeConfig> = postcard::from_bytes(&fast).unwrap();
            assert_eq!(decoded.data, request.data);
        }
    }
}
