//! Continuous audit archiving (`--audit-archive-dir DIR`): the node appends its applied
//! audit records to sealed segments in DIR, in the format of `tollgate audit archive`
//! (`cli::archive`), so `tollgate audit verify --archive DIR` checks either.
//!
//! Every node archives, each its own copy on its own disk, not only the leader: every
//! replica applies the same chain, so the copies are identical; no leadership hand-over can
//! leave two writers on one directory or a gap between two leaders' archives, and the archive
//! goes on while any node is up. The cost is one copy per node; give each node its own
//! directory, never a shared one. The node's trail is not purged while its archive is not
//! current (`Trail::purge_after_archive`): no record leaves the disk unarchived.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate_ledger::AuditFilter;

use crate::cli::archive::{
    archive_end, check_continues, read_manifests, remove_unsealed, ChainWalker, SegmentWriter,
    SEGMENT_RECORDS_DEFAULT,
};
use crate::node::Node;

/// How often the node archives what was applied since: the newest records are at most this
/// old in the archive, and a segment holds at most this long's records.
pub const ARCHIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Records read from the trail on disk at once.
const PAGE_RECORDS: usize = 1_000;

/// Archives every [`ARCHIVE_INTERVAL`] until the node stops. A failure (a gap: records
/// dropped from memory before they were archived; a full disk) is logged as an error at
/// every attempt and never skipped: the archive does not go on past a hole.
pub async fn archive_continuously(
    node: Arc<Node>,
    dir: PathBuf,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (step_node, step_dir) = (node.clone(), dir.clone());
        let step = tokio::task::spawn_blocking(move || {
            archive_step(&step_node, &step_dir, SEGMENT_RECORDS_DEFAULT)
        });
        let ok = match step.await {
            Ok(Ok(0)) => true,
            Ok(Ok(records)) => {
                tracing::debug!(records, dir = %dir.display(), "audit archived");
                true
            }
            Ok(Err(error)) => {
                tracing::error!(dir = %dir.display(), "audit archive failed: {error:#}");
                false
            }
            Err(join) => {
                tracing::error!(dir = %dir.display(), "audit archive task: {join}");
                false
            }
        };
        node.trail.archive_step_done(ok);
        tokio::select! {
            _ = tokio::time::sleep(ARCHIVE_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

/// Appends the records applied past the archive's end up to the chain head, in segments of
/// `segment_records` (the last one of a step shorter); the records archived.
pub fn archive_step(node: &Node, dir: &Path, segment_records: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let manifests = read_manifests(dir)?;
    remove_unsealed(dir, &manifests)?;
    let end = archive_end(&manifests)?;
    // What the trail on disk holds: the ledger's memory may have let older records go.
    let head = node.trail.store().state().last_seq.unwrap_or(0);
    let mut cursor = end.map_or(0, |end| end.seq);
    let mut walker = ChainWalker::new(None);
    let mut segment: Option<SegmentWriter> = None;
    while cursor < head {
        let filter = AuditFilter {
            after_seq: Some(cursor),
            to_seq: Some(head),
            limit: PAGE_RECORDS,
            ..AuditFilter::default()
        };
        let page = node.trail.store().query(&filter)?;
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        for record in page {
            if walker.records == 0 {
                check_continues(end, &record)?;
            }
            let line = serde_json::to_string(&record)?;
            walker.push(record.clone())?;
            let writer = match segment.as_mut() {
                Some(writer) => writer,
                None => segment.insert(SegmentWriter::create(dir)?),
            };
            writer.append(&record, &line)?;
            if writer.records >= segment_records {
                seal(&mut walker, segment.take())?;
            }
        }
    }
    seal(&mut walker, segment.take())?;
    Ok(walker.records)
}

/// Seals a segment once the chain it holds verifies.
fn seal(walker: &mut ChainWalker, segment: Option<SegmentWriter>) -> anyhow::Result<()> {
    if let Some(segment) = segment {
        walker.checkpoint()?;
        segment.seal()?;
    }
    Ok(())
}
