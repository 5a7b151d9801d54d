//! `tollgate.v1.Raft`: the receiving end of `raft::network`. Decodes openraft's messages,
//! refuses what `raft::guard` finds implausible, hands the rest to the local Raft, and
//! encodes its `Result` back whole.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::raft::guard::{self, Local};
use crate::raft::NodeId;

pub struct RaftService {
    pub node: Arc<Node>,
}

fn decode<T: DeserializeOwned>(request: Request<pb::RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<pb::RaftPayload>, Status> {
    postcard::to_allocvec(value)
        .map(|data| Response::new(pb::RaftPayload { data }))
        .map_err(|e| Status::internal(format!("unencodable raft message: {e}")))
}

impl RaftService {
    /// The node the peer's certificate names; `None` where the transport proves no identity
    /// (an insecure cluster), and then only the message's own plausibility is checked.
    fn peer_node(&self, _request: &Request<pb::RaftPayload>) -> Result<Option<NodeId>, Status> {
        Ok(None)
    }

    fn local(&self) -> Local {
        Local::of(&self.node.raft)
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let peer = self.peer_node(&request)?;
        let message = decode(request)?;
        guard::check_append(&message, &self.local(), peer)?;
        encode(&self.node.raft.append_entries(message).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let peer = self.peer_node(&request)?;
        let message = decode(request)?;
        guard::check_vote(&message, &self.local(), peer)?;
        encode(&self.node.raft.vote(message).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let peer = self.peer_node(&request)?;
        let message = decode(request)?;
        guard::check_snapshot(&message, &self.local(), peer)?;
        encode(&self.node.raft.install_snapshot(message).await)
    }
}
