//! The node's side of the trail on disk (`tollgate_store`): every audit record and every
//! remembered answer the ledger produces, written in log order by one writer thread, so the
//! apply path only hands them over; the purge by age and size; and the exactly-once lookup
//! beyond the ledger's memory that the leader does before proposing.
//!
//! Every node writes, not only the leader: every replica applies the same log, so every
//! store holds the same records and answers, and whichever node leads next serves them.
//! Writes are not fsynced one by one: the Raft log is what makes a decision durable, and a
//! restart re-applies the log after the snapshot, which recomputes the same records (those
//! the store lost are written again). So the store is made durable (`Trail::flush`) before a
//! snapshot lets the log go.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate_ledger::{AuditBatch, Command, Ledger, Outcome, DEDUP_WINDOW_MS};
use tollgate_store::{AnswerBatch, AnswerRef, Store, StoreConfig, StoreError};

pub mod copy;

/// Batches of applied records and answers waiting for the writer. Apply blocks when it is
/// full, so a slow disk slows the node down instead of growing memory without bound. Room
/// for what a busy node applies while the writer gathers (`WRITE_GATHER`) and writes.
const QUEUE_MESSAGES_MAX: usize = 1_024;
/// How long the writer lets applied batches gather before it writes them as one: a busy
/// node applies thousands of small entries a second, and writing each as it comes cost a
/// wake-up of this thread and a commit of the store's catalog apiece. Nothing waits on the
/// writer but queries of what was just applied and snapshots, which this delays as much.
const WRITE_GATHER: Duration = Duration::from_millis(5);
/// Present while answers are still to be copied from a peer.
const ANSWERS_COPYING_FILE: &str = "ANSWERS-COPYING";
/// Margin, within the ledger's memory of answers, for a retry to reach the log after the
/// leader looked it up: a leader's entries are stamped seconds apart at most.
const RETRY_MARGIN_MS: u64 = 60_000;
/// How often the store is purged by age and size.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// What the writer thread is asked to do, in order.
enum Message {
    /// `number`: how many writes were handed over, this one included; `at_ms`: the ledger's
    /// time when they were applied.
    Write {
        records: AuditBatch,
        answers: AnswerBatch,
        number: u64,
        at_ms: u64,
    },
    /// Everything before it written and fsynced: the result goes back on the channel.
    Flush(SyncSender<Result<(), String>>),
}

/// The writer thread's queue; the last handle's drop closes it and waits for the thread to
/// drain it, so the store is closed when the node is (a restart reopens it at once).
struct Writer {
    queue: Option<SyncSender<Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, message: Message) -> Result<(), &'static str> {
        let queue = self.queue.as_ref().ok_or("the trail writer has stopped")?;
        queue
            .send(message)
            .map_err(|_| "the trail writer has stopped")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The handle the state machine and the services share.
#[derive(Clone)]
pub struct Trail {
    store: Store,
    writer: Arc<Writer>,
    /// The highest audit seq the writer has stored (or skipped over, see `Trail::write`).
    written: watch::Receiver<u64>,
    /// Writes handed over so far, and (from the writer) the writes done with the ledger time
    /// of the last: the leader's look-up waits for what the ledger may have forgotten
    /// (`Trail::caught_up`).
    handed: Arc<AtomicU64>,
    done: watch::Receiver<(u64, u64)>,
    /// Answers are still to be copied from a peer (`copy`): kept as a file in the store's
    /// directory, so a restart goes on copying.
    answers_copying: Arc<AtomicBool>,
    /// The term of the last blank entry applied: a leader has applied every entry committed
    /// before its term once this is its term (its first entry is blank), so what its store
    /// does not remember was never answered (`remembered`). Outside the ledger's lock, so
    /// the leader reads it without waiting for an apply.
    blank_term: Arc<AtomicU64>,
    /// With `--audit-archive-dir`: whether the archive's last step succeeded; the purge waits
    /// for it, so no record leaves the disk before it is archived. Unset without an archive.
    archived: Arc<std::sync::OnceLock<AtomicBool>>,
}

impl Trail {
    /// Opens the store and starts its writer. Blocking (the store replays its journal).
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let store = Store::open(config)?;
        let written_seq = store.state().last_seq.unwrap_or(0);
        let copying = store.config().dir.join(ANSWERS_COPYING_FILE).exists();
        let (written_tx, written) = watch::channel(written_seq);
        let (done_tx, done) = watch::channel((0, 0));
        let (queue, inbox) = sync_channel(QUEUE_MESSAGES_MAX);
        let writer_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("trail-writer".into())
            .spawn(move || write_loop(&writer_store, &inbox, &written_tx, &done_tx))
            .map_err(|e| StoreError::Engine(format!("starting the trail writer: {e}")))?;
        Ok(Self {
            store,
            writer: Arc::new(Writer {
                queue: Some(queue),
                thread: Some(thread),
            }),
            written,
            handed: Arc::new(AtomicU64::new(0)),
            done,
            answers_copying: Arc::new(AtomicBool::new(copying)),
            blank_term: Arc::new(AtomicU64::new(0)),
            archived: Arc::new(std::sync::OnceLock::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &StoreConfig {
        self.store.config()
    }

    /// Hands records and answers to the writer, in log order. Blocks while the queue is full.
    pub fn write(&self, records: AuditBatch, answers: AnswerBatch, at_ms: u64) {
        if records.is_empty() && answers.is_empty() {
            return;
        }
        let number = self.handed.fetch_add(1, Ordering::AcqRel) + 1;
        let message = Message::Write {
            records,
            answers,
            number,
            at_ms,
        };
        if let Err(error) = self.writer.send(message) {
            tracing::error!("{error}: records are not stored");
        }
    }

    /// Makes the purge wait for the continuous archive (`crate::archive`): until its first
    /// step succeeds, and whenever its last step failed.
    pub fn purge_after_archive(&self) {
        let _ = self.archived.set(AtomicBool::new(false));
    }

    /// The archive's step succeeded (or failed): what the purge waits on.
    pub fn archive_step_done(&self, ok: bool) {
        if let Some(archived) = self.archived.get() {
            archived.store(ok, Ordering::Release);
        }
    }

    /// Whether records may be purged: always without an archive, else once it is current.
    fn purge_allowed(&self) -> bool {
        (self.archived.get()).is_none_or(|archived| archived.load(Ordering::Acquire))
    }

    /// Notes that the blank entry of `term`'s leader was applied.
    pub fn applied_blank(&self, term: u64) {
        (self.blank_term).fetch_max(term, Ordering::AcqRel);
    }

    /// Whether every entry committed before `term` was applied here.
    pub fn applied_before(&self, term: u64) -> bool {
        self.blank_term.load(Ordering::Acquire) >= term
    }

    /// Whether answers older than this node's ledger are still to be copied from a peer.
    pub fn answers_copying(&self) -> bool {
        self.answers_copying.load(Ordering::Acquire)
    }

    /// Notes that the ledger holds history this store never saw (it came by snapshot): the
    /// answers of that history are to be copied from a peer. Blocking.
    pub fn start_copying_answers(&self) {
        let marker = self.config().dir.join(ANSWERS_COPYING_FILE);
        if let Err(error) = std::fs::write(&marker, b"") {
            tracing::error!(file = %marker.display(), "noting answers to copy: {error}");
        }
        self.answers_copying.store(true, Ordering::Release);
    }

    /// Every answer was copied (and is made durable first: `flush` fsyncs).
    pub fn answers_copied(&self) -> Result<(), String> {
        self.flush()?;
        let marker = self.config().dir.join(ANSWERS_COPYING_FILE);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", marker.display())),
        }
        self.answers_copying.store(false, Ordering::Release);
        Ok(())
    }

    /// Waits until everything handed over so far is written and fsynced. Blocking.
    pub fn flush(&self) -> Result<(), String> {
        let (done, result) = sync_channel(1);
        self.writer.send(Message::Flush(done))?;
        result
            .recv()
            .unwrap_or_else(|_| Err("the trail writer has stopped".to_string()))
    }

    /// Whether a look-up at `now_ms` sees every answer the ledger may no longer remember:
    /// true at once if the writer is done, or behind by less than the ledger's memory less
    /// a margin for the retry's own way to the log (what it has not stored yet is then still
    /// remembered by the ledger); else once what was handed before this call is stored, or
    /// false after `timeout`.
    pub async fn caught_up(&self, now_ms: u64, timeout: Duration) -> bool {
        let handed = self.handed.load(Ordering::Acquire);
        let (done, done_at_ms) = *self.done.borrow();
        let remembered_until = done_at_ms.saturating_add(DEDUP_WINDOW_MS - RETRY_MARGIN_MS);
        if done >= handed || remembered_until > now_ms {
            return true;
        }
        let mut watch = self.done.clone();
        tokio::time::timeout(timeout, watch.wait_for(|(done, _)| *done >= handed))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Waits until the writer has stored the records up to `seq` (a query must see what was
    /// applied before it), or `timeout` passes.
    pub async fn written_through(&self, seq: u64, timeout: Duration) -> bool {
        let mut written = self.written.clone();
        let reached = tokio::time::timeout(timeout, written.wait_for(|written| *written >= seq))
            .await
            .is_ok_and(|waited| waited.is_ok());
        reached
    }
}

/// The writer: waits for a first batch, lets more gather for `WRITE_GATHER`, then takes
/// every waiting batch at once, so a busy node writes large batches.
fn write_loop(
    store: &Store,
    inbox: &Receiver<Message>,
    written: &watch::Sender<u64>,
    done: &watch::Sender<(u64, u64)>,
) {
    // Kept across batches: a batch's vectors are large, and allocating them afresh each time
    // cost page faults on memory the allocator had just returned to the system.
    let (mut records, mut answers) = (Vec::new(), Vec::new());
    loop {
        let first = match inbox.recv_timeout(Duration::from_secs(1)) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                // The node stops: what is still in memory goes to disk, so the next start
                // need not recompute it.
                if let Err(error) = store.persist() {
                    tracing::warn!("persisting the audit trail at shutdown: {error}");
                }
                return;
            }
        };
        if matches!(first, Message::Write { .. }) {
            std::thread::sleep(WRITE_GATHER);
        }
        records.clear();
        answers.clear();
        let (mut flush, mut last) = (None, None);
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Write {
                    records: more_records,
                    answers: more_answers,
                    number,
                    at_ms,
                } => {
                    records.push(more_records);
                    answers.push(more_answers);
                    last = Some((number, at_ms));
                }
                Message::Flush(done) => {
                    flush = Some(done);
                    break;
                }
            }
            next = inbox.try_recv().ok();
        }
        store_batch(store, &records, &answers, written);
        // Counted even when the write failed (logged and counted there): a look-up must not
        // wait for ever on a broken disk.
        if let Some(last) = last {
            done.send_replace(last);
        }
        if let Some(done) = flush {
            let _ = done.send(store.persist().map_err(|e| e.to_string()));
        }
    }
}

/// Writes one batch. A failure is logged and counted; the records it held then show as a
/// missing range in the store's state (the next write starts past them), never silently.
fn store_batch(
    store: &Store,
    records: &[AuditBatch],
    answers: &[AnswerBatch],
    written: &watch::Sender<u64>,
) {
    if records.iter().all(AuditBatch::is_empty) && answers.iter().all(AnswerBatch::is_empty) {
        return;
    }
    if let Err(error) = store.write_batches(records, answers) {
        // Not marked written: a query waiting for these records fails (UNAVAILABLE) rather
        // than ending before them; the next write leaves them as a missing range.
        metrics::counter!("tollgate_trail_write_errors_total").increment(1);
        let records: usize = records.iter().map(AuditBatch::len).sum();
        tracing::error!(records, "writing the audit trail: {error}");
        return;
    }
    if let Some(last) = records.iter().rev().find_map(AuditBatch::last_seq) {
        written.send_if_modified(|seq| {
            let moved = last > *seq;
            *seq = (*seq).max(last);
            moved
        });
    }
}

/// The records the ledger appended after `after_seq`, oldest first, in their binary form:
/// what an apply hands to the writer.
pub fn records_after(ledger: &Ledger, after_seq: u64) -> AuditBatch {
    let mut records = AuditBatch::default();
    ledger.audit_encoded_after(after_seq, &mut records);
    records
}

/// The first answers of an apply, to remember on disk, in their binary form, with the
/// buffers that build them (kept across the apply's commands).
#[derive(Default)]
pub struct FirstAnswers {
    pub batch: AnswerBatch,
    payload: Vec<u8>,
    outcome: Vec<u8>,
}

impl FirstAnswers {
    /// Adds the answer to `command` if the ledger remembers it: a first answer (not a
    /// retry's) to a command with a tenant and a request id, that is not a rejection.
    pub fn add(
        &mut self,
        command: &Command,
        outcome: &Outcome,
        position: u64,
        entry_index: u64,
        at_ms: u64,
    ) {
        let (Some(tenant), Some(request_id)) = (command.tenant(), command.request_id()) else {
            return;
        };
        if position != entry_index || matches!(outcome, Outcome::Rejected(_)) {
            return;
        }
        self.outcome.clear();
        // Serializing plain data into a Vec has no failure mode but allocation.
        let _ = postcard::to_io(outcome, &mut self.outcome);
        let answer = AnswerRef {
            payload: tollgate_ledger::payload_hash(&mut self.payload, command),
            at_ms,
            position,
            outcome: &self.outcome,
        };
        self.batch.push(tenant, request_id, answer);
    }
}

/// What the leader answers, without proposing, to a retry the ledger no longer remembers
/// but the store does: the first outcome and where it was given; or the refusal of a reused
/// id (another payload). None: not remembered, so the command is proposed.
pub fn remembered(trail: &Trail, command: &Command, now_ms: u64) -> Option<(Outcome, u64)> {
    let (tenant, request_id) = (command.tenant()?, command.request_id()?);
    let unreadable = || {
        Outcome::Rejected(tollgate_ledger::Rejection::AnswerUnreadable {
            request_id: request_id.clone(),
        })
    };
    // Answers younger than this are still in the ledger's memory when the command is
    // applied (within the margin), which dedups them: the store need not be searched.
    let given_by_ms = now_ms.saturating_sub(DEDUP_WINDOW_MS - RETRY_MARGIN_MS);
    // A store that cannot be read refuses the retry: executing it again could charge twice.
    let answer = match (trail.store()).answer_given_by(tenant, request_id, now_ms, given_by_ms) {
        Ok(answer) => answer?,
        Err(error) => {
            tracing::error!("reading a remembered answer: {error}");
            return Some((unreadable(), 0));
        }
    };
    let mut scratch = Vec::new();
    if tollgate_ledger::payload_hash(&mut scratch, command) != answer.payload {
        let reused = tollgate_ledger::Rejection::RequestIdReused {
            tenant: tenant.clone(),
            request_id: request_id.clone(),
            first_at_ms: answer.at_ms,
        };
        return Some((Outcome::Rejected(reused), answer.position));
    }
    // An answer that does not decode is refused, never executed again as if new.
    let outcome = postcard::from_bytes::<Outcome>(&answer.outcome).unwrap_or_else(|error| {
        tracing::error!("a remembered answer does not decode: {error}");
        unreadable()
    });
    Some((outcome, answer.position))
}

/// Purges the store by age and size every [`PURGE_INTERVAL`] until the node stops, against
/// the ledger's time (the log's, so a moved clock moves retention too). A size bound that
/// cuts retention or the exactly-once horizon short is logged each time it does, and shown
/// by the gauges and `tollgate status`.
pub async fn purge_continuously(node: Arc<crate::node::Node>, mut stopped: watch::Receiver<bool>) {
    loop {
        let now_ms = crate::raft::state_machine::read_applied(&node.applied)
            .ledger
            .now_ms();
        let trail = node.trail.clone();
        match tokio::task::spawn_blocking(move || purge_once(&trail, now_ms)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!("purging the audit trail: {error}"),
            Err(join) => tracing::error!("purging the audit trail: {join}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

/// One purge by age and size, with its log lines and gauges: what [`purge_continuously`]
/// does every [`PURGE_INTERVAL`].
pub fn purge_once(trail: &Trail, now_ms: u64) -> Result<(), StoreError> {
    if !trail.purge_allowed() {
        tracing::warn!(
            "the audit trail is not purged while its archive is not current (see the archive's \
             errors): it may grow past --audit-max-bytes"
        );
        return Ok(());
    }
    let report = trail.store().purge(now_ms)?;
    let state = trail.store().state();
    let config = trail.config();
    if report.size_forced_records {
        tracing::warn!(
            retention_ms = state.audit_retention_in_force_ms,
            configured_ms = config.audit_retention_ms,
            max_bytes = config.audit_max_bytes,
            "the audit trail's size bound purged records younger than the retention"
        );
    }
    if report.size_forced_answers {
        tracing::warn!(
            horizon_ms = state.answer_horizon_in_force_ms,
            configured_ms = config.answer_horizon_ms,
            max_bytes = config.answers_max_bytes,
            "the size bound of remembered answers shortened the exactly-once horizon: \
             a retry older than horizon_ms is now a new request"
        );
    }
    metrics::gauge!("tollgate_trail_bytes").set(state.audit_bytes as f64);
    metrics::gauge!("tollgate_answers_bytes").set(state.answers_bytes as f64);
    metrics::gauge!("tollgate_audit_retention_seconds")
        .set(state.audit_retention_in_force_ms as f64 / 1_000.0);
    metrics::gauge!("tollgate_answer_horizon_seconds")
        .set(state.answer_horizon_in_force_ms as f64 / 1_000.0);
    let missing: u64 = state
        .missing
        .iter()
        .map(|(from, to)| to.saturating_sub(*from).saturating_add(1))
        .sum();
    metrics::gauge!("tollgate_trail_missing_records").set(missing as f64);
    metrics::counter!("tollgate_trail_records_purged_total").increment(report.records_purged);
    metrics::counter!("tollgate_answers_purged_total").increment(report.answers_purged);
    Ok(())
}
