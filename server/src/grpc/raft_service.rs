//! `tollgate.v1.Raft`: the receiving end of `raft::network`. Decodes openraft's messages,
//! hands them to the local Raft, and encodes its `Result` back whole.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::node::Node;

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

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let result = self.node.raft.append_entries(decode(request)?).await;
        encode(&result)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let result = self.node.raft.vote(decode(request)?).await;
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let result = self.node.raft.install_snapshot(decode(request)?).await;
        encode(&result)
    }
}
