//! Ledger throughput and memory at scale: 1,000,000 agents over 10,000 tenants, each tenant
//! with a tenant budget, a per-agent rate, a per-agent concurrency limit and a tool budget.
//! Times reserve+commit pairs on random agents (fixed seed), in alternating rounds: applied
//! one command at a time, and as the state machine applies a log entry's commands, each
//! after prefetching what the next ones will read. The last line is the result, the
//! second way: `ledger reserve+commit: <N> ns/op (1000000 agents)`; the line before it
//! gives the ratio of the two.
//!
//! Absolute times drift with the host (its memory latency most of all), so rounds of a
//! peer alternate with the ledger's in the same run: a debit of one of 10^6 keys in a
//! `HashMap`, the "keyed map debit" that the goal is scaled from (~90 ns on the host the
//! goal was set on, goal 1,000 ns: about 11 debits; docs/performance.md). The bench prints
//! a pair's time in debits as well.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use mimalloc::MiMalloc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate_ledger::*;

const TENANTS: usize = 10_000;
const AGENTS_PER_TENANT: usize = 100;
const AGENTS: usize = TENANTS * AGENTS_PER_TENANT;
const PAIRS_DEFAULT: usize = 300_000;
/// Pairs run before timing: enough to fill the dedup window (`PAIR_STEP_MS` apart) and to
/// replace every retained audit record (two per pair), so the timed pairs run in steady
/// state: forgetting as many answers and records as they add, with rings that have stopped
/// growing (the build's records are smaller than a grant's or a commit's).
const WARMUP_PAIRS: usize = max(
    (DEDUP_WINDOW_MS / PAIR_STEP_MS) as usize,
    AUDIT_RECORDS_RETAINED_MAX / 2,
) + 10_000;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}
/// Warm-up pairs (the last ones, in steady state) whose allocations are counted.
const ALLOCATION_COUNT_PAIRS: usize = 10_000;
/// Timed rounds of each way, alternating one command at a time and prefetching
/// (`PAIRS_DEFAULT` pairs each way in all).
const TIMED_ROUNDS: usize = 10;
/// Keys of the peer's map, and debits timed per ledger pair timed.
const PEER_KEYS: u64 = 1_000_000;
const PEER_DEBITS_PER_PAIR: usize = 4;
/// The goal for a pair, in debits of the map on the host it was set on (1,000 / 90 ns).
const GOAL_IN_DEBITS: f64 = 1_000.0 / 90.0;
/// Time between pairs: 250 pairs/s, 150,000 pairs (300,000 answers) in the dedup window.
const PAIR_STEP_MS: u64 = 4;

/// Counts live heap bytes and allocations while enabled (memory phases and the allocation
/// count before timing only, so timing is not skewed). Allocates with mimalloc, as the
/// `tollgate` binary does.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Allocations and reallocations while counting.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        }
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU time this thread has run, in ns (the first field of /proc/thread-self/schedstat;
/// 0 where unavailable). On a shared machine it is steadier than wall time.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The peer: a keyed map debit, as a simple in-process limiter keeps one (a balance per
/// key, `PEER_KEYS` keys, std's `HashMap` with its default hasher), on random keys.
struct KeyedMap {
    balances: std::collections::HashMap<u64, u64>,
    /// xorshift64 state: the random keys cost a few instructions, not a cache miss.
    state: u64,
}

impl KeyedMap {
    /// Spreads key `i` over the u64 range (an odd multiplier is a bijection).
    const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new() -> KeyedMap {
        let balances = (0..PEER_KEYS)
            .map(|i| (i.wrapping_mul(Self::SPREAD), u64::MAX))
            .collect();
        KeyedMap {
            balances,
            state: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Debits one unit from `n` random keys; returns how many debits were made.
    fn debit_random(&mut self, n: usize) -> usize {
        let mut made = 0;
        for _ in 0..n {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let key = (self.state % PEER_KEYS).wrapping_mul(Self::SPREAD);
            if let Some(balance) = self.balances.get_mut(&key) {
                *balance = balance.saturating_sub(1);
                made += 1;
            }
        }
        made
    }
}

/// Runs `work`, which returns how many operations it did, and adds its wall time, thread
/// CPU time and operations to `total` ([wall ns, CPU ns, operations]).
fn add_timed(total: &mut [u128; 3], work: impl FnOnce() -> usize) {
    let cpu_started_ns = thread_cpu_ns();
    let started = Instant::now();
    let operations = work();
    total[0] += started.elapsed().as_nanos();
    total[1] += u128::from(thread_cpu_ns().saturating_sub(cpu_started_ns));
    total[2] += operations as u128;
}

fn tenant_id(t: usize) -> TenantId {
    TenantId::new(format!("tenant-{t:05}")).unwrap()
}

fn agent_id(a: usize) -> AgentId {
    AgentId::new(format!("agent-{a:03}")).unwrap()
}

fn spec(id: &str, scope: Scope, dimension: Dimension, kind: LimitKind) -> LimitSpec {
    LimitSpec {
        id: LimitId::new(id).unwrap(),
        scope,
        dimension,
        kind,
        thresholds: Default::default(),
    }
}

struct Clock {
    now_ms: u64,
    requests: u64,
}

impl Clock {
    fn tick(&mut self) -> u64 {
        self.now_ms += 1;
        self.now_ms
    }

    fn request(&mut self) -> RequestId {
        self.requests += 1;
        RequestId::new(format!("req-{:09}", self.requests)).unwrap()
    }
}

/// Tenants with their limits, and `agents_per_tenant` agents each created by a record;
/// always `AGENTS` records in all, so ledgers with few and many agents hold the same
/// number of audit records. Answers are then forgotten (time passes the dedup window).
fn build(agents_per_tenant: usize, clock: &mut Clock) -> Ledger {
    let mut ledger = Ledger::new();
    let llm = ToolId::new("llm:gpt-x").unwrap();
    for t in 0..TENANTS {
        put_tenant(&mut ledger, clock, &tenant_id(t), &llm);
    }
    let records_per_agent = AGENTS_PER_TENANT / agents_per_tenant;
    for t in 0..TENANTS {
        let tenant = tenant_id(t);
        for a in 0..AGENTS_PER_TENANT {
            let at = clock.tick();
            let cmd = Command::Record {
                request_id: clock.request(),
                tenant: tenant.clone(),
                agent: agent_id(a / records_per_agent),
                tool: llm.clone(),
                actual: Amounts {
                    tokens: 10,
                    cost_micros: 10,
                    calls: 1,
                },
                usage: None,
                offline: false,
                session: None,
            };
            assert!(matches!(ledger.apply(at, &cmd), Outcome::Recorded { .. }));
        }
    }
    clock.now_ms += DEDUP_WINDOW_MS;
    ledger.apply(clock.now_ms, &Command::Tick);
    assert_eq!(ledger.stats().dedup_entries, 0);
    ledger
}

/// One tenant and its four limits.
fn put_tenant(ledger: &mut Ledger, clock: &mut Clock, tenant: &TenantId, llm: &ToolId) {
    let at = clock.tick();
    let out = ledger.apply(
        at,
        &Command::PutTenant {
            request_id: clock.request(),
            tenant: tenant.clone(),
            policy: TenantPolicy::default(),
        },
    );
    assert_eq!(out, Outcome::Done);
    for limit in tenant_limits(llm) {
        let at = clock.tick();
        let out = ledger.apply(
            at,
            &Command::PutLimit {
                request_id: clock.request(),
                tenant: tenant.clone(),
                limit,
            },
        );
        assert_eq!(out, Outcome::Done);
    }
}

/// A tenant budget, a per-agent rate, a per-agent concurrency limit and a tool budget.
fn tenant_limits(llm: &ToolId) -> [LimitSpec; 4] {
    [
        spec(
            "tenant-monthly-cost",
            Scope::Tenant,
            Dimension::Cost,
            LimitKind::Budget {
                window: Window::Month,
                amount: AMOUNT_MAX,
            },
        ),
        spec(
            "agent-calls-per-minute",
            Scope::EachAgent,
            Dimension::Calls,
            LimitKind::Rate {
                amount: 600,
                period_ms: 60_000,
                burst: 100,
            },
        ),
        spec(
            "agent-parallel",
            Scope::EachAgent,
            Dimension::Concurrency,
            LimitKind::Concurrency { max: 10 },
        ),
        spec(
            "llm-daily-tokens",
            Scope::ToolTenant(llm.clone()),
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Day,
                amount: AMOUNT_MAX,
            },
        ),
    ]
}

fn main() {
    // `LEDGER_BENCH_PAIRS` overrides the number of timed pairs (e.g. 0 to profile the build).
    let pairs_timed: usize = std::env::var("LEDGER_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PAIRS_DEFAULT);
    let mut clock = Clock {
        // 2024-03-10 00:00:00 UTC
        now_ms: 1_710_028_800_000,
        requests: 0,
    };
    let mut ledger = build_measuring_memory(&mut clock);
    let commands = pair_commands(&mut ledger, &mut clock, WARMUP_PAIRS + 2 * pairs_timed);
    let (warmup, timed) = commands.split_at(2 * WARMUP_PAIRS);
    warm_up_counting_allocations(&mut ledger, warmup, &mut clock);

    let totals = time_alternating(&mut ledger, timed, pairs_timed, &mut clock);
    assert!(ledger.stats().reservations_in_flight <= 1);
    print_times(&totals, ledger.stats().agents);
    // Freeing a million agents one by one takes longer than the run; the OS does it at once.
    std::mem::forget(ledger);
    std::mem::forget(commands);
}

/// Memory: the same commands over 10,000 agents and over 1,000,000 agents; the difference
/// is what the extra agents cost. Prints the build and memory lines; returns the ledger of
/// 1,000,000 agents.
fn build_measuring_memory(clock: &mut Clock) -> Ledger {
    COUNTING.store(true, Relaxed);
    let few = build(1, clock);
    let live_few = LIVE_BYTES.load(Relaxed);
    drop(few);
    let rss_before = rss_bytes();
    let live_before = LIVE_BYTES.load(Relaxed);
    let started = Instant::now();
    let ledger = build(AGENTS_PER_TENANT, clock);
    let build_s = started.elapsed().as_secs_f64();
    let live_many = LIVE_BYTES.load(Relaxed) - live_before;
    let rss_after = rss_bytes();
    COUNTING.store(false, Relaxed);
    let stats = ledger.stats();
    assert_eq!(stats.agents as usize, AGENTS);
    let marginal = (live_many - live_few) as f64 / (AGENTS - TENANTS) as f64;
    println!(
        "ledger build: {TENANTS} tenants, {} agents, {} audit records in {build_s:.2} s",
        stats.agents, stats.audit_records_retained
    );
    println!(
        "ledger memory: {marginal:.0} bytes/agent (live heap, marginal); whole ledger {} MiB live heap, RSS +{} MiB ({:.0} bytes/agent incl. {} audit records)",
        live_many / (1 << 20),
        (rss_after.saturating_sub(rss_before)) / (1 << 20),
        rss_after.saturating_sub(rss_before) as f64 / AGENTS as f64,
        stats.audit_records_retained,
    );
    ledger
}

/// Reserve, commit, reserve, commit, ...: `pairs` pairs on random agents (fixed seed).
/// Commands are built before timing: the ledger's cost is measured, not the harness's.
fn pair_commands(ledger: &mut Ledger, clock: &mut Clock, pairs: usize) -> Vec<Command> {
    let mut rng = StdRng::seed_from_u64(0x7011_6a7e);
    let llm = ToolId::new("llm:gpt-x").unwrap();
    let estimate = Amounts {
        tokens: 500,
        cost_micros: 1_000,
        calls: 1,
    };
    let actual = Amounts {
        tokens: 420,
        cost_micros: 900,
        calls: 1,
    };
    // Reservation ids count per tenant; the ledger holds no reservation but this first one.
    let mut issued = vec![0u64; TENANTS];
    issued[0] = match ledger.apply(
        clock.tick(),
        &Command::Reserve {
            request_id: clock.request(),
            tenant: tenant_id(0),
            agent: agent_id(0),
            tool: llm.clone(),
            estimate,
            ttl_ms: 60_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        },
    ) {
        Outcome::Granted { reservation_id, .. } => reservation_id.0,
        other => panic!("{other:?}"),
    };
    (0..pairs)
        .flat_map(|_| {
            let t = rng.random_range(0..TENANTS);
            issued[t] += 1;
            let tenant = tenant_id(t);
            let agent = agent_id(rng.random_range(0..AGENTS_PER_TENANT));
            let reserve = Command::Reserve {
                request_id: clock.request(),
                tenant: tenant.clone(),
                agent,
                tool: llm.clone(),
                estimate,
                ttl_ms: 60_000,
                fingerprint: None,
                shape: None,
                usage: None,
                session: None,
            };
            let commit = Command::Commit {
                request_id: clock.request(),
                tenant,
                reservation_id: ReservationId(issued[t]),
                actual,
                abandoned: false,
                usage: None,
            };
            [reserve, commit]
        })
        .collect()
}

/// Applies reserve/commit pairs. With `prefetch`, as the state machine applies a log
/// entry's commands: each after prefetching what the next ones will read
/// (`Ledger::prefetch_upcoming`).
fn run_pairs(ledger: &mut Ledger, commands: &[Command], clock: &mut Clock, prefetch: bool) {
    for i in (0..commands.len()).step_by(2) {
        clock.now_ms += PAIR_STEP_MS;
        let at = clock.now_ms;
        if prefetch {
            ledger.prefetch_upcoming(&commands[i + 1..]);
        }
        let granted = ledger.apply(at, &commands[i]);
        debug_assert!(matches!(granted, Outcome::Granted { .. }), "{granted:?}");
        if prefetch {
            ledger.prefetch_upcoming(&commands[i + 2..]);
        }
        let committed = ledger.apply(at, &commands[i + 1]);
        assert!(
            matches!(committed, Outcome::Committed { late: false, .. }),
            "{granted:?} then {committed:?}"
        );
    }
}

/// Runs the warm-up pairs; the last ones run in steady state, so their allocations are
/// counted and printed.
fn warm_up_counting_allocations(ledger: &mut Ledger, warmup: &[Command], clock: &mut Clock) {
    let (warmup, counted) = warmup.split_at(2 * (WARMUP_PAIRS - ALLOCATION_COUNT_PAIRS));
    run_pairs(ledger, warmup, clock, true);
    ALLOCATIONS.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    run_pairs(ledger, counted, clock, true);
    COUNTING.store(false, Relaxed);
    println!(
        "ledger reserve+commit allocations: {:.2} per pair (last {ALLOCATION_COUNT_PAIRS} warm-up pairs)",
        ALLOCATIONS.load(Relaxed) as f64 / ALLOCATION_COUNT_PAIRS as f64
    );
}

/// [wall ns, thread CPU ns, operations] of each way and of the peer.
struct Totals {
    plain: [u128; 3],
    prefetched: [u128; 3],
    debits: [u128; 3],
}

/// The two ways, in alternating rounds over fresh pairs, so that both see the same minutes
/// of a shared machine. Before each round, a round of the peer's debits.
fn time_alternating(
    ledger: &mut Ledger,
    timed: &[Command],
    pairs_timed: usize,
    clock: &mut Clock,
) -> Totals {
    let mut peer = KeyedMap::new();
    let mut totals = Totals {
        plain: [0; 3],
        prefetched: [0; 3],
        debits: [0; 3],
    };
    // A reserve and its commit per pair: a round is never cut between them.
    let round_commands = 2 * pairs_timed.div_ceil(TIMED_ROUNDS).max(1);
    for (round, chunk) in timed.chunks(round_commands).enumerate() {
        add_timed(&mut totals.debits, || {
            peer.debit_random(PEER_DEBITS_PER_PAIR * chunk.len() / 2)
        });
        let prefetch = round % 2 == 1;
        let total = if prefetch {
            &mut totals.prefetched
        } else {
            &mut totals.plain
        };
        add_timed(total, || {
            run_pairs(ledger, chunk, clock, prefetch);
            chunk.len() / 2
        });
    }
    totals
}

/// The time lines; the last is the result: `ledger reserve+commit: <N> ns/op (<A> agents)`.
fn print_times(totals: &Totals, agents: u64) {
    let Totals {
        plain,
        prefetched,
        debits,
    } = *totals;
    let per_pair = |total: [u128; 3], i: usize| total[i] / total[2].max(1);
    println!(
        "ledger reserve+commit, one command at a time: {} ns/op (CPU time {} ns/op)",
        per_pair(plain, 0),
        per_pair(plain, 1)
    );
    println!(
        "ledger reserve+commit, prefetching the next commands: {} ns/op (CPU time {} ns/op); {:.2}x the time of one at a time, same rounds",
        per_pair(prefetched, 0),
        per_pair(prefetched, 1),
        per_pair(prefetched, 0) as f64 / per_pair(plain, 0).max(1) as f64
    );
    let debit_ns = debits[0] as f64 / debits[2].max(1) as f64;
    let in_debits = per_pair(prefetched, 0) as f64 / debit_ns.max(f64::MIN_POSITIVE);
    println!(
        "peer, a keyed map debit (HashMap, {PEER_KEYS} keys): {debit_ns:.0} ns/op (CPU time {} ns/op), same rounds; a pair with prefetching takes {in_debits:.1} debits (goal {GOAL_IN_DEBITS:.1}: 1,000 ns at ~90 ns a debit)",
        per_pair(debits, 1),
    );
    println!(
        "ledger reserve+commit: {} ns/op ({agents} agents)",
        per_pair(prefetched, 0),
    );
}
