//! The same audit-trail workload on fjall (LSM) and redb (B-tree), to choose the store's engine.
//!
//! Appends N audit-like records (postcard bytes of real `AuditRecord`s, sequential u64 keys)
//! with one (tenant, at_ms, seq) index entry and one remembered answer each, in write batches
//! of `BATCH` without fsync; then looks up answers that miss (a new request id, the common
//! case) and that hit; then measures disk bytes per record after a flush; then drops the
//! oldest half (whole time buckets, as retention does) and measures the disk again.
//!
//! `cargo bench -p tollgate-store --bench engines` (N: `TRAIL_BENCH_RECORDS`, default 400000).
//!
//! With `TRAIL_BENCH_STORE_ONLY=1`, only the store, at N and 3N answers (each its own store),
//! and the resident memory a reopened store adds per answer it holds: the slope between the
//! two sizes, with memtables flushed to tables before each reopen (their replay from the
//! journal is a cost that does not grow with the answers), and the fixed rest.

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tollgate_ledger::{
    AgentId, Amounts, AuditEvent, AuditRecord, RequestId, ReservationId, TenantId, ToolId,
};
use tollgate_store::{Answer, AnswerRow, Store, StoreConfig};

/// Records per write batch: what one applied Raft entry batch yields at load.
const BATCH: usize = 500;
/// Time buckets the trail is split into; retention drops whole buckets.
const BUCKETS: usize = 8;
const LOOKUPS: usize = 100_000;

struct Workload {
    /// (seq, tenant, at_ms, record bytes)
    records: Vec<(u64, Vec<u8>, u64, Vec<u8>)>,
    /// (key, value) of the answer each record's request left.
    answers: Vec<(Vec<u8>, Vec<u8>)>,
    misses: Vec<Vec<u8>>,
    /// The same records and answers as the store takes them.
    audit: Vec<AuditRecord>,
    rows: Vec<AnswerRow>,
}

fn request_key(rng: &mut impl Rng, tenant: &str) -> Vec<u8> {
    let len = rng.random_range(16..=36);
    let mut key = tenant.as_bytes().to_vec();
    key.push(0);
    key.extend((0..len).map(|_| rng.random_range(b'a'..=b'z')));
    key
}

fn workload(n: usize) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut records = Vec::with_capacity(n);
    let mut answers = Vec::with_capacity(n);
    let mut audit = Vec::with_capacity(n);
    let mut rows = Vec::with_capacity(n);
    let mut prev_hash = [0u8; 32];
    for i in 0..n {
        let seq = i as u64 + 1;
        let tenant = format!("tenant-{}", rng.random_range(0..50));
        let key = request_key(&mut rng, &tenant);
        let mut record = AuditRecord {
            seq,
            at_ms: 1_800_000_000_000 + seq * 2,
            tenant: TenantId::new(tenant.clone()).ok(),
            agent: AgentId::new(format!("agent-{}", rng.random_range(0..500))).ok(),
            tool: ToolId::new("llm:gpt-5-mini").ok(),
            request_id: RequestId::new(String::from_utf8_lossy(&key[tenant.len() + 1..])).ok(),
            reservation_id: Some(ReservationId(rng.random())),
            event: AuditEvent::Grant,
            amounts: Amounts {
                tokens: rng.random_range(100..10_000),
                cost_micros: rng.random_range(100..100_000),
                calls: 1,
            },
            prev_hash,
            hash: [0; 32],
        };
        record.hash = record.compute_hash();
        prev_hash = record.hash;
        let bytes = postcard::to_allocvec(&record).unwrap_or_default();
        let mut value = rng.random::<u128>().to_be_bytes().to_vec();
        value.extend_from_slice(&record.at_ms.to_be_bytes());
        value.extend_from_slice(&seq.to_be_bytes());
        value.extend((0..28).map(|_| rng.random::<u8>() & 0x0f));
        if let (Some(tenant), Some(request_id)) = (&record.tenant, &record.request_id) {
            rows.push(AnswerRow {
                tenant: tenant.clone(),
                request_id: request_id.clone(),
                answer: Answer {
                    payload: rng.random(),
                    at_ms: record.at_ms,
                    position: seq,
                    outcome: value[32..].to_vec(),
                },
            });
        }
        records.push((seq, tenant.into_bytes(), record.at_ms, bytes));
        answers.push((key, value));
        audit.push(record);
    }
    let misses = (0..LOOKUPS)
        .map(|_| request_key(&mut rng, "tenant-1"))
        .collect();
    Workload {
        records,
        answers,
        misses,
        audit,
        rows,
    }
}

fn index_key(tenant: &[u8], at_ms: u64, seq: u64) -> Vec<u8> {
    let mut key = tenant.to_vec();
    key.push(0);
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What one engine must do; both run exactly the same calls.
trait Engine {
    fn name(&self) -> &'static str;
    fn write(
        &mut self,
        bucket: usize,
        records: &[(u64, Vec<u8>, u64, Vec<u8>)],
        answers: &[(Vec<u8>, Vec<u8>)],
    );
    /// Looks the key up in every live bucket, newest first.
    fn answer(&self, key: &[u8]) -> bool;
    fn flush(&mut self);
    fn drop_bucket(&mut self, bucket: usize);
    /// Whatever the engine needs to give freed space back (nothing, or a compaction).
    fn reclaim(&mut self);
    /// Disk bytes that do not grow with the data (fjall's preallocated journal).
    fn fixed_bytes(&self) -> u64;
    /// Disk bytes of the records with their index, and of the answers, if told apart.
    fn split_bytes(&self) -> Option<(u64, u64)>;
}

struct Fjall {
    db: fjall::Database,
    records: Vec<Option<fjall::Keyspace>>,
    answers: Vec<Option<fjall::Keyspace>>,
}

impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let db = fjall::Database::builder(dir).open().expect("open fjall");
        let ks = |name: String| {
            db.keyspace(&name, fjall::KeyspaceCreateOptions::default)
                .ok()
        };
        let records = (0..BUCKETS).map(|b| ks(format!("records-{b}"))).collect();
        let answers = (0..BUCKETS).map(|b| ks(format!("answers-{b}"))).collect();
        Fjall {
            db,
            records,
            answers,
        }
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn write(
        &mut self,
        bucket: usize,
        records: &[(u64, Vec<u8>, u64, Vec<u8>)],
        answers: &[(Vec<u8>, Vec<u8>)],
    ) {
        let (Some(Some(r)), Some(Some(a))) = (self.records.get(bucket), self.answers.get(bucket))
        else {
            return;
        };
        let mut batch = self.db.batch();
        for (seq, tenant, at_ms, bytes) in records {
            let mut key = vec![0u8];
            key.extend_from_slice(&seq.to_be_bytes());
            batch.insert(r, key, bytes.as_slice());
            let mut index = vec![1u8];
            index.extend(index_key(tenant, *at_ms, *seq));
            batch.insert(r, index, []);
        }
        for (key, value) in answers {
            batch.insert(a, key.as_slice(), value.as_slice());
        }
        batch.commit().expect("fjall batch");
    }

    fn answer(&self, key: &[u8]) -> bool {
        self.answers
            .iter()
            .rev()
            .flatten()
            .any(|a| a.get(key).ok().flatten().is_some())
    }

    fn flush(&mut self) {
        for ks in self.records.iter().chain(self.answers.iter()).flatten() {
            let _ = ks.rotate_memtable_and_wait();
        }
        let _ = self.db.persist(fjall::PersistMode::SyncAll);
    }

    fn drop_bucket(&mut self, bucket: usize) {
        for list in [&mut self.records, &mut self.answers] {
            if let Some(ks) = list.get_mut(bucket).and_then(Option::take) {
                let _ = self.db.delete_keyspace(ks);
            }
        }
    }

    fn reclaim(&mut self) {
        self.flush();
    }

    fn fixed_bytes(&self) -> u64 {
        self.db.journal_disk_space().unwrap_or(0)
    }

    fn split_bytes(&self) -> Option<(u64, u64)> {
        let sum =
            |list: &[Option<fjall::Keyspace>]| list.iter().flatten().map(|k| k.disk_space()).sum();
        Some((sum(&self.records), sum(&self.answers)))
    }
}

const REDB_RECORDS: [&str; BUCKETS] = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
const REDB_ANSWERS: [&str; BUCKETS] = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"];

type Table<'a> = redb::TableDefinition<'a, &'static [u8], &'static [u8]>;

struct Redb {
    db: redb::Database,
    live: Vec<bool>,
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn write(
        &mut self,
        bucket: usize,
        records: &[(u64, Vec<u8>, u64, Vec<u8>)],
        answers: &[(Vec<u8>, Vec<u8>)],
    ) {
        let mut tx = self.db.begin_write().expect("redb tx");
        let _ = tx.set_durability(redb::Durability::None);
        {
            let mut r = tx
                .open_table(Table::new(REDB_RECORDS[bucket]))
                .expect("table");
            for (seq, tenant, at_ms, bytes) in records {
                let mut key = vec![0u8];
                key.extend_from_slice(&seq.to_be_bytes());
                r.insert(key.as_slice(), bytes.as_slice()).expect("insert");
                let mut index = vec![1u8];
                index.extend(index_key(tenant, *at_ms, *seq));
                r.insert(index.as_slice(), &[][..]).expect("insert");
            }
            let mut a = tx
                .open_table(Table::new(REDB_ANSWERS[bucket]))
                .expect("table");
            for (key, value) in answers {
                a.insert(key.as_slice(), value.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("redb commit");
    }

    fn answer(&self, key: &[u8]) -> bool {
        use redb::{ReadableDatabase, ReadableTable};
        let Ok(tx) = self.db.begin_read() else {
            return false;
        };
        (0..BUCKETS).rev().filter(|b| self.live[*b]).any(|b| {
            tx.open_table(Table::new(REDB_ANSWERS[b]))
                .ok()
                .is_some_and(|t| matches!(t.get(key), Ok(Some(_))))
        })
    }

    fn flush(&mut self) {
        // An empty commit with immediate durability makes the earlier ones durable.
        if let Ok(tx) = self.db.begin_write() {
            let _ = tx.commit();
        }
    }

    fn drop_bucket(&mut self, bucket: usize) {
        self.live[bucket] = false;
        if let Ok(tx) = self.db.begin_write() {
            let _ = tx.delete_table(Table::new(REDB_RECORDS[bucket]));
            let _ = tx.delete_table(Table::new(REDB_ANSWERS[bucket]));
            let _ = tx.commit();
        }
    }

    fn reclaim(&mut self) {
        while let Ok(true) = self.db.compact(redb::CompactionMode::default()) {}
    }

    fn fixed_bytes(&self) -> u64 {
        0
    }

    fn split_bytes(&self) -> Option<(u64, u64)> {
        None
    }
}

struct Figures {
    records_per_s: f64,
    miss_ns: f64,
    hit_ns: f64,
    bytes_per_record: f64,
    fixed_bytes: u64,
    full_bytes: u64,
    split_bytes: Option<(u64, u64)>,
    after_drop_bytes: u64,
    after_reclaim_bytes: u64,
}

fn run(engine: &mut dyn Engine, w: &Workload, dir: &Path) -> Figures {
    let n = w.records.len();
    let per_bucket = n.div_ceil(BUCKETS);
    let started = Instant::now();
    for (i, (records, answers)) in w
        .records
        .chunks(BATCH)
        .zip(w.answers.chunks(BATCH))
        .enumerate()
    {
        engine.write(i * BATCH / per_bucket, records, answers);
    }
    let records_per_s = n as f64 / started.elapsed().as_secs_f64();
    engine.flush();
    let fixed_bytes = engine.fixed_bytes();
    let split_bytes = engine.split_bytes();
    let full_bytes = dir_bytes(dir);
    let lookup_ns = |keys: &mut dyn Iterator<Item = &Vec<u8>>, expect: bool| {
        let started = Instant::now();
        let mut count = 0u32;
        for key in keys {
            assert_eq!(engine.answer(key), expect, "{} lookup", engine.name());
            count += 1;
        }
        started.elapsed().as_nanos() as f64 / f64::from(count.max(1))
    };
    let miss_ns = lookup_ns(&mut w.misses.iter(), false);
    let step = (n / LOOKUPS).max(1);
    let hit_ns = lookup_ns(&mut w.answers.iter().step_by(step).map(|(k, _)| k), true);
    for bucket in 0..BUCKETS / 2 {
        engine.drop_bucket(bucket);
    }
    engine.flush();
    let after_drop_bytes = dir_bytes(dir);
    engine.reclaim();
    Figures {
        records_per_s,
        miss_ns,
        hit_ns,
        // Tables where the engine tells them apart (its journal is truncated only later).
        bytes_per_record: split_bytes.map_or(full_bytes.saturating_sub(fixed_bytes), |(r, a)| r + a)
            as f64
            / n as f64,
        fixed_bytes,
        full_bytes,
        split_bytes,
        after_drop_bytes,
        after_reclaim_bytes: dir_bytes(dir),
    }
}

/// The chosen engine behind the store's own API: records, both indexes and answers. Prints
/// the write rate and look-up times; closes the store before returning.
fn fill_store(audit: &[AuditRecord], rows: &[AnswerRow], misses: &[Vec<u8>], config: &StoreConfig) {
    let store = Store::open(config.clone()).expect("open the store");
    let started = Instant::now();
    for (records, rows) in audit.chunks(BATCH).zip(rows.chunks(BATCH)) {
        store.write(records, rows).expect("store write");
    }
    // Answers held in memory go to their tables: what the look-ups below should find.
    store.persist().expect("persist");
    let records_per_s = audit.len() as f64 / started.elapsed().as_secs_f64();
    let now_ms = audit.last().map_or(0, |r| r.at_ms);
    let tenant = TenantId::new("tenant-1").expect("tenant");
    let started = Instant::now();
    for key in misses {
        let id = RequestId::new(String::from_utf8_lossy(&key[9..])).expect("request id");
        assert!(store.answer(&tenant, &id, now_ms).ok().flatten().is_none());
    }
    let miss_ns = started.elapsed().as_nanos() as f64 / misses.len().max(1) as f64;
    let step = (rows.len() / LOOKUPS).max(1);
    let started = Instant::now();
    let mut hits = 0u32;
    for row in rows.iter().step_by(step) {
        assert!(store
            .answer(&row.tenant, &row.request_id, now_ms)
            .ok()
            .flatten()
            .is_some());
        hits += 1;
    }
    let hit_ns = started.elapsed().as_nanos() as f64 / f64::from(hits.max(1));
    println!("store: {records_per_s:>9.0} records/s  miss {miss_ns:>6.0} ns  hit {hit_ns:>6.0} ns  (records with both indexes, answers; one bucket each)");
    let closed = store.closed();
    drop(store);
    assert!(
        closed.wait(std::time::Duration::from_secs(60)),
        "store closed"
    );
}

/// The look-ups the resident-memory child makes, as lines of `tenant request-id` after a
/// first line with `now_ms`: the same misses at every size, and `LOOKUPS` hits spread over
/// the answers. In a file, so the child need not build the workload (whose heap would blur
/// what the store takes).
fn write_lookups(path: &Path, audit: &[AuditRecord], rows: &[AnswerRow], misses: &[Vec<u8>]) {
    let now_ms = audit.last().map_or(0, |r| r.at_ms);
    let mut text = format!("{now_ms}\n");
    for key in misses {
        text.push_str(&format!(
            "tenant-1 {}\n",
            String::from_utf8_lossy(&key[9..])
        ));
    }
    let step = (rows.len() / LOOKUPS).max(1);
    for row in rows.iter().step_by(step) {
        let (tenant, id) = (row.tenant.as_bytes(), row.request_id.as_bytes());
        let line = format!(
            "{} {}\n",
            String::from_utf8_lossy(tenant),
            String::from_utf8_lossy(id)
        );
        text.push_str(&line);
    }
    std::fs::write(path, text).expect("write the look-ups");
}

/// Flushes every keyspace's memtable to tables and fsyncs, with fjall directly (the store
/// seals only buckets it stopped writing to): a reopen then replays nothing from the
/// journal into memtables, a cost of up to `max_journaling_size` (512 MiB) that does not
/// depend on how many answers the store holds.
fn flush_to_tables(dir: &Path) {
    let db = fjall::Database::builder(dir).open().expect("open fjall");
    for name in db.list_keyspace_names() {
        let ks = db
            .keyspace(&name, fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        ks.rotate_memtable_and_wait().expect("flush the memtable");
    }
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

/// What a reopened store took in a fresh process: resident bytes added, look-ups made, and
/// where its tables are and what they pin.
struct Resident {
    added: u64,
    lookups: u64,
    tables: String,
}

/// Runs `resident_after_reopen` in a fresh process: this one's heap keeps what the stores it
/// wrote freed, which would hide what a reopened store takes.
fn resident_in_child(dir: &Path, lookups: &Path) -> Option<Resident> {
    let child = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .env("TRAIL_BENCH_RESIDENT_DIR", dir)
        .env("TRAIL_BENCH_LOOKUPS", lookups)
        .output()
        .expect("the resident-memory child runs");
    eprint!("{}", String::from_utf8_lossy(&child.stderr));
    let out = String::from_utf8_lossy(&child.stdout);
    let line = out.lines().find_map(|l| l.strip_prefix("resident "))?;
    let mut fields = line.splitn(3, ' ');
    Some(Resident {
        added: fields.next()?.parse().ok()?,
        lookups: fields.next()?.parse().ok()?,
        tables: fields.next().unwrap_or_default().to_string(),
    })
}

/// The store as the server runs it, reopened as after a restart (the journal replayed).
fn run_store(w: &Workload) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        dir: dir.path().join("trail"),
        ..StoreConfig::default()
    };
    fill_store(&w.audit, &w.rows, &w.misses, &config);
    let lookups = dir.path().join("lookups");
    write_lookups(&lookups, &w.audit, &w.rows, &w.misses);
    if let Some(r) = resident_in_child(&config.dir, &lookups) {
        // Mostly the journal replayed into memtables and the block cache: a fixed cost, not
        // one per answer (TRAIL_BENCH_STORE_ONLY=1 measures that as a slope).
        println!(
            "store: {} B resident after a reopen (journal replayed) and {} look-ups",
            r.added, r.lookups
        );
    }
}

/// The marginal memory cost of an answer: the resident set a reopened store adds, at `n`
/// and `3 n` answers (each its own store and process, the same look-ups, memtables flushed
/// to tables first so the journal's replay is not counted), and the slope between them.
fn store_slope(w: &Workload, n: usize) {
    let mut points = Vec::new();
    for size in [n, w.rows.len()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig {
            dir: dir.path().join("trail"),
            ..StoreConfig::default()
        };
        let (audit, rows) = (&w.audit[..size], &w.rows[..size]);
        fill_store(audit, rows, &w.misses, &config);
        flush_to_tables(&config.dir);
        let lookups = dir.path().join("lookups");
        write_lookups(&lookups, audit, rows, &w.misses);
        let Some(r) = resident_in_child(&config.dir, &lookups) else {
            println!("store: {size} answers: the resident-memory child printed nothing");
            return;
        };
        println!(
            "store: {size} answers, memtables flushed: {} B resident after a reopen and {} look-ups; {}",
            r.added, r.lookups, r.tables
        );
        points.push((size as f64, r.added as f64));
    }
    if let [(n1, r1), (n2, r2)] = points[..] {
        let slope = (r2 - r1) / (n2 - n1);
        println!(
            "store: {slope:.1} B resident per remembered answer (slope between {n1} and {n2} answers), {:.0} B fixed",
            r1 - slope * n1
        );
    }
}

/// In the child: the resident set a reopened store adds once it has answered look-ups
/// (filters, indexes and cached blocks it loaded, and whatever the journal replays), then
/// where the store's tables are and what they pin, seen from fjall once the store is closed.
fn resident_after_reopen(config: &StoreConfig, lookups: &Path) {
    let text = std::fs::read_to_string(lookups).expect("read the look-ups");
    let mut lines = text.lines();
    let now_ms: u64 = lines.next().and_then(|l| l.parse().ok()).expect("now_ms");
    let ids: Vec<(TenantId, RequestId)> = lines
        .filter_map(|l| l.split_once(' '))
        .map(|(t, r)| {
            (
                TenantId::new(t).expect("tenant"),
                RequestId::new(r).expect("id"),
            )
        })
        .collect();
    let before = resident_bytes();
    let store = Store::open(config.clone()).expect("reopen the store");
    for (tenant, id) in &ids {
        let _ = store.answer(tenant, id, now_ms);
    }
    let added = resident_bytes().saturating_sub(before);
    let closed = store.closed();
    drop(store);
    closed.wait(std::time::Duration::from_secs(60));
    println!(
        "resident {added} {} {}",
        ids.len(),
        table_stats(&config.dir)
    );
}

/// Tables per level, and the filter and index bytes fjall holds in memory for as long as
/// the tables are open (pinned: L0 filters, L0-L1 indexes, top-level indexes of partitioned
/// tables) against all filter bytes (the unpinned ones go through the block cache).
fn table_stats(dir: &Path) -> String {
    use fjall::AbstractTree;
    let Ok(db) = fjall::Database::builder(dir).open() else {
        return "tables: fjall did not reopen".into();
    };
    let (mut levels, mut pinned_filters, mut pinned_indexes, mut filters) = ([0; 7], 0, 0, 0);
    for name in db.list_keyspace_names() {
        let Ok(ks) = db.keyspace(&name, fjall::KeyspaceCreateOptions::default) else {
            continue;
        };
        for (level, count) in levels.iter_mut().enumerate() {
            *count += ks.tree.level_table_count(level).unwrap_or(0);
        }
        pinned_filters += ks.tree.pinned_filter_size();
        pinned_indexes += ks.tree.pinned_block_index_size();
        filters += ks.tree.filter_size();
    }
    format!("tables per level {levels:?}, pinned filters {pinned_filters} B and indexes {pinned_indexes} B, all filters {filters} B")
}

/// This process's resident set (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = (statm.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    if let Some(dir) = std::env::var_os("TRAIL_BENCH_RESIDENT_DIR") {
        let config = StoreConfig {
            dir: dir.into(),
            ..StoreConfig::default()
        };
        let lookups = std::env::var_os("TRAIL_BENCH_LOOKUPS").expect("TRAIL_BENCH_LOOKUPS");
        return resident_after_reopen(&config, Path::new(&lookups));
    }
    let n = std::env::var("TRAIL_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000usize);
    let store_only = std::env::var("TRAIL_BENCH_STORE_ONLY").is_ok();
    // Store only: the resident memory's slope, between n answers and three times as many.
    let w = workload(if store_only { 3 * n } else { n });
    let record_bytes: usize = w.records.iter().map(|r| r.3.len()).sum();
    println!(
        "{} records, {:.0} B of postcard each, batches of {BATCH}, {BUCKETS} buckets",
        w.records.len(),
        record_bytes as f64 / w.records.len().max(1) as f64
    );
    if store_only {
        return store_slope(&w, n);
    }
    run_store(&w);
    let fjall_dir = tempfile::tempdir().expect("tempdir");
    let mut fjall = Fjall::open(fjall_dir.path());
    let f = run(&mut fjall, &w, fjall_dir.path());
    drop(fjall);
    let redb_dir = tempfile::tempdir().expect("tempdir");
    let path = redb_dir.path().join("trail.redb");
    let db = redb::Database::create(&path).expect("open redb");
    let mut redb = Redb {
        db,
        live: vec![true; BUCKETS],
    };
    let r = run(&mut redb, &w, redb_dir.path());
    for (name, x) in [("fjall", &f), ("redb", &r)] {
        println!(
            "{name:5}: {:>9.0} records/s  miss {:>6.0} ns  hit {:>6.0} ns  {:>5.1} B/record on disk (+ {} B fixed)",
            x.records_per_s, x.miss_ns, x.hit_ns, x.bytes_per_record, x.fixed_bytes
        );
        println!(
            "       disk: full {} B, oldest half dropped {} B, after reclaim {} B",
            x.full_bytes, x.after_drop_bytes, x.after_reclaim_bytes
        );
        if let Some((records, answers)) = x.split_bytes {
            println!(
                "       records with their index {:.1} B/record, answers {:.1} B/answer",
                records as f64 / n as f64,
                answers as f64 / n as f64
            );
        }
    }
    println!(
        "fjall/redb: writes {:.2}x, miss {:.2}x, hit {:.2}x, bytes {:.2}x",
        f.records_per_s / r.records_per_s,
        f.miss_ns / r.miss_ns,
        f.hit_ns / r.hit_ns,
        f.bytes_per_record / r.bytes_per_record
    );
}
