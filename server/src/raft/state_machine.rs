//! The Raft state machine: applies committed batches to the ledger, in log order.
//!
//! The ledger lives in memory; durability comes from the log (the raft-log WAL) plus the newest snapshot,
//! written to `snapshot.bin` in the data directory (temporary file, fsync, rename) before
//! openraft is told it exists. On start the ledger is restored from that file and openraft
//! re-applies the log after it. This module never decides anything: it only feeds the ledger.
//!
//! A snapshot (the file, and what travels to another node) is an envelope: a small header
//! with openraft's metadata, then the ledger's own snapshot bytes as they are (see
//! `encode_envelope`). The ledger's part is never copied into another encoding, so a
//! snapshot of hundreds of MB is encoded, written, sent and decoded without extra copies;
//! only the file is kept (not a copy in memory), and it is read again when openraft sends it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use xxhash_rust::xxh3::xxh3_64;

use super::{BatchOutcome, Member, NodeId, TypeConfig};
use crate::auth::KeyIndex;
use crate::trail::Trail;
use tollgate_ledger::{Command, KeyId, Ledger, Outcome, SnapshotError};
use tollgate_store::AnswerBatch;

const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What the state machine holds: the ledger and where in the log it stands.
#[derive(Debug)]
pub struct Applied {
    pub ledger: Ledger,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
    /// The newest audit record handed to the trail's writer.
    pub trail_seq: u64,
}

impl Default for Applied {
    fn default() -> Self {
        Self {
            ledger: Ledger::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            trail_seq: 0,
        }
    }
}

/// Shared with the gRPC layer, which reads the ledger after a linearizable read barrier.
/// A std lock: it is never held across an `.await`.
pub type SharedApplied = Arc<RwLock<Applied>>;

/// The first bytes of every snapshot envelope (file or transfer).
pub const ENVELOPE_MAGIC: [u8; 8] = *b"TGRAFTSN";
/// Bump on any change to the envelope's header or metadata (the ledger's part has its own
/// version). 2: members record a peer address beside the client address (`raft::Member`).
pub const ENVELOPE_FORMAT_VERSION: u32 = 2;
/// magic (8) | version (u32 LE) | metadata length (u32 LE) | xxh3-64 of the metadata (u64 LE).
const ENVELOPE_HEADER_BYTES: usize = 8 + 4 + 4 + 8;
/// Longest metadata accepted: a membership of a handful of nodes takes well under 1 KiB.
pub const ENVELOPE_META_BYTES_MAX: usize = 64 * 1024;

/// Why snapshot bytes were refused. The ledger's own part is checked by `Ledger::restore`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("snapshot is {len} bytes, shorter than its header")]
    Truncated { len: usize },
    #[error("not a Tollgate snapshot: the first 8 bytes are not {:?}", String::from_utf8_lossy(&ENVELOPE_MAGIC))]
    BadMagic,
    #[error(
        "snapshot envelope version {found} is not supported; this build reads version {supported}"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("snapshot metadata is {len} bytes, more than ENVELOPE_META_BYTES_MAX ({ENVELOPE_META_BYTES_MAX})")]
    MetaTooLong { len: usize },
    #[error("snapshot metadata checksum mismatch: the bytes are corrupt")]
    MetaChecksumMismatch,
    #[error("snapshot metadata does not decode: {0}")]
    MetaDecode(String),
    #[error("snapshot {found} was received as snapshot {expected}")]
    MetaMismatch { found: String, expected: String },
    #[error(transparent)]
    Ledger(#[from] SnapshotError),
}

/// The envelope of `ledger` at `meta`: header, metadata, then the ledger's snapshot, encoded
/// in place after them.
fn encode_envelope(meta: &SnapshotMeta<NodeId, Member>, ledger: &Ledger) -> Vec<u8> {
    // Serializing plain data into a Vec has no failure mode but allocation.
    let meta_bytes = postcard::to_allocvec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_BYTES + meta_bytes.len());
    out.extend_from_slice(&ENVELOPE_MAGIC);
    out.extend_from_slice(&ENVELOPE_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxh3_64(&meta_bytes).to_le_bytes());
    out.extend_from_slice(&meta_bytes);
    ledger.snapshot_into(out)
}

/// Splits an envelope into its metadata and the ledger's snapshot bytes (not yet checked:
/// `Ledger::restore` does that).
fn decode_envelope(bytes: &[u8]) -> Result<(SnapshotMeta<NodeId, Member>, &[u8]), EnvelopeError> {
    let truncated = || EnvelopeError::Truncated { len: bytes.len() };
    let (header, rest) = bytes
        .split_at_checked(ENVELOPE_HEADER_BYTES)
        .ok_or_else(truncated)?;
    if header[..8] != ENVELOPE_MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let field = |at: usize, len: usize| -> Result<u64, EnvelopeError> {
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(header.get(at..at + len).ok_or_else(truncated)?);
        Ok(u64::from_le_bytes(le))
    };
    let version = field(8, 4)? as u32;
    if version != ENVELOPE_FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion {
            found: version,
            supported: ENVELOPE_FORMAT_VERSION,
        });
    }
    let meta_len = usize::try_from(field(12, 4)?).unwrap_or(usize::MAX);
    if meta_len > ENVELOPE_META_BYTES_MAX {
        return Err(EnvelopeError::MetaTooLong { len: meta_len });
    }
    let (meta_bytes, ledger) = rest.split_at_checked(meta_len).ok_or_else(truncated)?;
    if field(16, 8)? != xxh3_64(meta_bytes) {
        return Err(EnvelopeError::MetaChecksumMismatch);
    }
    let meta =
        postcard::from_bytes(meta_bytes).map_err(|e| EnvelopeError::MetaDecode(e.to_string()))?;
    Ok((meta, ledger))
}

/// The ledger and metadata in `bytes`, fully checked: envelope, then the ledger's checksum,
/// decoding and invariants. CPU-bound for a large snapshot: call it off the async runtime.
fn restore_envelope(bytes: &[u8]) -> Result<(SnapshotMeta<NodeId, Member>, Ledger), EnvelopeError> {
    let (meta, ledger) = decode_envelope(bytes)?;
    Ok((meta, Ledger::restore(ledger)?))
}

#[derive(Clone)]
pub struct StateMachine {
    applied: SharedApplied,
    /// The live API keys, for authentication; follows every key command and snapshot.
    keys: Arc<KeyIndex>,
    dir: PathBuf,
    /// The audit records and answers on disk, written after every apply.
    trail: Trail,
    /// The last log id of the snapshot in `snapshot.bin`; held while the file is replaced,
    /// so a build that finishes after a newer install never puts an older snapshot back.
    persisted: Arc<Mutex<Option<LogId<NodeId>>>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`, restoring the ledger from the newest snapshot there.
    /// CPU-bound for a large snapshot: call it off the async runtime.
    pub fn open(dir: &Path, trail: Trail) -> anyhow::Result<Self> {
        sweep_temp_files(dir).map_err(|e| {
            anyhow::anyhow!("sweeping snapshot temp files in {}: {e}", dir.display())
        })?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut applied = Applied::default();
        if path.exists() {
            let started = std::time::Instant::now();
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading snapshot {}: {e}", path.display()))?;
            let (meta, ledger) = restore_envelope(&bytes)
                .map_err(|e| anyhow::anyhow!("restoring snapshot {}: {e}", path.display()))?;
            applied.ledger = ledger;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = bytes.len(),
                elapsed_ms = started.elapsed().as_millis(),
                "snapshot restored"
            );
        }
        let persisted = applied.last_applied;
        let keys = Arc::new(KeyIndex::default());
        keys.rebuild(&applied.ledger);
        catch_up_trail(&mut applied, &trail);
        Ok(Self {
            applied: Arc::new(RwLock::new(applied)),
            keys,
            dir: dir.to_path_buf(),
            trail,
            persisted: Arc::new(Mutex::new(persisted)),
        })
    }

    pub fn shared(&self) -> SharedApplied {
        self.applied.clone()
    }

    /// The live API keys, kept current with what is applied.
    pub fn keys(&self) -> Arc<KeyIndex> {
        self.keys.clone()
    }

    /// Makes `bytes` (a snapshot at `last_log_id`, already checked) the snapshot file,
    /// durably, unless the file already holds a newer one. Blocking.
    fn persist(&self, last_log_id: Option<LogId<NodeId>>, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.write_temp(bytes)?;
        self.publish(last_log_id, &tmp)
    }

    /// The name of a temporary snapshot file: `write_temp` makes it, `sweep_temp_files`
    /// removes what a crash or a failed write left.
    fn temp_name(write: u64) -> String {
        format!("{SNAPSHOT_FILE}.{write}.tmp")
    }

    /// Writes `bytes` to a temporary file of its own (a build and an install may write at
    /// the same time), with an fsync; `publish` then renames it.
    fn write_temp(&self, bytes: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(Self::temp_name(write));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(tmp)
    }

    /// Renames the temporary file over the snapshot file (and fsyncs the directory), unless
    /// the snapshot file is newer than `last_log_id`: then the temporary file is removed.
    fn publish(&self, last_log_id: Option<LogId<NodeId>>, tmp: &Path) -> std::io::Result<()> {
        let mut persisted = lock_mutex(&self.persisted);
        if *persisted > last_log_id {
            tracing::info!(
                ?last_log_id,
                newer = ?*persisted,
                "snapshot not written: the file holds a newer one"
            );
            return std::fs::remove_file(tmp);
        }
        std::fs::rename(tmp, self.dir.join(SNAPSHOT_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        *persisted = last_log_id;
        Ok(())
    }

    /// The snapshot file's bytes and metadata, read again from disk (no copy is kept in
    /// memory). Blocking.
    fn read_current(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        // Held so that the file is not replaced while it is read.
        let _persisted = lock_mutex(&self.persisted);
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (meta, _) = decode_envelope(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// Removes the temporary snapshot files a crash or a failed write (a full disk) left in
/// `dir`: nothing reads them, and left alone they would fill the disk one failure at a time.
/// Runs at open, before any write of this process can have one in progress.
fn sweep_temp_files(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if is_temp_name(&entry.file_name().to_string_lossy()) {
            tracing::warn!(file = %entry.path().display(), "removing a stale snapshot temp file");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whether `name` is one `StateMachine::temp_name` makes: the snapshot file's name, a write
/// number, `.tmp`. Nothing else in the directory is touched.
fn is_temp_name(name: &str) -> bool {
    let number = name
        .strip_prefix(SNAPSHOT_FILE)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".tmp"));
    number.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a received snapshot was not installed.
enum InstallFailure {
    Refused(EnvelopeError),
    Write(std::io::Error),
}

fn lock_mutex<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock would already have taken the node down; the data is
    // still consistent because every mutation of the ledger is applied whole.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// The key a command changed, if it is a key command that took effect.
fn key_changed<'a>(command: &'a Command, outcome: &Outcome) -> Option<&'a KeyId> {
    if *outcome != Outcome::Done {
        return None;
    }
    match command {
        Command::CreateKey { key, .. } => Some(&key.id),
        Command::RotateKey { key_id, .. } | Command::RevokeKey { key_id, .. } => Some(key_id),
        _ => None,
    }
}

/// Hands the trail what the ledger holds beyond the store: after a restart, nothing (the
/// store was flushed before the snapshot was written); after a snapshot was installed, or
/// with a lost store, the records the ledger still holds in memory. Anything older is then
/// a missing range of the store, which it reports and a peer fills.
///
/// After a restart the store may also hold records past the snapshot, written before the
/// stop: the log's replay recomputes exactly those (the ledger is deterministic), so they
/// are not handed over again; checking each against the disk made a restart read back every
/// record of the replay.
fn catch_up_trail(applied: &mut Applied, trail: &Trail) {
    let stored = trail.store().state().last_seq.unwrap_or(0);
    let head = applied.ledger.chain_head().seq;
    if stored < head {
        let records = crate::trail::records_after(&applied.ledger, stored);
        trail.write(records, AnswerBatch::default(), applied.ledger.now_ms());
        trail.start_copying_answers();
    }
    applied.trail_seq = head.max(stored);
}

impl StateMachine {
    /// Applies one batch's commands in order; the answers to remember on disk go to `answers`.
    fn apply_batch(
        &self,
        ledger: &mut Ledger,
        batch: &super::Batch,
        index: u64,
        answers: &mut crate::trail::FirstAnswers,
    ) -> BatchOutcome {
        let commands = &batch.commands;
        let outcomes = commands
            .iter()
            .enumerate()
            .map(|(i, command)| {
                // The cache misses of the next commands overlap this one's.
                ledger.prefetch_upcoming(commands.get(i + 1..).unwrap_or_default());
                let answer = ledger.apply_at(batch.at_ms, index, command);
                if let Some(key_id) = key_changed(command, &answer.0) {
                    self.keys.refresh(ledger, key_id);
                }
                let (outcome, position) = (&answer.0, answer.1);
                let at_ms = ledger.now_ms();
                answers.add(command, outcome, position, index, at_ms);
                answer
            })
            .collect();
        crate::alerts::count_crossings(ledger.take_threshold_crossings());
        BatchOutcome { outcomes }
    }

    pub fn trail(&self) -> &Trail {
        &self.trail
    }
}

pub fn read_applied(applied: &SharedApplied) -> std::sync::RwLockReadGuard<'_, Applied> {
    read_lock(applied)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        // Encoding a large ledger takes seconds: off the async runtime. Applies wait for the
        // read lock meanwhile; the file is written after it is released.
        let started = std::time::Instant::now();
        let (meta, written) = tokio::task::spawn_blocking(move || {
            let (meta, bytes) = {
                let applied = read_lock(&this.applied);
                let last = applied.last_applied;
                let snapshot_id = match last {
                    Some(id) => format!(
                        "{}-{}-{}",
                        id.leader_id.term, id.leader_id.node_id, id.index
                    ),
                    None => "empty".to_string(),
                };
                let meta = SnapshotMeta {
                    last_log_id: last,
                    last_membership: applied.membership.clone(),
                    snapshot_id,
                };
                let bytes = encode_envelope(&meta, &applied.ledger);
                (meta, bytes)
            };
            // Once the snapshot is written the log before it may go, and with it the only
            // way to write these records again: the store must hold them durably first.
            let written = this
                .trail
                .flush()
                .map_err(std::io::Error::other)
                .and_then(|()| this.persist(meta.last_log_id, &bytes))
                .map(|()| bytes);
            (meta, written)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let bytes =
            written.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = bytes.len(),
            elapsed_ms = started.elapsed().as_millis(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let applied = read_lock(&self.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = write_lock(&self.applied);
        let mut responses = Vec::new();
        let mut answers = crate::trail::FirstAnswers::default();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => {
                    self.trail.applied_blank(entry.log_id.leader_id.term);
                    BatchOutcome::default()
                }
                EntryPayload::Normal(batch) => self.apply_batch(
                    &mut applied.ledger,
                    &batch,
                    entry.log_id.index,
                    &mut answers,
                ),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchOutcome::default()
                }
            };
            responses.push(outcome);
        }
        let records = crate::trail::records_after(&applied.ledger, applied.trail_seq);
        applied.trail_seq = applied.trail_seq.max(applied.ledger.chain_head().seq);
        let at_ms = applied.ledger.now_ms();
        drop(applied);
        self.trail.write(records, answers.batch, at_ms);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let started = std::time::Instant::now();
        let bytes = snapshot.into_inner();
        let bytes_len = bytes.len();
        let this = self.clone();
        let expected = meta.clone();
        // Checking and decoding the ledger (CPU) and writing the file (mostly the disk) run
        // side by side, off the async runtime. The file replaces the old one only once the
        // ledger has passed every check, and the ledger in memory only once the file is
        // durable: a failed install changes nothing.
        let installed = tokio::task::spawn_blocking(move || {
            let (written, restored) = std::thread::scope(|scope| {
                let writer = scope.spawn(|| this.write_temp(&bytes));
                let restored = restore_envelope(&bytes).and_then(|(found, ledger)| {
                    if found == expected {
                        Ok(ledger)
                    } else {
                        Err(EnvelopeError::MetaMismatch {
                            found: found.snapshot_id,
                            expected: expected.snapshot_id.clone(),
                        })
                    }
                });
                let written = writer
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("snapshot writer panicked")));
                (written, restored)
            });
            let ledger = match restored {
                Ok(ledger) => ledger,
                Err(e) => {
                    if let Ok(tmp) = written {
                        let _ = std::fs::remove_file(tmp);
                    }
                    return Err(InstallFailure::Refused(e));
                }
            };
            written
                .and_then(|tmp| this.publish(expected.last_log_id, &tmp))
                .map_err(InstallFailure::Write)?;
            Ok(ledger)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let ledger = installed.map_err(|failure| match failure {
            InstallFailure::Refused(e) => StorageIOError::read_snapshot(Some(meta.signature()), &e),
            InstallFailure::Write(e) => StorageIOError::write_snapshot(Some(meta.signature()), &e),
        })?;
        let replaced = {
            let mut applied = write_lock(&self.applied);
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            // Under the ledger's lock, so no apply runs between the ledger and its keys.
            self.keys.rebuild(&ledger);
            let replaced = std::mem::replace(&mut applied.ledger, ledger);
            catch_up_trail(&mut applied, &self.trail);
            replaced
        };
        // Freeing a large ledger takes a while: not under the lock, not on the runtime.
        tokio::task::spawn_blocking(move || drop(replaced));
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = bytes_len,
            elapsed_ms = started.elapsed().as_millis(),
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let this = self.clone();
        let current = tokio::task::spawn_blocking(move || this.read_current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use tollgate_ledger::{AgentId, Amounts, RequestId, TenantId, TenantPolicy, ToolId};

    const AT_MS: u64 = 1_800_000_000_000;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn meta(index: u64) -> SnapshotMeta<NodeId, Member> {
        SnapshotMeta {
            last_log_id: Some(log_id(2, index)),
            last_membership: StoredMembership::new(
                Some(log_id(1, 1)),
                Membership::new(vec![[1, 2, 3].into()], None),
            ),
            snapshot_id: format!("2-1-{index}"),
        }
    }

    /// A ledger with a tenant and `agents` agents, one record each.
    fn ledger(agents: u64) -> Ledger {
        let tenant = TenantId::new("acme").unwrap();
        let mut ledger = Ledger::new();
        ledger.apply(
            AT_MS,
            &Command::PutTenant {
                request_id: RequestId::new("setup").unwrap(),
                tenant: tenant.clone(),
                policy: TenantPolicy::default(),
            },
        );
        for i in 0..agents {
            ledger.apply(
                AT_MS + i,
                &Command::Record {
                    request_id: RequestId::new(format!("r{i}")).unwrap(),
                    tenant: tenant.clone(),
                    agent: AgentId::new(format!("a{i}")).unwrap(),
                    tool: ToolId::new("llm:x").unwrap(),
                    actual: Amounts {
                        tokens: 10,
                        cost_micros: 100,
                        calls: 1,
                    },
                    usage: None,
                    offline: false,
                    session: None,
                },
            );
        }
        ledger
    }

    /// A state machine in a fresh directory holding `ledger` at `meta`, not yet persisted.
    /// A state machine in `dir`, with its trail in `dir/trail`.
    fn open_machine(dir: &Path) -> anyhow::Result<StateMachine> {
        let trail = Trail::open(tollgate_store::StoreConfig {
            dir: dir.join("trail"),
            ..Default::default()
        })?;
        StateMachine::open(dir, trail)
    }

    fn machine(dir: &Path, ledger: Ledger, meta: &SnapshotMeta<NodeId, Member>) -> StateMachine {
        let sm = open_machine(dir).unwrap();
        {
            let mut applied = write_lock(&sm.applied);
            applied.ledger = ledger;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        sm
    }

    fn assert_no_temporary_files(dir: &Path) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [SNAPSHOT_FILE, "trail"],
            "temporary files left behind"
        );
    }

    fn snapshot_data(bytes: Vec<u8>) -> Box<Cursor<Vec<u8>>> {
        Box::new(Cursor::new(bytes))
    }

    #[test]
    fn envelope_round_trips_metadata_and_ledger() {
        let original = ledger(20);
        let bytes = encode_envelope(&meta(9), &original);
        assert_eq!(bytes[..8], ENVELOPE_MAGIC);
        let (found, restored) = restore_envelope(&bytes).unwrap();
        assert_eq!(found, meta(9));
        assert_eq!(restored, original);
        // The ledger's part is its own snapshot, byte for byte.
        let (_, ledger_bytes) = decode_envelope(&bytes).unwrap();
        assert_eq!(ledger_bytes, original.snapshot().as_slice());
    }

    #[test]
    fn envelope_rejects_bad_bytes_with_the_reason() {
        let bytes = encode_envelope(&meta(9), &ledger(3));
        let err = |bytes: &[u8]| restore_envelope(bytes).map(|_| ()).unwrap_err();

        assert_eq!(err(&bytes[..10]), EnvelopeError::Truncated { len: 10 });
        assert_eq!(
            err(b"TGLEDGER and more bytes than a header"),
            EnvelopeError::BadMagic
        );

        let mut other_version = bytes.clone();
        other_version[8..12].copy_from_slice(&(ENVELOPE_FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(
            err(&other_version),
            EnvelopeError::UnsupportedVersion {
                found: ENVELOPE_FORMAT_VERSION + 1,
                supported: ENVELOPE_FORMAT_VERSION
            }
        );

        let mut huge_meta = bytes.clone();
        huge_meta[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            err(&huge_meta),
            EnvelopeError::MetaTooLong {
                len: u32::MAX as usize
            }
        );

        let mut long_meta = bytes.clone();
        let past_end = (bytes.len() - ENVELOPE_HEADER_BYTES + 1) as u32;
        long_meta[12..16].copy_from_slice(&past_end.to_le_bytes());
        if (past_end as usize) <= ENVELOPE_META_BYTES_MAX {
            assert_eq!(
                err(&long_meta),
                EnvelopeError::Truncated {
                    len: long_meta.len()
                }
            );
        }

        let mut corrupt_meta = bytes.clone();
        corrupt_meta[ENVELOPE_HEADER_BYTES] ^= 1;
        assert_eq!(err(&corrupt_meta), EnvelopeError::MetaChecksumMismatch);

        let mut corrupt_ledger = bytes.clone();
        let last = corrupt_ledger.len() - 1;
        corrupt_ledger[last] ^= 1;
        assert_eq!(
            err(&corrupt_ledger),
            EnvelopeError::Ledger(SnapshotError::ChecksumMismatch)
        );
    }

    #[tokio::test]
    async fn stale_temp_files_are_swept_at_open_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path(), ledger(5), &meta(10));
        sm.build_snapshot().await.unwrap();
        drop(sm);
        let stale = [StateMachine::temp_name(0), StateMachine::temp_name(41)];
        let kept = [
            "snapshot.bin.tmp",
            "snapshot.bin.x.tmp",
            "log.tmp",
            "snapshot.bin.7",
        ];
        for name in stale.iter().map(String::as_str).chain(kept) {
            std::fs::write(dir.path().join(name), b"half a snapshot").unwrap();
        }

        let reopened = open_machine(dir.path()).unwrap();
        assert_eq!(
            read_lock(&reopened.applied).last_applied,
            meta(10).last_log_id
        );
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected: Vec<_> = kept
            .iter()
            .chain(&[SNAPSHOT_FILE, "trail"])
            .map(|n| n.to_string())
            .collect();
        expected.sort();
        assert_eq!(names, expected);
    }

    #[tokio::test]
    async fn built_snapshot_installs_on_another_node_and_survives_restart() {
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = machine(leader_dir.path(), ledger(50), &meta(60));
        let built = leader.build_snapshot().await.unwrap();
        assert_eq!(built.meta, meta(60));
        let sent = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(sent.meta, meta(60));
        assert_eq!(sent.snapshot.get_ref(), built.snapshot.get_ref());

        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = open_machine(follower_dir.path()).unwrap();
        assert!(follower.get_current_snapshot().await.unwrap().is_none());
        follower
            .install_snapshot(&sent.meta, sent.snapshot)
            .await
            .unwrap();
        let expected = read_lock(&leader.applied).ledger.clone();
        {
            let applied = read_lock(&follower.applied);
            assert_eq!(applied.ledger, expected);
            assert_eq!(applied.last_applied, meta(60).last_log_id);
            assert_eq!(applied.membership, meta(60).last_membership);
        }
        drop(follower);

        let mut reopened = open_machine(follower_dir.path()).unwrap();
        assert_eq!(read_lock(&reopened.applied).ledger, expected);
        let (last, membership) = reopened.applied_state().await.unwrap();
        assert_eq!(last, meta(60).last_log_id);
        assert_eq!(membership, meta(60).last_membership);
        let current = reopened.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta(60));
    }

    #[tokio::test]
    async fn failed_install_leaves_state_and_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = machine(dir.path(), ledger(5), &meta(10));
        node.build_snapshot().await.unwrap();
        let file_before = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        let ledger_before = read_lock(&node.applied).ledger.clone();

        let newer = encode_envelope(&meta(30), &ledger(8));
        let mut corrupt = newer.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let attempts = [
            (meta(30), corrupt, "checksum"),
            (meta(31), newer.clone(), "was received as snapshot 2-1-31"),
            (meta(30), newer[..newer.len() / 2].to_vec(), "header says"),
        ];
        for (meta, bytes, reason) in attempts {
            let error = node
                .install_snapshot(&meta, snapshot_data(bytes))
                .await
                .unwrap_err();
            assert!(error.to_string().contains(reason), "{error}");
            let applied = read_lock(&node.applied);
            assert_eq!(applied.ledger, ledger_before);
            assert_eq!(applied.last_applied, Some(log_id(2, 10)));
            assert_eq!(
                std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap(),
                file_before
            );
            assert_no_temporary_files(dir.path());
        }
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = open_machine(dir.path()).unwrap();
        node.install_snapshot(
            &meta(40),
            snapshot_data(encode_envelope(&meta(40), &ledger(4))),
        )
        .await
        .unwrap();
        // A build that read the state before the install finishes after it.
        node.persist(
            meta(20).last_log_id,
            &encode_envelope(&meta(20), &ledger(2)),
        )
        .unwrap();
        let current = node.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta(40));
        assert_no_temporary_files(dir.path());
    }
    /// Whether `authenticator` lets `api_key` in.
    fn admits(authenticator: &mut crate::auth::Authenticator, api_key: &str) -> bool {
        use tonic::service::Interceptor;
        let mut request = tonic::Request::new(());
        let header = format!("Bearer {api_key}").parse().unwrap();
        request.metadata_mut().insert("authorization", header);
        authenticator.call(request).is_ok()
    }

    /// The live-key index follows an installed snapshot and a restart: a key created in
    /// the snapshot authenticates, one revoked in it does not.
    #[tokio::test]
    async fn installed_and_restored_snapshots_carry_their_keys_to_the_index() {
        use crate::auth::{new_key, Auth, Authenticator};
        use tollgate_ledger::{KeySpec, Role};
        let mut leader_ledger = ledger(1);
        let tenant = TenantId::new("acme").unwrap();
        let (live, revoked) = (new_key(None).unwrap(), new_key(None).unwrap());
        for (n, key) in [&live, &revoked].into_iter().enumerate() {
            let create = Command::CreateKey {
                request_id: RequestId::new(format!("key-{n}")).unwrap(),
                tenant: Some(tenant.clone()),
                key: KeySpec {
                    id: key.id.clone(),
                    digest: key.digest,
                    role: Role::Worker,
                    agents: Vec::new(),
                    name: String::new(),
                },
            };
            assert_eq!(leader_ledger.apply(AT_MS + 10, &create), Outcome::Done);
        }
        let revoke = Command::RevokeKey {
            request_id: RequestId::new("revoke").unwrap(),
            tenant: Some(tenant),
            key_id: revoked.id.clone(),
        };
        assert_eq!(leader_ledger.apply(AT_MS + 11, &revoke), Outcome::Done);

        let dir = tempfile::tempdir().unwrap();
        let mut follower = open_machine(dir.path()).unwrap();
        let auth = Auth::with_bootstrap_key(&crate::auth::new_bootstrap_key()).unwrap();
        let mut authenticator = Authenticator {
            auth: auth.clone(),
            keys: follower.keys(),
        };
        assert!(
            !admits(&mut authenticator, &live.api_key),
            "not yet installed"
        );
        let bytes = encode_envelope(&meta(50), &leader_ledger);
        follower
            .install_snapshot(&meta(50), snapshot_data(bytes))
            .await
            .unwrap();
        assert!(admits(&mut authenticator, &live.api_key));
        assert!(!admits(&mut authenticator, &revoked.api_key));
        drop(follower);

        let reopened = open_machine(dir.path()).unwrap();
        let mut authenticator = Authenticator {
            auth,
            keys: reopened.keys(),
        };
        assert!(admits(&mut authenticator, &live.api_key));
        assert!(!admits(&mut authenticator, &revoked.api_key));
    }
}
