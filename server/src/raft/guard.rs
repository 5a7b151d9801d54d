//! Raft messages from the network are checked here before openraft sees them.
//!
//! openraft trusts its peers: it adds to terms and indexes unchecked and asserts (panics) on
//! inconsistent input, and whatever vote it accepts it also stores, so one absurd message
//! can crash a node at every restart. Only a member of the cluster may speak for itself,
//! and what it says must be plausible: terms and indexes far below overflow, a term no
//! further ahead of ours than elections could have carried it, entries that follow one
//! another, memberships openraft would itself accept. A refused message changes nothing.

use std::collections::BTreeSet;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{EntryPayload, LogId, Membership, RaftTypeConfig, Vote};

use super::{NodeId, Raft, TypeConfig};

type Member = <TypeConfig as RaftTypeConfig>::Node;

/// Highest term or log index a message may carry: far beyond any real cluster's life (an
/// election a millisecond for two million years), and far enough below `u64::MAX` that no
/// `+ 1` inside openraft can overflow.
pub const TERM_MAX: u64 = 1 << 56;
pub const INDEX_MAX: u64 = 1 << 56;
/// How far ahead of ours a peer's term may be. A node cut off from the others keeps
/// starting elections (one per election timeout, at least 150 ms), so a day alone takes it
/// about 600,000 terms ahead; this allows more than a week. A peer further ahead is
/// refused here, and learns the cluster's term from our answers to its own requests.
pub const TERM_JUMP_MAX: u64 = 1 << 22;
/// Largest snapshot a node accepts, offset and chunk included: the receiver writes each
/// chunk at its offset in memory, so an offset near `u64::MAX` must never reach it.
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;
/// Most nodes a membership may name; openraft's quorum arithmetic is not built for more.
pub const MEMBERS_MAX: usize = 64;
/// Longest snapshot id (openraft's are `term-node-index` strings).
pub const SNAPSHOT_ID_BYTES_MAX: usize = 256;

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("node {claimed} is not a member of this cluster")]
    NotMember { claimed: NodeId },
    #[error("the peer's certificate names node {peer}, but the message speaks for node {claimed}")]
    Impersonation { peer: NodeId, claimed: NodeId },
    #[error("{what} {value} is beyond {max}")]
    Implausible {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{0}")]
    Inconsistent(String),
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        let message = format!("raft message refused: {refusal}");
        match refusal {
            Refusal::NotMember { .. } | Refusal::Impersonation { .. } => {
                tonic::Status::permission_denied(message)
            }
            Refusal::Implausible { .. } | Refusal::Inconsistent(_) => {
                tonic::Status::invalid_argument(message)
            }
        }
    }
}

/// What this node knows that a message is checked against.
#[derive(Clone, Debug)]
pub struct Local {
    pub term: u64,
    /// Every node of the current membership (voters of each config and learners); `None`
    /// while this node has no membership yet (a new node, or a learner being added), when
    /// any node the transport authenticated may reach it.
    pub members: Option<BTreeSet<NodeId>>,
}

impl Local {
    pub fn of(raft: &Raft) -> Self {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        Self {
            term: metrics.current_term,
            members: (!members.is_empty()).then_some(members),
        }
    }

    /// Whether node `id` may speak to this node: a member, or anyone before there is a
    /// membership.
    pub fn admits(&self, id: NodeId) -> bool {
        self.members
            .as_ref()
            .is_none_or(|members| members.contains(&id))
    }
}

fn at_most(what: &'static str, value: u64, max: u64) -> Result<(), Refusal> {
    if value > max {
        return Err(Refusal::Implausible { what, value, max });
    }
    Ok(())
}

/// The vote a message speaks with: a plausible term, from a member, the peer itself.
fn check_sender(vote: &Vote<NodeId>, local: &Local, peer: Option<NodeId>) -> Result<(), Refusal> {
    let term = vote.leader_id.term;
    at_most("term", term, TERM_MAX)?;
    at_most("term", term, local.term.saturating_add(TERM_JUMP_MAX))?;
    let claimed = vote.leader_id.node_id;
    if let Some(peer) = peer.filter(|peer| *peer != claimed) {
        return Err(Refusal::Impersonation { peer, claimed });
    }
    if !local.admits(claimed) {
        return Err(Refusal::NotMember { claimed });
    }
    Ok(())
}

/// A log id the sender refers to: written in its term or before.
fn check_log_id(
    what: &'static str,
    log_id: Option<&LogId<NodeId>>,
    term: u64,
) -> Result<(), Refusal> {
    let Some(log_id) = log_id else {
        return Ok(());
    };
    at_most(what, log_id.leader_id.term, term)?;
    at_most("log index", log_id.index, INDEX_MAX)
}

/// A membership openraft itself would accept: no empty config, every voter a known node,
/// a bounded number of nodes.
fn check_membership(membership: &Membership<NodeId, Member>) -> Result<(), Refusal> {
    let nodes = membership.nodes().count();
    if nodes > MEMBERS_MAX {
        return Err(Refusal::Inconsistent(format!(
            "a membership of {nodes} nodes (at most {MEMBERS_MAX})"
        )));
    }
    let configs = membership.get_joint_config();
    if configs.is_empty() || configs.iter().any(BTreeSet::is_empty) {
        return Err(Refusal::Inconsistent("an empty membership".into()));
    }
    match membership
        .voter_ids()
        .find(|voter| membership.get_node(voter).is_none())
    {
        Some(voter) => Err(Refusal::Inconsistent(format!(
            "voter {voter} has no node in its membership"
        ))),
        None => Ok(()),
    }
}

pub fn check_append(
    request: &AppendEntriesRequest<TypeConfig>,
    local: &Local,
    peer: Option<NodeId>,
) -> Result<(), Refusal> {
    check_sender(&request.vote, local, peer)?;
    let term = request.vote.leader_id.term;
    check_log_id("previous entry's term", request.prev_log_id.as_ref(), term)?;
    check_log_id("commit's term", request.leader_commit.as_ref(), term)?;
    let mut previous = request.prev_log_id;
    for entry in &request.entries {
        check_log_id("entry's term", Some(&entry.log_id), term)?;
        let expected = previous.map_or(0, |id| id.index + 1);
        let previous_term = previous.map_or(0, |id| id.leader_id.term);
        if entry.log_id.index != expected || entry.log_id.leader_id.term < previous_term {
            return Err(Refusal::Inconsistent(format!(
                "entry {} does not follow entry {previous:?}",
                entry.log_id
            )));
        }
        if let EntryPayload::Membership(membership) = &entry.payload {
            check_membership(membership)?;
        }
        previous = Some(entry.log_id);
    }
    Ok(())
}

pub fn check_vote(
    request: &VoteRequest<NodeId>,
    local: &Local,
    peer: Option<NodeId>,
) -> Result<(), Refusal> {
    check_sender(&request.vote, local, peer)?;
    let term = request.vote.leader_id.term;
    check_log_id("last entry's term", request.last_log_id.as_ref(), term)
}

pub fn check_snapshot(
    request: &InstallSnapshotRequest<TypeConfig>,
    local: &Local,
    peer: Option<NodeId>,
) -> Result<(), Refusal> {
    check_sender(&request.vote, local, peer)?;
    let term = request.vote.leader_id.term;
    let meta = &request.meta;
    check_log_id("snapshot's term", meta.last_log_id.as_ref(), term)?;
    check_log_id(
        "snapshot membership's term",
        meta.last_membership.log_id().as_ref(),
        term,
    )?;
    check_membership(meta.last_membership.membership())?;
    at_most(
        "snapshot id length",
        meta.snapshot_id.len() as u64,
        SNAPSHOT_ID_BYTES_MAX as u64,
    )?;
    let end = request.offset.saturating_add(request.data.len() as u64);
    at_most("snapshot chunk end", end, SNAPSHOT_BYTES_MAX)
}

/// A peer's answer: a plausible vote, and last entry. Answers come from the peers this node
/// dialed, but openraft stores a higher vote it sees in one just as it would a request's.
pub fn check_answer(
    vote: &Vote<NodeId>,
    last_log_id: Option<&LogId<NodeId>>,
) -> Result<(), Refusal> {
    at_most("term", vote.leader_id.term, TERM_MAX)?;
    check_log_id("last entry's term", last_log_id, TERM_MAX)
}

#[cfg(test)]
mod tests;
