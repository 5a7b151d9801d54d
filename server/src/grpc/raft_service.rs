//! `tollgate.v1.Raft`: the receiving end of `raft::network`, served on the peer listener
//! only. Checks who sent a message (the node certificate of a member), decodes openraft's
//! message, refuses what `raft::guard` finds implausible, hands the rest to the local Raft,
//! and encodes its `Result` back whole.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::raft::guard::{self, Local};
use crate::raft::NodeId;
use crate::tls::{identity_of, CertIdentity};
use crate::trail::copy;

pub struct RaftService {
    pub node: Arc<Node>,
    /// The peer listener requires node certificates (TLS on); false in insecure mode.
    pub mutual_tls: bool,
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
    /// The node that sent `request`, by its certificate: `Some(id)` for a node certificate
    /// (`tollgate://node/<id>`) of a member of the current membership (voter or learner), or
    /// of any node while this one has no membership yet (bootstrap, a joining learner);
    /// PERMISSION_DENIED otherwise, before anything is decoded. `None` in insecure mode,
    /// where no identity is known.
    fn peer_node<T>(&self, request: &Request<T>, local: &Local) -> Result<Option<NodeId>, Status> {
        if !self.mutual_tls {
            return Ok(None);
        }
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|certs| certs.first()) else {
            return Err(Status::permission_denied(
                "raft messages need a node certificate",
            ));
        };
        let id = match identity_of(leaf) {
            CertIdentity::Node(id) => id,
            other => {
                return Err(Status::permission_denied(format!(
                    "raft messages need a node certificate; this one is {other:?}"
                )))
            }
        };
        if !local.admits(id) {
            return Err(Status::permission_denied(format!(
                "node {id} is not a member of this cluster"
            )));
        }
        Ok(Some(id))
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
        let local = self.local();
        let peer = self.peer_node(&request, &local)?;
        let message = decode(request)?;
        guard::check_append(&message, &local, peer)?;
        encode(&self.node.raft.append_entries(message).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let local = self.local();
        let peer = self.peer_node(&request, &local)?;
        let message = decode(request)?;
        guard::check_vote(&message, &local, peer)?;
        encode(&self.node.raft.vote(message).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let local = self.local();
        let peer = self.peer_node(&request, &local)?;
        let message = decode(request)?;
        guard::check_snapshot(&message, &local, peer)?;
        encode(&self.node.raft.install_snapshot(message).await)
    }

    async fn copy_trail(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let local = self.local();
        self.peer_node(&request, &local)?;
        let ask: copy::CopyAsk = decode(request)?;
        let store = self.node.trail.store().clone();
        let page = tokio::task::spawn_blocking(move || copy::serve(&store, ask))
            .await
            .map_err(|e| Status::internal(format!("copying the trail: {e}")))?;
        encode(&page)
    }
}
