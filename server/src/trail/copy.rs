//! Copying what a node's trail is missing from a peer: the records older than the ledger a
//! snapshot brought (the node joined by snapshot, or lost its store), and the remembered
//! answers. Over the peer listener (`Raft.CopyTrail`, node certificates only), a page at a
//! time; the store refuses records that do not chain to what it holds, so a peer can fill
//! a gap only with the records that belong there.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_ledger::{AuditFilter, AuditRecord, RequestId, TenantId};
use tollgate_proto::v1 as pb;
use tollgate_store::{Answer, AnswerRow, Store};

use super::Trail;
use crate::node::Node;
use crate::raft::NodeId;

/// Records in one page: a few MB at most, far below the peer listener's message bound.
pub const COPY_RECORDS_PER_PAGE: usize = 5_000;
/// Answers in one page.
pub const COPY_ANSWERS_PER_PAGE: usize = 20_000;
/// How often a node with something missing tries again.
const COPY_RETRY: Duration = Duration::from_secs(2);

/// What a node asks a peer for.
#[derive(Debug, Serialize, Deserialize)]
pub enum CopyAsk {
    /// Records after `after_seq`, up to `to_seq` included.
    Records { after_seq: u64, to_seq: u64 },
    /// Answers after the cursor of the previous page (None: from the first).
    Answers { after: Option<Vec<u8>> },
}

/// One remembered answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireAnswer {
    tenant: TenantId,
    request_id: RequestId,
    payload: u128,
    at_ms: u64,
    position: u64,
    outcome: Vec<u8>,
}

/// A peer's page: records as the export's JSON (the one format that round-trips every
/// field), answers with the cursor of the next page.
#[derive(Debug, Serialize, Deserialize)]
pub enum CopyPage {
    /// `first_seq`: the oldest record the peer keeps (older ones its retention purged).
    Records {
        json: String,
        first_seq: Option<u64>,
    },
    Answers {
        rows: Vec<WireAnswer>,
        next: Option<Vec<u8>>,
    },
}

/// The peer's side: a page from its own store.
pub fn serve(store: &Store, ask: CopyAsk) -> Result<CopyPage, String> {
    match ask {
        CopyAsk::Records { after_seq, to_seq } => {
            let records = store
                .query(&AuditFilter {
                    after_seq: Some(after_seq),
                    to_seq: Some(to_seq),
                    limit: COPY_RECORDS_PER_PAGE,
                    ..AuditFilter::default()
                })
                .map_err(|e| e.to_string())?;
            let first_seq = store.state().first_seq;
            let json = serde_json::to_string(&records).map_err(|e| e.to_string())?;
            Ok(CopyPage::Records { json, first_seq })
        }
        CopyAsk::Answers { after } => {
            let (rows, next) = store
                .answers_page(after.as_deref(), COPY_ANSWERS_PER_PAGE)
                .map_err(|e| e.to_string())?;
            let rows = rows.into_iter().map(wire_answer).collect();
            Ok(CopyPage::Answers { rows, next })
        }
    }
}

fn wire_answer(row: AnswerRow) -> WireAnswer {
    WireAnswer {
        tenant: row.tenant,
        request_id: row.request_id,
        payload: row.answer.payload,
        at_ms: row.answer.at_ms,
        position: row.answer.position,
        outcome: row.answer.outcome,
    }
}

/// An answer from a peer, if its ids are valid (serde does not check them).
fn answer_row(wire: WireAnswer) -> Option<AnswerRow> {
    wire.tenant.validate().ok()?;
    wire.request_id.validate().ok()?;
    Some(AnswerRow {
        tenant: wire.tenant,
        request_id: wire.request_id,
        answer: Answer {
            payload: wire.payload,
            at_ms: wire.at_ms,
            position: wire.position,
            outcome: wire.outcome,
        },
    })
}

/// Until the node stops: whenever its trail misses records, or answers are still to be
/// copied, asks its peers for them, one after another, and retries every [`COPY_RETRY`].
pub async fn copy_continuously(node: Arc<Node>, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Err(error) = copy_once(&node).await {
            tracing::warn!("copying the audit trail from a peer: {error}");
        }
        tokio::select! {
            _ = tokio::time::sleep(COPY_RETRY) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

async fn copy_once(node: &Node) -> Result<(), String> {
    let state = node.trail.store().state();
    if state.missing.is_empty() && !node.trail.answers_copying() {
        return Ok(());
    }
    let mut last_error = String::from("no peer to copy from");
    for (peer, addr) in peers(node) {
        let mut client = match peer_client(node, &addr) {
            Ok(client) => client,
            Err(error) => {
                last_error = format!("peer {peer}: {error}");
                continue;
            }
        };
        let copied = copy_from(&node.trail, &mut client).await;
        match copied {
            Ok(()) => return Ok(()),
            Err(error) => last_error = format!("peer {peer}: {error}"),
        }
    }
    Err(last_error)
}

/// Every missing range, then every answer, from one peer.
async fn copy_from(trail: &Trail, client: &mut PeerClient) -> Result<(), String> {
    for (from, to) in trail.store().state().missing {
        copy_range(trail, client, from, to).await?;
        tracing::info!(from, to, "missing audit records copied from a peer");
    }
    if trail.answers_copying() {
        copy_answers(trail, client).await?;
    }
    Ok(())
}

/// The records `from..=to`, page by page. Those the peer's retention already purged are
/// given up as purged here too: no node keeps them (an archive may).
async fn copy_range(
    trail: &Trail,
    client: &mut PeerClient,
    from: u64,
    to: u64,
) -> Result<(), String> {
    let mut after_seq = from.saturating_sub(1);
    while after_seq < to {
        let page = ask(
            client,
            CopyAsk::Records {
                after_seq,
                to_seq: to,
            },
        )
        .await?;
        let CopyPage::Records { json, first_seq } = page else {
            return Err("the peer answered records with answers".into());
        };
        let records: Vec<AuditRecord> =
            serde_json::from_str(&json).map_err(|e| format!("records: {e}"))?;
        let store = trail.store().clone();
        let purged_to = first_seq.filter(|first| *first > after_seq + 1);
        let last = records.last().map(|r| r.seq);
        if last.is_none() && purged_to.is_none_or(|first| first <= to) {
            return Err(format!("the peer has no records after seq {after_seq}"));
        }
        tokio::task::spawn_blocking(move || {
            if let Some(first) = purged_to {
                store.purged_by_peers(first)?;
            }
            store.fill(&records)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("records from seq {}: {e}", after_seq + 1))?;
        after_seq = last.unwrap_or(to);
    }
    Ok(())
}

async fn copy_answers(trail: &Trail, client: &mut PeerClient) -> Result<(), String> {
    let mut after = None;
    let mut copied = 0usize;
    loop {
        let page = ask(client, CopyAsk::Answers { after }).await?;
        let CopyPage::Answers { rows, next } = page else {
            return Err("the peer answered answers with records".into());
        };
        let rows: Vec<AnswerRow> = rows.into_iter().filter_map(answer_row).collect();
        copied = copied.saturating_add(rows.len());
        let store = trail.store().clone();
        tokio::task::spawn_blocking(move || store.write(&[], &rows))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("answers: {e}"))?;
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    trail.answers_copied().map_err(|e| e.to_string())?;
    tracing::info!(answers = copied, "remembered answers copied from a peer");
    Ok(())
}

type PeerClient = pb::raft_client::RaftClient<tonic::transport::Channel>;

/// The other members and their peer listeners.
fn peers(node: &Node) -> Vec<(NodeId, String)> {
    let metrics = node.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    (membership.nodes())
        .filter(|(id, _)| **id != node.id)
        .map(|(id, member)| (*id, member.peer_addr.clone()))
        .collect()
}

fn peer_client(node: &Node, addr: &str) -> Result<PeerClient, String> {
    let channel =
        crate::raft::network::peer_channel(addr, node.dialer.clone()).map_err(|e| e.to_string())?;
    Ok(pb::raft_client::RaftClient::new(channel)
        .max_decoding_message_size(crate::raft::network::RAFT_MESSAGE_BYTES_MAX))
}

async fn ask(client: &mut PeerClient, ask: CopyAsk) -> Result<CopyPage, String> {
    let data = postcard::to_allocvec(&ask).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(pb::RaftPayload { data });
    request.set_timeout(Duration::from_secs(30));
    let response = client
        .copy_trail(request)
        .await
        .map_err(|status| status.message().to_owned())?;
    let page: Result<CopyPage, String> =
        postcard::from_bytes(&response.into_inner().data).map_err(|e| e.to_string())?;
    page
}
