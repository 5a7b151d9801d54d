//! Defends (or condemns) the ring's write-ahead: `push_back` and `extend_from_slice` ask
//! for the line `WRITE_AHEAD_BYTES` past the write position with `prefetch_for_write`, the
//! one `unsafe` of this crate besides the read prefetch. Pushes records into a ring shaped
//! like the ledger's audit trail at its bound (a ring of records and a ring of their
//! bodies, hundreds of MB, so the lines a push writes were last touched a whole ring ago),
//! with and without the write-ahead in alternating rounds, so both see the same minutes of
//! a shared machine. Two rows: the pushes alone (the hardware prefetcher sees nothing but
//! the two streams), and each push among random reads of a large table, as the ledger's
//! pushes are among its index lookups. Each row prints both times and their ratio.

use std::hint::black_box;
use std::time::Instant;

use tollgate_cacheline::Ring;

/// Records the trail retains, as the ledger's `AUDIT_RECORDS_RETAINED_MAX`.
const RECORDS_RETAINED: usize = 1_000_000;
/// A stored record: 80 bytes, the size of the ledger's `StoredRecord`.
type Record = [u64; 10];
/// Bytes of a record's body: about a grant's or a commit's.
const BODY_BYTES: usize = 150;
/// Records pushed each way (with and without the write-ahead) per row.
const TIMED_RECORDS: usize = 8_000_000;
/// Rounds per row, alternating the two ways (even, so each way gets half).
const ROUNDS: usize = 40;
/// The table read between pushes in the second row: well beyond any last-level cache.
const TABLE_WORDS: usize = 8 << 20;
/// Random reads of the table per record pushed in the second row.
const READS_PER_RECORD: usize = 4;

/// The ledger's audit trail in miniature: records and their bodies, bounded.
struct Trail {
    records: Ring<Record>,
    bodies: Ring<u8>,
}

impl Trail {
    /// A trail at its bound, so every timed push recycles lines written a ring ago.
    fn full() -> Trail {
        let mut trail = Trail {
            records: Ring::default(),
            bodies: Ring::default(),
        };
        let body = [0u8; BODY_BYTES];
        for i in 0..RECORDS_RETAINED {
            trail.push::<true>(i as u64, &body);
        }
        assert_eq!(trail.records.len(), RECORDS_RETAINED);
        trail
    }

    fn push<const WRITE_AHEAD: bool>(&mut self, seq: u64, body: &[u8]) {
        if self.records.len() >= RECORDS_RETAINED {
            self.records.drop_front(1);
            self.bodies.drop_front(body.len());
        }
        self.bodies.extend_from_slice_with::<WRITE_AHEAD>(body);
        self.records.push_back_with::<WRITE_AHEAD>([seq; 10]);
    }
}

/// What a round does between pushes: nothing, or random reads of a table.
struct Noise {
    table: Vec<u64>,
    /// xorshift64 state: a random index costs a few instructions, not a cache miss.
    state: u64,
}

impl Noise {
    fn new(reads: bool) -> Noise {
        let words = if reads { TABLE_WORDS } else { 0 };
        Noise {
            table: (0..words as u64).collect(),
            state: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// The sum of `READS_PER_RECORD` random words of the table (0 if it has none).
    fn read(&mut self) -> u64 {
        if self.table.is_empty() {
            return 0;
        }
        let mut sum = 0u64;
        for _ in 0..READS_PER_RECORD {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            sum = sum.wrapping_add(self.table[(self.state as usize) % self.table.len()]);
        }
        sum
    }
}

/// CPU time this thread has run, in ns (the first field of /proc/thread-self/schedstat;
/// 0 where unavailable). On a shared machine it is steadier than wall time.
fn thread_cpu_ns() -> u128 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Pushes `records` records, each after its noise, and adds the round's [wall ns, thread
/// CPU ns] to `total`.
fn round<const WRITE_AHEAD: bool>(
    trail: &mut Trail,
    noise: &mut Noise,
    seq: &mut u64,
    records: usize,
    total: &mut [u128; 2],
) {
    let mut body = [0u8; BODY_BYTES];
    let cpu_started_ns = thread_cpu_ns();
    let started = Instant::now();
    for _ in 0..records {
        let read = noise.read();
        body[..8].copy_from_slice(&read.to_le_bytes());
        trail.push::<WRITE_AHEAD>(*seq, &body);
        *seq += 1;
    }
    black_box(trail.records.back());
    total[0] += started.elapsed().as_nanos();
    total[1] += thread_cpu_ns().saturating_sub(cpu_started_ns);
}

/// Times the two ways in alternating rounds; prints both and the ratio, in wall time and
/// in thread CPU time.
fn row(name: &str, trail: &mut Trail, noise: &mut Noise, seq: &mut u64) {
    let per_round = TIMED_RECORDS / (ROUNDS / 2);
    let (mut without, mut with) = ([0u128; 2], [0u128; 2]);
    for r in 0..ROUNDS {
        if r % 2 == 0 {
            round::<false>(trail, noise, seq, per_round, &mut without);
        } else {
            round::<true>(trail, noise, seq, per_round, &mut with);
        }
    }
    let records = (per_round * ROUNDS / 2) as f64;
    let ns = |total: [u128; 2], i: usize| total[i] as f64 / records;
    let ratio = |i: usize| ns(with, i) / ns(without, i).max(f64::MIN_POSITIVE);
    println!(
        "ring push, {name}: {:.1} ns/record without the write-ahead (CPU time {:.1}), {:.1} ns/record with it (CPU time {:.1}); {:.2}x the time without ({:.2}x CPU time), same rounds",
        ns(without, 0),
        ns(without, 1),
        ns(with, 0),
        ns(with, 1),
        ratio(0),
        ratio(1)
    );
}

fn main() {
    let started = Instant::now();
    let mut trail = Trail::full();
    let mut seq = RECORDS_RETAINED as u64;
    println!(
        "ring trail: {RECORDS_RETAINED} records of {} bytes and {BODY_BYTES}-byte bodies ({} MiB) filled in {:.2} s",
        size_of::<Record>(),
        (RECORDS_RETAINED * (size_of::<Record>() + BODY_BYTES)) >> 20,
        started.elapsed().as_secs_f64()
    );
    row("alone", &mut trail, &mut Noise::new(false), &mut seq);
    let mut noise = Noise::new(true);
    row(
        &format!(
            "each among {READS_PER_RECORD} random reads of a {} MiB table",
            (TABLE_WORDS * size_of::<u64>()) >> 20
        ),
        &mut trail,
        &mut noise,
        &mut seq,
    );
}
