//! What users of the trail rely on: records come back exactly and verify, replays are
//! harmless, gaps are never silent, retention frees space and keeps the chain verifiable,
//! answers live as long as the horizon, everything survives a reopen, and bad bytes on
//! disk are an error, not a crash.

use rand::{Rng, SeedableRng};
use tollgate_ledger::{
    AgentId, Amounts, AuditEvent, AuditFilter, AuditRecord, RequestId, ReservationId, TenantId,
    ToolId, GENESIS_PREV_HASH,
};

use crate::{Answer, AnswerRow, Store, StoreConfig, StoreError};

const T0_MS: u64 = 1_800_000_000_000;

fn open(dir: &tempfile::TempDir, tune: impl FnOnce(&mut StoreConfig)) -> Store {
    let mut config = StoreConfig {
        dir: dir.path().join("trail"),
        ..StoreConfig::default()
    };
    tune(&mut config);
    Store::open(config).expect("open the store")
}

/// Records `from..from+n` chained from `prev`, `step_ms` apart, over a few tenants,
/// agents, tools and events.
fn chain(from: u64, prev: [u8; 32], n: u64, step_ms: u64, seed: u64) -> Vec<AuditRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut prev_hash = prev;
    (from..from + n)
        .map(|seq| {
            let tenant = rng.random_range(0..4);
            let event = match rng.random_range(0..4) {
                0 => AuditEvent::Grant,
                1 => AuditEvent::Release,
                2 => AuditEvent::Expire { charged: true },
                _ => AuditEvent::TenantPut,
            };
            let mut record = AuditRecord {
                seq,
                at_ms: T0_MS + seq * step_ms,
                tenant: (tenant > 0).then(|| TenantId::new(format!("t{tenant}")).unwrap()),
                agent: (tenant > 0 && rng.random_bool(0.8))
                    .then(|| AgentId::new(format!("a{}", rng.random_range(0..3))).unwrap()),
                tool: rng
                    .random_bool(0.5)
                    .then(|| ToolId::new(format!("tool{}", rng.random_range(0..2))).unwrap()),
                request_id: Some(
                    RequestId::new(format!("req-{seq}-{}", rng.random::<u32>())).unwrap(),
                ),
                reservation_id: Some(ReservationId(seq)),
                event,
                amounts: Amounts {
                    tokens: seq,
                    cost_micros: 2 * seq,
                    calls: 1,
                },
                prev_hash,
                hash: [0; 32],
            };
            record.hash = record.compute_hash();
            prev_hash = record.hash;
            record
        })
        .collect()
}

fn write_all(store: &Store, records: &[AuditRecord]) {
    for batch in records.chunks(97) {
        store.write(batch, &[]).expect("write");
    }
}

fn everything(store: &Store) -> Result<Vec<AuditRecord>, StoreError> {
    let mut all = Vec::new();
    loop {
        let page = store.query(&AuditFilter {
            after_seq: all.last().map(|r: &AuditRecord| r.seq),
            ..AuditFilter::default()
        })?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

fn answer_row(tenant: &str, request_id: &str, at_ms: u64) -> AnswerRow {
    AnswerRow {
        tenant: TenantId::new(tenant).unwrap(),
        request_id: RequestId::new(request_id).unwrap(),
        answer: Answer {
            payload: u128::from(at_ms) << 64 | 7,
            at_ms,
            position: at_ms / 10,
            outcome: format!("granted reservation {at_ms}").into_bytes(),
        },
    }
}

#[test]
fn records_come_back_exactly_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let records = chain(1, GENESIS_PREV_HASH, 25_000, 3, 1);
    write_all(&store, &records);
    assert_eq!(everything(&store).unwrap(), records);
    let head = store.verify().unwrap();
    assert_eq!((head.seq, head.hash), (25_000, records[24_999].hash));
    let state = store.state();
    assert_eq!((state.first_seq, state.last_seq), (Some(1), Some(25_000)));
    assert_eq!(state.anchor, GENESIS_PREV_HASH);
    assert!(state.missing.is_empty());
    assert!(state.audit_bytes > 0);
}

#[test]
fn a_replay_is_harmless_and_a_different_record_is_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let records = chain(1, GENESIS_PREV_HASH, 300, 5, 2);
    write_all(&store, &records);
    // A restart replays the log from the last snapshot: the same records again.
    write_all(&store, &records[100..]);
    assert_eq!(everything(&store).unwrap(), records);
    let other = chain(1, GENESIS_PREV_HASH, 300, 5, 3);
    match store.write(&other[150..160], &[]) {
        Err(StoreError::Diverged { seq }) => assert_eq!(seq, 151),
        other => panic!("expected Diverged, got {other:?}"),
    }
    assert_eq!(everything(&store).unwrap(), records);
    assert_eq!(store.verify().unwrap().seq, 300);
}

#[test]
fn a_gap_is_never_silent_and_a_fill_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let records = chain(1, GENESIS_PREV_HASH, 60, 10, 4);
    store.write(&records[..20], &[]).unwrap();
    store.write(&records[40..], &[]).unwrap();
    assert_eq!(store.state().missing, vec![(21, 40)]);
    let crossing = store.query(&AuditFilter::default());
    assert!(
        matches!(crossing, Err(StoreError::Missing { from: 21, to: 40 })),
        "{crossing:?}"
    );
    let tenant = store.query(&AuditFilter {
        tenant: Some(TenantId::new("t1").unwrap()),
        ..AuditFilter::default()
    });
    assert!(
        matches!(tenant, Err(StoreError::Missing { .. })),
        "{tenant:?}"
    );
    assert!(matches!(
        store.verify(),
        Err(StoreError::Missing { from: 21, to: 40 })
    ));
    // What does not reach the gap is served.
    let before = AuditFilter {
        to_seq: Some(20),
        ..AuditFilter::default()
    };
    assert_eq!(store.query(&before).unwrap(), records[..20]);
    let after = AuditFilter {
        after_seq: Some(40),
        ..AuditFilter::default()
    };
    assert_eq!(store.query(&after).unwrap(), records[40..]);
    let first_ten = AuditFilter {
        limit: 10,
        ..AuditFilter::default()
    };
    assert_eq!(store.query(&first_ten).unwrap(), records[..10]);
    // A backfill that does not chain, or does not hash, is refused whole.
    let foreign = chain(21, [9; 32], 20, 10, 5);
    assert!(matches!(store.fill(&foreign), Err(StoreError::Chain(_))));
    let mut altered = records[20..40].to_vec();
    altered[5].amounts.tokens += 1;
    assert!(matches!(store.fill(&altered), Err(StoreError::Chain(_))));
    assert_eq!(store.state().missing, vec![(21, 40)]);
    // The right records, in two parts, close it.
    store.fill(&records[30..40]).unwrap();
    assert_eq!(store.state().missing, vec![(21, 30)]);
    store.fill(&records[20..30]).unwrap();
    assert!(store.state().missing.is_empty());
    assert_eq!(everything(&store).unwrap(), records);
    assert_eq!(store.verify().unwrap().hash, records[59].hash);
}

#[test]
fn a_store_that_starts_mid_chain_gives_up_what_no_peer_keeps_and_verifies_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let records = chain(1, GENESIS_PREV_HASH, 100, 10, 6);
    // A node joined by snapshot: its ledger held records 71.. in memory.
    store.write(&records[70..], &[]).unwrap();
    assert_eq!(store.state().missing, vec![(1, 70)]);
    // The peers' retention kept 41.. only: 1..=40 are given up, 41..=70 copied.
    store.purged_by_peers(41).unwrap();
    assert_eq!(store.state().missing, vec![(41, 70)]);
    store.fill(&records[40..70]).unwrap();
    let state = store.state();
    assert!(state.missing.is_empty());
    assert_eq!(state.first_seq, Some(41));
    assert_eq!(state.anchor, records[39].hash);
    assert_eq!(everything(&store).unwrap(), records[40..]);
    assert_eq!(store.verify().unwrap().hash, records[99].hash);
    // Giving up what is not missing changes nothing.
    store.purged_by_peers(60).unwrap();
    assert_eq!(store.state().first_seq, Some(41));
}

#[test]
fn retention_by_age_purges_old_records_and_the_rest_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let retention_ms = 16_000;
    let store = open(&dir, |c| c.audit_retention_ms = retention_ms);
    // 4,000 records 10 ms apart: 40 s of trail, buckets of 1 s.
    let records = chain(1, GENESIS_PREV_HASH, 4_000, 10, 6);
    write_all(&store, &records);
    let now_ms = records.last().unwrap().at_ms + 1;
    let report = store.purge(now_ms).unwrap();
    let kept = everything(&store).unwrap();
    let first = kept.first().unwrap().clone();
    assert_eq!(report.records_purged, first.seq - 1);
    assert!(!report.size_forced_records);
    // Every record within the retention is kept; none older than one bucket more.
    let span_ms = retention_ms / crate::RECORD_BUCKETS_PER_RETENTION;
    assert!(records[(first.seq - 2) as usize].at_ms < now_ms - retention_ms);
    assert!(first.at_ms + retention_ms + span_ms >= now_ms);
    assert_eq!(kept, records[(first.seq - 1) as usize..]);
    let state = store.state();
    assert_eq!(state.anchor, first.prev_hash);
    assert_eq!(state.first_seq, Some(first.seq));
    assert_eq!(store.verify().unwrap().hash, records.last().unwrap().hash);
    // Far ahead, everything goes; the anchor is then the last record's hash.
    store.purge(now_ms + 10 * retention_ms).unwrap();
    let state = store.state();
    assert_eq!((state.first_seq, state.last_seq), (None, Some(4_000)));
    assert_eq!(state.anchor, records.last().unwrap().hash);
    assert_eq!(store.verify().unwrap().seq, 4_000);
    // The trail goes on from there.
    let next = chain(4_001, records.last().unwrap().hash, 10, 10, 7);
    store.write(&next, &[]).unwrap();
    assert!(store.state().missing.is_empty());
    assert_eq!(store.verify().unwrap().hash, next[9].hash);
}

#[test]
fn retention_by_size_purges_the_oldest_and_keeps_disk_below_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 400_000;
    let store = open(&dir, |c| c.audit_max_bytes = max_bytes);
    let records = chain(1, GENESIS_PREV_HASH, 20_000, 1, 8);
    write_all(&store, &records);
    assert!(store.state().audit_bytes > max_bytes);
    let folders = || {
        std::fs::read_dir(dir.path().join("trail").join("keyspaces"))
            .unwrap()
            .count()
    };
    let folders_before = folders();
    let report = store.purge(records.last().unwrap().at_ms).unwrap();
    // The files of the purged buckets are gone, not merely marked: one folder is left for
    // each kept bucket, the catalog and the engine's own.
    let kept_buckets = store.inner.catalog().records.len();
    assert!(folders_before > kept_buckets + 2);
    assert_eq!(folders(), kept_buckets + 2);
    assert!(report.size_forced_records);
    assert!(report.records_purged > 0);
    let state = store.state();
    // Slack: the newest bucket is never dropped, and may hold 1/16 of the bound raw.
    assert!(
        state.audit_bytes <= max_bytes + max_bytes / 8,
        "{} bytes",
        state.audit_bytes
    );
    assert!(state.audit_retention_in_force_ms < StoreConfig::default().audit_retention_ms);
    let kept = everything(&store).unwrap();
    assert_eq!(kept.last(), records.last());
    assert_eq!(state.anchor, kept[0].prev_hash);
    assert_eq!(store.verify().unwrap().seq, 20_000);
}

#[test]
fn answers_are_found_within_the_horizon_and_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let horizon_ms = 80_000;
    let store = open(&dir, |c| c.answer_horizon_ms = horizon_ms);
    let rows: Vec<AnswerRow> = (0..2_000u64)
        .map(|i| answer_row(&format!("t{}", i % 3), &format!("req-{i}"), T0_MS + i * 100))
        .collect();
    for batch in rows.chunks(100) {
        store.write(&[], batch).unwrap();
    }
    let newest = T0_MS + 1_999 * 100;
    for row in rows.iter().step_by(37) {
        let found = store.answer(&row.tenant, &row.request_id, newest).unwrap();
        let young = newest - row.answer.at_ms < horizon_ms;
        assert_eq!(
            found.as_ref(),
            young.then_some(&row.answer),
            "{}",
            row.request_id
        );
    }
    let unknown = RequestId::new("never-asked").unwrap();
    assert_eq!(
        store.answer(&rows[0].tenant, &unknown, newest).unwrap(),
        None
    );
    // Another tenant's request id is not this tenant's.
    assert_eq!(
        store
            .answer(
                &TenantId::new("t9").unwrap(),
                &rows[1_999].request_id,
                newest
            )
            .unwrap(),
        None
    );
    let report = store.purge(newest).unwrap();
    assert!(report.answers_purged > 0 && !report.size_forced_answers);
    assert_eq!(store.state().answer_horizon_in_force_ms, horizon_ms);
    let last = &rows[1_999];
    assert!(store
        .answer(&last.tenant, &last.request_id, newest)
        .unwrap()
        .is_some());
    assert!(store
        .answer(&last.tenant, &last.request_id, newest + horizon_ms)
        .unwrap()
        .is_none());
}

#[test]
fn a_look_up_of_answers_given_by_a_time_finds_those_and_may_skip_younger_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Buckets of 100 s: the first is ingested when the second starts, whose answers are
    // still held in memory.
    let store = open(&dir, |c| c.answer_horizon_ms = 800_000);
    let rows: Vec<AnswerRow> = (0..2_000u64)
        .map(|i| answer_row("t1", &format!("req-{i}"), T0_MS + i * 100))
        .collect();
    for batch in rows.chunks(100) {
        store.write(&[], batch).unwrap();
    }
    let now = T0_MS + 200_000;
    let given_by = T0_MS + 50_000;
    let (old, young) = (&rows[10], &rows[1_999]);
    for row in [old, young] {
        let found = store.answer(&row.tenant, &row.request_id, now).unwrap();
        assert_eq!(found.as_ref(), Some(&row.answer), "{}", row.request_id);
    }
    let found = store.answer_given_by(&old.tenant, &old.request_id, now, given_by);
    assert_eq!(found.unwrap().as_ref(), Some(&old.answer));
    let skipped = store.answer_given_by(&young.tenant, &young.request_id, now, given_by);
    assert_eq!(
        skipped.unwrap(),
        None,
        "the bucket and the memory of younger answers"
    );
    // A replay after a restart hands answers again: they are written once.
    store.write(&[], &rows[1_990..]).unwrap();
    store.persist().unwrap();
    let found = store.answer(&young.tenant, &young.request_id, now).unwrap();
    assert_eq!(found.as_ref(), Some(&young.answer));
    let skipped = store.answer_given_by(&young.tenant, &young.request_id, now, given_by);
    assert_eq!(
        skipped.unwrap(),
        None,
        "a bucket wholly younger is not searched"
    );
}

#[test]
fn a_size_forced_answer_purge_shortens_the_horizon_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |c| c.answers_max_bytes = 100_000);
    let rows: Vec<AnswerRow> = (0..5_000u64)
        .map(|i| answer_row("t1", &format!("request-{i:08}"), T0_MS + i))
        .collect();
    for batch in rows.chunks(250) {
        store.write(&[], batch).unwrap();
    }
    let now_ms = T0_MS + 5_000;
    let report = store.purge(now_ms).unwrap();
    assert!(report.size_forced_answers && report.answers_purged > 0);
    let state = store.state();
    assert!(state.answer_horizon_in_force_ms < StoreConfig::default().answer_horizon_ms);
    assert!(
        state.answers_bytes <= 100_000 + 100_000 / 4,
        "{}",
        state.answers_bytes
    );
    let oldest = &rows[0];
    assert_eq!(
        store
            .answer(&oldest.tenant, &oldest.request_id, now_ms)
            .unwrap(),
        None
    );
    let newest = &rows[4_999];
    assert!(store
        .answer(&newest.tenant, &newest.request_id, now_ms)
        .unwrap()
        .is_some());
}

#[test]
fn a_reopened_store_keeps_what_was_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let records = chain(1, GENESIS_PREV_HASH, 3_000, 10, 9);
    let rows: Vec<AnswerRow> = (0..50u64)
        .map(|i| answer_row("t1", &format!("r{i}"), records[2_000].at_ms + i))
        .collect();
    let before = {
        let store = open(&dir, |c| c.audit_retention_ms = 25_000);
        write_all(&store, &records[..1_000]);
        store.write(&records[1_010..], &rows[..25]).unwrap();
        store.purge(records[2_999].at_ms).unwrap();
        // Held in memory until the persist writes them to their tables.
        store.write(&[], &rows[25..]).unwrap();
        store.persist().unwrap();
        store.state()
    };
    assert!(before.first_seq > Some(1) && before.missing == vec![(1_001, 1_010)]);
    let store = open(&dir, |c| c.audit_retention_ms = 25_000);
    let after = store.state();
    assert_eq!(
        (after.first_seq, after.last_seq, after.anchor),
        (before.first_seq, before.last_seq, before.anchor)
    );
    assert_eq!(after.missing, before.missing);
    store.fill(&records[1_000..1_010]).unwrap();
    let first = before.first_seq.unwrap() as usize;
    assert_eq!(everything(&store).unwrap(), records[first - 1..]);
    assert_eq!(store.verify().unwrap().hash, records[2_999].hash);
    for row in &rows {
        let found = store
            .answer(&row.tenant, &row.request_id, row.answer.at_ms + 1)
            .unwrap();
        assert_eq!(found.as_ref(), Some(&row.answer));
    }
}

#[test]
fn records_held_in_memory_are_read_and_a_stop_without_persist_claims_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let records = chain(1, GENESIS_PREV_HASH, 160_000, 1, 12);
    {
        let store = open(&dir, |_| {});
        // One write of more than the bound at once: held and ingested in turn.
        store.write(&records[..150_000], &[]).unwrap();
        let (held, capacity) = store.inner.records_held().bytes_held();
        assert!(held < crate::pending::PENDING_BYTES_MAX);
        assert!(capacity <= crate::pending::PENDING_BYTES_MAX + crate::pending::ROW_BYTES_MAX);
        // Readers see held records.
        let filter = AuditFilter {
            after_seq: Some(149_990),
            ..AuditFilter::default()
        };
        assert_eq!(store.query(&filter).unwrap(), records[149_990..150_000]);
        // Held, then lost with the process: the catalog on disk must not claim them.
        store.write(&records[150_000..], &[]).unwrap();
        assert_eq!(store.state().last_seq, Some(160_000));
    }
    let store = open(&dir, |_| {});
    assert_eq!(store.state().last_seq, Some(150_000));
    // What a restart's replay hands over again.
    store.write(&records[150_000..], &[]).unwrap();
    assert_eq!(store.verify().unwrap().hash, records[159_999].hash);
    let filter = AuditFilter {
        after_seq: Some(149_995),
        limit: 10,
        ..AuditFilter::default()
    };
    assert_eq!(store.query(&filter).unwrap(), records[149_995..150_005]);
}

#[test]
fn answers_held_in_memory_stay_within_their_bound_and_are_found_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let rows: Vec<AnswerRow> = (0..400_000u64)
        .map(|i| answer_row("t1", &format!("request-{i:032x}"), T0_MS + i / 100))
        .collect();
    for batch in rows.chunks(1_000) {
        store.write(&[], batch).unwrap();
        let (held, capacity) = store.inner.answers_held().bytes_held();
        assert!(held < crate::pending::PENDING_BYTES_MAX);
        assert!(capacity <= crate::pending::PENDING_BYTES_MAX + crate::pending::ROW_BYTES_MAX);
    }
    // One write of more than the bound at once: held and ingested in turn.
    store.write(&[], &rows).unwrap();
    let (_, capacity) = store.inner.answers_held().bytes_held();
    assert!(capacity <= crate::pending::PENDING_BYTES_MAX + crate::pending::ROW_BYTES_MAX);
    assert!(store.state().answers_bytes > 0);
    let on_disk = store.inner.catalog().answers[0].disk_space();
    assert!(on_disk > 0, "the bound sent answers to their tables");
    let now = T0_MS + 3_000;
    for row in rows.iter().step_by(997) {
        let found = store.answer(&row.tenant, &row.request_id, now).unwrap();
        assert_eq!(found.as_ref(), Some(&row.answer), "{}", row.request_id);
    }
}

#[test]
fn a_store_can_be_opened_again_once_its_last_clone_closed_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let clone = store.clone();
    let closed = store.closed();
    drop(store);
    assert!(
        !closed.wait(std::time::Duration::ZERO),
        "a clone still holds it"
    );
    let config = StoreConfig {
        dir: dir.path().join("trail"),
        ..StoreConfig::default()
    };
    assert!(matches!(
        Store::open(config.clone()),
        Err(StoreError::Engine(_))
    ));
    let waiter = std::thread::spawn(move || closed.wait(std::time::Duration::from_secs(60)));
    drop(clone);
    assert!(waiter.join().unwrap(), "closed once the last clone dropped");
    Store::open(config).expect("the directory is free again");
}

#[test]
fn bad_bytes_on_disk_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |_| {});
    let records = chain(1, GENESIS_PREV_HASH, 100, 10, 10);
    store
        .write(&records, &[answer_row("t1", "r1", T0_MS)])
        .unwrap();
    store.persist().unwrap();
    let cat = store.inner.catalog();
    cat.records[0]
        .insert(crate::layout::record_key(50), b"\x07garbage".as_slice())
        .unwrap();
    cat.answers[0]
        .insert(
            crate::layout::answer_key(
                &TenantId::new("t1").unwrap(),
                &RequestId::new("r1").unwrap(),
            ),
            [0xffu8; 3].as_slice(),
        )
        .unwrap();
    assert!(matches!(everything(&store), Err(StoreError::Corrupt(_))));
    assert!(matches!(store.verify(), Err(StoreError::Corrupt(_))));
    let answer = store.answer(
        &TenantId::new("t1").unwrap(),
        &RequestId::new("r1").unwrap(),
        T0_MS,
    );
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
    assert!(matches!(
        store.answers_page(None, 10),
        Err(StoreError::Corrupt(_))
    ));
    // A damaged catalog refuses to open.
    store
        .inner
        .meta
        .insert(crate::layout::META_KEY, b"\x01\x02".as_slice())
        .unwrap();
    // Not `persist`, which writes the catalog anew.
    store.inner.db.persist(fjall::PersistMode::SyncAll).unwrap();
    drop((cat, store));
    let reopened = Store::open(StoreConfig {
        dir: dir.path().join("trail"),
        ..StoreConfig::default()
    });
    assert!(matches!(reopened, Err(StoreError::Corrupt(_))));
}

#[test]
fn damaged_files_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir, |c| c.audit_retention_ms = 16_000);
        write_all(&store, &chain(1, GENESIS_PREV_HASH, 5_000, 10, 11));
        store.persist().unwrap();
    }
    let mut files = Vec::new();
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path)
            } else {
                files.push(path)
            }
        }
    }
    for path in &files {
        let mut bytes = std::fs::read(path).unwrap();
        for i in (bytes.len() / 3..bytes.len()).step_by(61) {
            bytes[i] ^= 0x5a;
        }
        std::fs::write(path, bytes).unwrap();
    }
    // Whatever the engine makes of it, the store answers with errors or data, never a panic.
    let result = std::panic::catch_unwind(|| {
        let config = StoreConfig {
            dir: dir.path().join("trail"),
            ..StoreConfig::default()
        };
        if let Ok(store) = Store::open(config) {
            let _ = everything(&store);
            let _ = store.verify();
        }
    });
    assert!(result.is_ok(), "a damaged store panicked");
}

#[test]
fn queries_are_a_filter_over_all_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |c| c.audit_retention_ms = 16_000);
    let records = chain(1, GENESIS_PREV_HASH, 6_000, 7, 12);
    write_all(&store, &records);
    let tenant = |t: &str| Some(TenantId::new(t).unwrap());
    let filters = [
        AuditFilter {
            tenant: tenant("t1"),
            ..AuditFilter::default()
        },
        AuditFilter {
            tenant: tenant("t2"),
            agent: Some(AgentId::new("a1").unwrap()),
            ..AuditFilter::default()
        },
        AuditFilter {
            agent: Some(AgentId::new("a0").unwrap()),
            ..AuditFilter::default()
        },
        AuditFilter {
            from_ms: Some(T0_MS + 7_000),
            to_ms: Some(T0_MS + 21_000),
            ..AuditFilter::default()
        },
        AuditFilter {
            tenant: tenant("t3"),
            from_ms: Some(T0_MS + 5_000),
            to_ms: Some(T0_MS + 30_000),
            ..AuditFilter::default()
        },
        AuditFilter {
            tool: Some(ToolId::new("tool1").unwrap()),
            event: Some("release".into()),
            ..AuditFilter::default()
        },
        AuditFilter {
            tenant: tenant("t1"),
            event: Some("grant".into()),
            after_seq: Some(2_500),
            to_seq: Some(5_000),
            ..AuditFilter::default()
        },
        AuditFilter {
            tenant: tenant("nobody"),
            ..AuditFilter::default()
        },
    ];
    for filter in filters {
        let expected: Vec<&AuditRecord> = records
            .iter()
            .filter(|r| {
                filter.after_seq.is_none_or(|s| r.seq > s)
                    && filter.to_seq.is_none_or(|s| r.seq <= s)
            })
            .filter(|r| {
                filter.from_ms.is_none_or(|t| r.at_ms >= t)
                    && filter.to_ms.is_none_or(|t| r.at_ms <= t)
            })
            .filter(|r| filter.tenant.is_none() || r.tenant == filter.tenant)
            .filter(|r| filter.agent.is_none() || r.agent == filter.agent)
            .filter(|r| filter.tool.is_none() || r.tool == filter.tool)
            .filter(|r| filter.event.as_ref().is_none_or(|e| e == r.event.name()))
            .collect();
        for limit in [0, 1, 333] {
            let mut got: Vec<AuditRecord> = Vec::new();
            loop {
                let page = store
                    .query(&AuditFilter {
                        limit,
                        after_seq: got.last().map(|r| r.seq).or(filter.after_seq),
                        ..filter.clone()
                    })
                    .unwrap();
                let full = limit > 0 && page.len() == limit;
                got.extend(page);
                if !full || (limit == 1 && got.len() > 40) {
                    break;
                }
            }
            let n = got.len();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                expected[..n],
                "{filter:?} limit {limit}"
            );
            assert!(
                n == expected.len() || limit == 1,
                "{filter:?} limit {limit}"
            );
        }
    }
}

#[test]
fn answers_page_through_every_answer_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |c| c.answer_horizon_ms = 8_000);
    let rows: Vec<AnswerRow> = (0..3_000u64)
        .map(|i| answer_row(&format!("t{}", i % 5), &format!("q{i}"), T0_MS + i * 10))
        .collect();
    for batch in rows.chunks(300) {
        store.write(&[], batch).unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let (page, next) = store.answers_page(cursor.as_deref(), 128).unwrap();
        assert!(page.len() <= 128);
        seen.extend(page);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let key = |r: &AnswerRow| (r.tenant.clone(), r.request_id.clone());
    let mut want: Vec<_> = rows.iter().map(|r| (key(r), r.answer.clone())).collect();
    let mut got: Vec<_> = seen.iter().map(|r| (key(r), r.answer.clone())).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    assert!(store.answers_page(Some(b"short"), 10).is_err());
}

#[test]
fn readers_run_beside_the_writer_and_the_purge() {
    fn shared<T: Send + Sync + Clone>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, |c| c.audit_retention_ms = 16_000);
    shared(&store);
    let records = chain(1, GENESIS_PREV_HASH, 4_000, 10, 13);
    let rows: Vec<AnswerRow> = records
        .iter()
        .map(|r| answer_row("t1", &format!("q{}", r.seq), r.at_ms))
        .collect();
    store.write(&records[..100], &rows[..100]).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                let page = store.query(&AuditFilter {
                    tenant: Some(TenantId::new("t1").unwrap()),
                    limit: 50,
                    ..AuditFilter::default()
                });
                assert!(page.is_ok(), "{page:?}");
                let row = &rows[50];
                assert!(store
                    .answer(&row.tenant, &row.request_id, row.answer.at_ms)
                    .is_ok());
                reads += 1;
            }
        });
        for (batch, answers) in records[100..].chunks(100).zip(rows[100..].chunks(100)) {
            store.write(batch, answers).unwrap();
            store.purge(batch[0].at_ms).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    });
    assert_eq!(store.verify().unwrap().hash, records[3_999].hash);
}
