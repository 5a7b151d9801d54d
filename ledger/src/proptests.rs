//! Property tests: random command sequences over small id pools (so reservations, request
//! ids, agents and limits collide often), checked step by step and at the end.
//! `TOLLGATE_PROPTEST_CASES` sets the number of cases (default 1000).

use std::collections::HashMap;

use proptest::prelude::*;

use super::tests::{agent, limit_id, proptest_cases, request, tenant, tool, unchecked};
use super::window::tests::utc_ms;
use super::*;

const TENANTS: [&str; 2] = ["t0", "t1"];
const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
const TOOLS: [&str; 2] = ["llm", "search"];
const OPS_MAX: usize = 50;

#[derive(Clone, Debug)]
enum Op {
    /// Moves time forward with a `Tick`.
    Advance(u64),
    Reserve {
        t: usize,
        a: usize,
        tool: usize,
        estimate: Amounts,
        ttl_ms: u64,
        fingerprint: Option<u8>,
        shape: Option<u8>,
    },
    Commit {
        t: usize,
        id: u64,
        actual: Amounts,
    },
    Release {
        t: usize,
        id: u64,
    },
    Record {
        t: usize,
        a: usize,
        tool: usize,
        actual: Amounts,
    },
    PutLimit {
        t: usize,
        template: usize,
    },
    DeleteLimit {
        t: usize,
        template: usize,
    },
    Freeze {
        t: usize,
        a: Option<usize>,
        frozen: bool,
    },
    ResetTrip {
        t: usize,
        a: usize,
    },
    PutTenant {
        t: usize,
        release: bool,
        runaway: bool,
    },
    /// Asks for a lease.
    Lease {
        t: usize,
        a: usize,
        tool: usize,
        want: Amounts,
        units: u32,
        floor: Amounts,
    },
    /// Settles lease `id` (a live, ended, expired or unknown one) with these calls
    /// (estimate, actual, fingerprint).
    Settle {
        t: usize,
        id: u64,
        calls: Vec<(Amounts, Amounts, Option<u8>)>,
        want: Amounts,
        units: u32,
    },
    /// Sends an earlier command again, unchanged.
    Retry(usize),
    /// Sends one of a few hostile commands.
    Hostile(usize),
}

fn limit_template(template: usize) -> LimitSpec {
    let (id, scope, dimension, kind) = match template % 9 {
        0 => (
            "l0",
            Scope::Tenant,
            Dimension::Cost,
            LimitKind::Budget {
                window: Window::Lifetime,
                amount: 200,
            },
        ),
        1 => (
            "l1",
            Scope::EachAgent,
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Hour,
                amount: 100,
            },
        ),
        2 => (
            "l2",
            Scope::Agent(agent("a1")),
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Day,
                amount: 300,
            },
        ),
        3 => (
            "l3",
            Scope::ToolPerAgent(tool("search")),
            Dimension::Calls,
            LimitKind::Rate {
                amount: 2,
                period_ms: 1_000,
                burst: 3,
            },
        ),
        4 => (
            "l4",
            Scope::ToolTenant(tool("llm")),
            Dimension::Cost,
            LimitKind::Budget {
                window: Window::Day,
                amount: 150,
            },
        ),
        5 => (
            "l5",
            Scope::EachAgent,
            Dimension::Concurrency,
            LimitKind::Concurrency { max: 2 },
        ),
        6 => (
            "l6",
            Scope::Tenant,
            Dimension::Tokens,
            LimitKind::Rate {
                amount: 50,
                period_ms: 2_000,
                burst: 80,
            },
        ),
        // Same id as 0 with another cap: keeps the counters.
        7 => (
            "l0",
            Scope::Tenant,
            Dimension::Cost,
            LimitKind::Budget {
                window: Window::Lifetime,
                amount: 400,
            },
        ),
        // Same id as 1 with another window: starts afresh.
        _ => (
            "l1",
            Scope::EachAgent,
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Day,
                amount: 100,
            },
        ),
    };
    LimitSpec {
        id: limit_id(id),
        scope,
        dimension,
        kind,
        thresholds: Default::default(),
    }
}

fn amounts() -> impl Strategy<Value = Amounts> {
    prop_oneof![
        12 => (0u64..40, 0u64..60, 0u64..3).prop_map(|(tokens, cost_micros, calls)| Amounts {
            tokens,
            cost_micros,
            calls
        }),
        1 => Just(Amounts {
            tokens: AMOUNT_MAX,
            cost_micros: AMOUNT_MAX,
            calls: AMOUNT_MAX
        }),
    ]
}

fn small_amounts() -> impl Strategy<Value = Amounts> {
    (0u64..20, 0u64..30, 0u64..2).prop_map(|(tokens, cost_micros, calls)| Amounts {
        tokens,
        cost_micros,
        calls,
    })
}

fn op(hostile_weight: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..3_000).prop_map(Op::Advance),
        8 => (
            0..2usize,
            0..3usize,
            0..2usize,
            amounts(),
            prop_oneof![100u64..3_000, Just(TTL_MS_MAX)],
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
        )
            .prop_map(|(t, a, tool, estimate, ttl_ms, fingerprint, shape)| Op::Reserve {
                t,
                a,
                tool,
                estimate,
                ttl_ms,
                fingerprint,
                shape,
            }),
        5 => (0..2usize, 0u64..14, amounts()).prop_map(|(t, id, actual)| Op::Commit { t, id, actual }),
        2 => (0..2usize, 0u64..14).prop_map(|(t, id)| Op::Release { t, id }),
        2 => (0..2usize, 0..3usize, 0..2usize, amounts())
            .prop_map(|(t, a, tool, actual)| Op::Record { t, a, tool, actual }),
        2 => (0..2usize, 0..9usize).prop_map(|(t, template)| Op::PutLimit { t, template }),
        1 => (0..2usize, 0..9usize).prop_map(|(t, template)| Op::DeleteLimit { t, template }),
        1 => (0..2usize, proptest::option::of(0..3usize), any::<bool>())
            .prop_map(|(t, a, frozen)| Op::Freeze { t, a, frozen }),
        1 => (0..2usize, 0..3usize).prop_map(|(t, a)| Op::ResetTrip { t, a }),
        1 => (0..2usize, any::<bool>(), any::<bool>())
            .prop_map(|(t, release, runaway)| Op::PutTenant { t, release, runaway }),
        3 => (0..2usize, 0..3usize, 0..2usize, amounts(), 0u32..3, small_amounts())
            .prop_map(|(t, a, tool, want, units, floor)| Op::Lease { t, a, tool, want, units, floor }),
        3 => (
            0..2usize,
            0u64..14,
            proptest::collection::vec((small_amounts(), amounts(), proptest::option::of(0u8..2)), 0..4),
            amounts(),
            0u32..3,
        )
            .prop_map(|(t, id, calls, want, units)| Op::Settle { t, id, calls, want, units }),
        2 => any::<usize>().prop_map(Op::Retry),
        hostile_weight => (0..10usize).prop_map(Op::Hostile),
    ]
}

fn ops(hostile_weight: u32) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(hostile_weight), 1..OPS_MAX)
}

fn policy(release: bool, runaway: bool) -> TenantPolicy {
    TenantPolicy {
        expiry: if release {
            ExpiryPolicy::Release
        } else {
            ExpiryPolicy::Charge
        },
        repeat_max: if runaway { 3 } else { 0 },
        repeat_window_ms: 5_000,
        velocity_factor: if runaway { 3 } else { 0 },
        velocity_window_ms: 2_000,
        velocity_dimension: Dimension::Tokens,
        velocity_floor: 60,
        shape_floor: if runaway { 4 } else { 0 },
        trip_cooldown_ms: if runaway { 4_000 } else { 0 },
        quotas: Default::default(),
        leases: true,
    }
}

/// Which step-by-step property a run asserts (all runs assert the ledger's own invariants,
/// which `apply` checks in debug builds).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    BudgetsHold,
    RetriesChangeNothing,
    RejectionsChangeNothing,
}

struct Run {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
    sent: Vec<(Command, Outcome)>,
    /// Prefetch before every command, with the last commands sent as the "upcoming" ones.
    prefetch: bool,
}

impl Run {
    fn new() -> Self {
        // Two minutes before midnight UTC, so hour and day windows roll during runs.
        let mut run = Run {
            ledger: Ledger::new(),
            now_ms: utc_ms(2024, 2, 29, 23, 58, 0, 0),
            requests: 0,
            sent: Vec::new(),
            prefetch: false,
        };
        for (t, name) in TENANTS.iter().enumerate() {
            let cmd = Command::PutTenant {
                request_id: run.next_request(),
                tenant: tenant(name),
                policy: policy(false, t == 1),
            };
            run.send(cmd, Check::None);
        }
        // Limits in force from the start, so decisions bind often.
        for (t, templates) in [(0, [0, 1, 3, 5]), (1, [2, 4, 6, 5])] {
            for template in templates {
                let cmd = Command::PutLimit {
                    request_id: run.next_request(),
                    tenant: tenant(TENANTS[t]),
                    limit: limit_template(template),
                };
                run.send(cmd, Check::None);
            }
        }
        run
    }

    fn next_request(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("q{}", self.requests))
    }

    fn hostile(&mut self, which: usize) -> Command {
        let reserve = |request_id, tenant, agent, estimate, ttl_ms| Command::Reserve {
            request_id,
            tenant,
            agent,
            tool: tool("llm"),
            estimate,
            ttl_ms,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        };
        let huge = "h".repeat(10 * ID_BYTES_MAX);
        let max = Amounts {
            tokens: u64::MAX,
            cost_micros: u64::MAX,
            calls: u64::MAX,
        };
        match which {
            0 => reserve(self.next_request(), tenant("t0"), agent("a0"), max, 1_000),
            1 => reserve(
                self.next_request(),
                tenant("t0"),
                unchecked(""),
                Amounts::default(),
                1_000,
            ),
            2 => reserve(
                self.next_request(),
                unchecked(&huge),
                agent("a0"),
                Amounts::default(),
                1_000,
            ),
            3 => reserve(
                self.next_request(),
                tenant("nobody"),
                agent("a0"),
                Amounts::default(),
                1_000,
            ),
            4 => reserve(
                self.next_request(),
                tenant("t1"),
                agent("a0"),
                Amounts::default(),
                u64::MAX,
            ),
            5 => reserve(
                unchecked(""),
                tenant("t1"),
                agent("a0"),
                Amounts::default(),
                1_000,
            ),
            6 => Command::Commit {
                request_id: self.next_request(),
                tenant: tenant("t0"),
                reservation_id: ReservationId(u64::MAX),
                actual: Amounts::default(),
                abandoned: false,
                usage: None,
            },
            7 => Command::Release {
                request_id: self.next_request(),
                tenant: tenant("t1"),
                reservation_id: ReservationId(0),
            },
            // An old request id with another payload.
            8 => Command::Record {
                request_id: request("q1"),
                tenant: tenant("t0"),
                agent: agent("a2"),
                tool: tool("llm"),
                actual: Amounts::default(),
                usage: None,
                offline: false,
                session: None,
            },
            _ => Command::PutLimit {
                request_id: self.next_request(),
                tenant: tenant("t0"),
                limit: LimitSpec {
                    id: unchecked("bad id"),
                    scope: Scope::Agent(unchecked("")),
                    dimension: Dimension::Concurrency,
                    kind: LimitKind::Rate {
                        amount: 0,
                        period_ms: 0,
                        burst: 0,
                    },
                    thresholds: Default::default(),
                },
            },
        }
    }

    fn command(&mut self, op: &Op) -> Option<Command> {
        let cmd = match *op {
            Op::Advance(ms) => {
                self.now_ms += ms;
                Command::Tick
            }
            Op::Reserve {
                t,
                a,
                tool: w,
                estimate,
                ttl_ms,
                fingerprint,
                shape,
            } => Command::Reserve {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                agent: agent(AGENTS[a]),
                tool: tool(TOOLS[w]),
                estimate,
                ttl_ms,
                fingerprint: fingerprint.map(|f| format!("fp{f}")),
                shape: shape.map(|s| format!("shape{s}")),
                usage: None,
                session: None,
            },
            Op::Commit { t, id, actual } => Command::Commit {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                reservation_id: ReservationId(id),
                actual,
                abandoned: false,
                usage: None,
            },
            Op::Release { t, id } => Command::Release {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                reservation_id: ReservationId(id),
            },
            Op::Record {
                t,
                a,
                tool: w,
                actual,
            } => Command::Record {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                agent: agent(AGENTS[a]),
                tool: tool(TOOLS[w]),
                actual,
                usage: None,
                offline: false,
                session: None,
            },
            Op::PutLimit { t, template } => Command::PutLimit {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                limit: limit_template(template),
            },
            Op::DeleteLimit { t, template } => Command::DeleteLimit {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                limit_id: limit_template(template).id,
            },
            Op::Freeze { t, a, frozen } => {
                let request_id = self.next_request();
                let tenant = tenant(TENANTS[t]);
                let agent = a.map(|a| agent(AGENTS[a]));
                if frozen {
                    Command::Freeze {
                        request_id,
                        tenant,
                        agent,
                    }
                } else {
                    Command::Unfreeze {
                        request_id,
                        tenant,
                        agent,
                    }
                }
            }
            Op::ResetTrip { t, a } => Command::ResetTrip {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                agent: agent(AGENTS[a]),
            },
            Op::PutTenant {
                t,
                release,
                runaway,
            } => Command::PutTenant {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                policy: policy(release, runaway),
            },
            Op::Lease {
                t,
                a,
                tool: w,
                want,
                units,
                floor,
            } => Command::Lease {
                request_id: self.next_request(),
                tenant: tenant(TENANTS[t]),
                agent: agent(AGENTS[a]),
                tool: tool(TOOLS[w]),
                want,
                units,
                floor,
                ttl_ms: 0,
            },
            Op::Settle {
                t,
                id,
                ref calls,
                want,
                units,
            } => {
                let calls = calls
                    .iter()
                    .map(|&(estimate, actual, fingerprint)| LeaseCall {
                        request_id: self.next_request(),
                        estimate,
                        actual,
                        fingerprint: fingerprint.map(|f| format!("fp{f}")),
                        shape: None,
                    })
                    .collect();
                Command::Settle {
                    request_id: self.next_request(),
                    tenant: tenant(TENANTS[t]),
                    lease_id: ReservationId(id),
                    calls,
                    want,
                    units,
                    ttl_ms: 0,
                    keep: Amounts::default(),
                    keep_units: 0,
                }
            }
            Op::Retry(k) => {
                if self.sent.is_empty() {
                    return None;
                }
                self.sent[k % self.sent.len()].0.clone()
            }
            Op::Hostile(which) => self.hostile(which),
        };
        Some(cmd)
    }

    /// Applies a command at the current time and asserts `check` on the step.
    fn send(&mut self, cmd: Command, check: Check) -> Outcome {
        let first = self
            .sent
            .iter()
            .find(|(c, o)| {
                c.request_id().is_some() && *c == cmd && !matches!(o, Outcome::Rejected(_))
            })
            .map(|(_, o)| o.clone());
        let before = match check {
            Check::RejectionsChangeNothing => Some(self.ledger.clone()),
            Check::RetriesChangeNothing if first.is_some() => Some(self.ledger.clone()),
            _ => None,
        };
        if self.prefetch {
            let recent: Vec<Command> = self
                .sent
                .iter()
                .rev()
                .take(PREFETCH_DEPTH)
                .map(|(c, _)| c.clone())
                .collect();
            self.ledger.prefetch_upcoming(&recent);
        }
        let outcome = self.ledger.apply(self.now_ms, &cmd);
        match check {
            // A retry returns the first grant without granting again; skip it.
            Check::BudgetsHold if first.is_none() => {
                // A reserve's grant, or a lease's (a settle that renews is a grant too, but
                // may follow overrunning calls, charged in full).
                if let (
                    Outcome::Granted { .. } | Outcome::Leased(_),
                    Command::Reserve {
                        tenant,
                        agent,
                        tool,
                        ..
                    }
                    | Command::Lease {
                        tenant,
                        agent,
                        tool,
                        ..
                    },
                ) = (&outcome, &cmd)
                {
                    for u in self.ledger.usage(tenant, Some(agent), Some(tool)).unwrap() {
                        if let LimitKind::Budget { amount, .. } = u.limit.kind {
                            assert!(
                                u128::from(u.used) + u128::from(u.held) <= u128::from(amount),
                                "grant took {} past its budget: {u:?}",
                                u.limit.id
                            );
                        }
                    }
                }
            }
            Check::RetriesChangeNothing => {
                if let Some(first) = first {
                    assert_eq!(outcome, first, "a retry got another answer: {cmd:?}");
                    assert!(
                        before.as_ref() == Some(&self.ledger),
                        "a retry changed the ledger: {cmd:?}"
                    );
                }
            }
            Check::RejectionsChangeNothing => {
                if matches!(outcome, Outcome::Rejected(_)) {
                    assert!(
                        before.as_ref() == Some(&self.ledger),
                        "a rejected command changed the ledger: {cmd:?} -> {outcome:?}"
                    );
                }
            }
            Check::None | Check::BudgetsHold => {}
        }
        self.sent.push((cmd, outcome.clone()));
        outcome
    }

    fn replay(ops: &[Op], check: Check) -> Run {
        Run::replay_with(ops, check, false)
    }

    /// Replays `ops` with agent GC on or off.
    fn replay_gc(ops: &[Op], gc: bool) -> Run {
        let mut run = Run::new();
        run.ledger.test_knobs.agent_gc_off = !gc;
        for op in ops {
            if let Some(cmd) = run.command(op) {
                run.send(cmd, Check::None);
            }
        }
        run
    }

    fn replay_with(ops: &[Op], check: Check, prefetch: bool) -> Run {
        let mut run = Run::new();
        run.prefetch = prefetch;
        for op in ops {
            if let Some(cmd) = run.command(op) {
                run.send(cmd, check);
            }
        }
        run
    }
}

/// A reservation as its tenant names it: ids count per tenant.
type Lives = HashMap<(Option<TenantId>, ReservationId), (u32, Vec<&'static str>)>;

/// Grant, end (commit, release or expiry) and late commits seen per reservation.
fn reservation_lives(ledger: &Ledger) -> Lives {
    let mut lives = Lives::new();
    for record in ledger.audit(&AuditFilter::default()) {
        let Some(id) = record.reservation_id else {
            continue;
        };
        if is_lease_event(&record.event) {
            continue;
        }
        let life = lives.entry((record.tenant.clone(), id)).or_default();
        match record.event {
            AuditEvent::Grant => life.0 += 1,
            AuditEvent::Commit { late: false, .. } => life.1.push("commit"),
            AuditEvent::Commit { late: true, .. } => life.1.push("late-commit"),
            AuditEvent::Release => life.1.push("release"),
            AuditEvent::Expire { .. } => life.1.push("expire"),
            ref other => panic!("record of reservation {id} with event {other:?}"),
        }
    }
    lives
}

fn is_lease_event(event: &AuditEvent) -> bool {
    matches!(
        event,
        AuditEvent::LeaseGrant
            | AuditEvent::LeaseCall { .. }
            | AuditEvent::LeaseReturn { .. }
            | AuditEvent::LeaseExpire
    )
}

/// Each lease's records in order: "grant" (a grant or renewal), "call" (a call charged),
/// "late-call" (a call reported after its expiry), "return", "expire".
fn lease_lives(ledger: &Ledger) -> HashMap<(Option<TenantId>, ReservationId), Vec<&'static str>> {
    let mut lives: HashMap<_, Vec<&'static str>> = HashMap::new();
    for record in ledger.audit(&AuditFilter::default()) {
        let Some(id) = record.reservation_id else {
            continue;
        };
        let step = match record.event {
            AuditEvent::LeaseGrant => "grant",
            AuditEvent::LeaseCall { charged: true, .. } => "call",
            AuditEvent::LeaseCall { charged: false, .. } => "late-call",
            AuditEvent::LeaseReturn { .. } => "return",
            AuditEvent::LeaseExpire => "expire",
            _ => continue,
        };
        lives
            .entry((record.tenant.clone(), id))
            .or_default()
            .push(step);
    }
    lives
}

/// Commands with idle spells longer than `AGENT_IDLE_MS` between them, so agent GC runs.
fn ops_with_idle_spells() -> impl Strategy<Value = Vec<Op>> {
    let step = prop_oneof![
        12 => op(1),
        1 => (AGENT_IDLE_MS..3 * AGENT_IDLE_MS).prop_map(Op::Advance),
        1 => (0..4 * VELOCITY_DECAY_WINDOWS_MAX * RUNAWAY_WINDOW_MS_MAX).prop_map(Op::Advance),
    ];
    proptest::collection::vec(step, 1..OPS_MAX * 2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases()))]

    /// Agent GC never changes a decision: a ledger that removes idle agents answers every
    /// reserve, commit, release and record exactly as one that keeps them, and reports the
    /// same usage for every agent. Only an admin command naming a removed agent (unfreeze,
    /// reset-trip) may answer that it does not know it, as before the agent's first call; the
    /// operator was told something else then, so the two histories part there (a refusal is
    /// not remembered: a retry of it later acts, where the other ledger answers from memory),
    /// and the comparison stops.
    #[test]
    fn agent_gc_changes_no_decision(ops in ops_with_idle_spells()) {
        let kept = Run::replay_gc(&ops, false);
        let collected = Run::replay_gc(&ops, true);
        for ((cmd, a), (_, b)) in kept.sent.iter().zip(&collected.sent) {
            let unknown_agent = matches!(b, Outcome::Rejected(Rejection::UnknownAgent { .. }));
            let admin = matches!(cmd, Command::Freeze { .. } | Command::Unfreeze { .. } | Command::ResetTrip { .. });
            if admin && unknown_agent && a != b {
                return Ok(());
            }
            prop_assert_eq!(a, b, "{:?}", cmd);
        }
        for name in TENANTS {
            for who in AGENTS {
                let usage = |run: &Run| run.ledger.usage(&tenant(name), Some(&agent(who)), None);
                prop_assert_eq!(usage(&kept), usage(&collected), "{} {}", name, who);
            }
        }
        prop_assert!(collected.ledger.stats().agents <= kept.ledger.stats().agents);
    }

    /// Guarantee 1: after every grant, committed + held <= amount for every budget the
    /// reservation is held against (only commits above estimate and records may pass it).
    #[test]
    fn no_grant_makes_held_plus_committed_exceed_a_budget(ops in ops(1)) {
        Run::replay(&ops, Check::BudgetsHold);
    }

    /// Guarantee 2: a retried request gets its first answer and changes nothing.
    #[test]
    fn a_retried_request_returns_its_first_answer_and_changes_nothing(ops in ops(1)) {
        Run::replay(&ops, Check::RetriesChangeNothing);
    }

    /// Rejected commands (invalid, unknown, another tenant's, exhausted) change nothing.
    #[test]
    fn rejected_commands_change_nothing(ops in ops(3)) {
        Run::replay(&ops, Check::RejectionsChangeNothing);
    }

    /// Every granted reservation ends exactly once: commit, release or expiry; a late
    /// commit only follows an expiry, at most once.
    #[test]
    fn every_reservation_ends_exactly_once(ops in ops(1)) {
        let mut run = Run::replay(&ops, Check::None);
        run.now_ms += TTL_MS_MAX + 1;
        run.send(Command::Tick, Check::None);
        prop_assert_eq!(run.ledger.stats().reservations_in_flight, 0);
        for ((tenant, id), (grants, ends)) in reservation_lives(&run.ledger) {
            let id = format!("{tenant:?} {id}");
            prop_assert_eq!(grants, 1, "{} granted {} times", id, grants);
            let first_ends = ends.iter().filter(|e| **e != "late-commit").count();
            prop_assert_eq!(first_ends, 1, "{} ended as {:?}", id, ends);
            if ends.contains(&"late-commit") {
                prop_assert_eq!(&ends, &vec!["expire", "late-commit"], "{} ended as {:?}", id, ends);
            }
        }
        // Every lease is granted first and ends exactly once, returned or expired; after
        // its end only calls reported late (not charged) follow.
        for ((tenant, id), life) in lease_lives(&run.ledger) {
            let id = format!("{tenant:?} {id}");
            prop_assert_eq!(life.first(), Some(&"grant"), "{} lived {:?}", id, life);
            let ends: Vec<usize> = (0..life.len()).filter(|&i| matches!(life[i], "return" | "expire")).collect();
            prop_assert_eq!(ends.len(), 1, "{} lived {:?}", id, life);
            prop_assert!(life[ends[0] + 1..].iter().all(|s| *s == "late-call"), "{} lived {:?}", id, life);
            prop_assert!(life[..ends[0]].iter().all(|s| *s != "late-call"), "{} lived {:?}", id, life);
        }
    }

    /// Snapshot then restore gives an equal ledger, the same bytes and the same chain head,
    /// and the restored ledger goes on to decide exactly as the original.
    #[test]
    fn snapshot_then_restore_gives_an_equal_ledger(ops in ops(1), split in 0usize..OPS_MAX) {
        let split = split.min(ops.len());
        let mut run = Run::replay(&ops[..split], Check::None);
        let bytes = run.ledger.snapshot();
        let restored = Ledger::restore(&bytes).unwrap();
        prop_assert!(restored == run.ledger);
        prop_assert_eq!(restored.snapshot(), bytes);
        prop_assert_eq!(restored.chain_head(), run.ledger.chain_head());
        let mut twin = Run { ledger: restored, now_ms: run.now_ms, requests: run.requests, sent: run.sent.clone(), prefetch: false };
        for op in &ops[split..] {
            let Some(cmd) = run.command(op) else { continue };
            twin.now_ms = run.now_ms;
            let a = run.send(cmd.clone(), Check::None);
            let b = twin.send(cmd, Check::None);
            prop_assert_eq!(a, b);
        }
        prop_assert!(twin.ledger == run.ledger);
        prop_assert_eq!(twin.ledger.chain_head(), run.ledger.chain_head());
    }

    /// Guarantee 5: two ledgers fed the same commands agree on answers, state, snapshot
    /// bytes and chain head (each hash map has its own random seed, so no iteration order
    /// may leak).
    #[test]
    fn two_ledgers_fed_the_same_commands_agree(ops in ops(1)) {
        let a = Run::replay(&ops, Check::None);
        let b = Run::replay(&ops, Check::None);
        prop_assert_eq!(&a.sent, &b.sent);
        prop_assert!(a.ledger == b.ledger);
        prop_assert_eq!(a.ledger.snapshot(), b.ledger.snapshot());
        prop_assert_eq!(a.ledger.chain_head(), b.ledger.chain_head());
    }

    /// Prefetching is only a hint: prefetching before every command (with commands of every
    /// kind, hostile ones included, as the upcoming ones) panics on none and changes no
    /// answer, no state, no snapshot byte and no chain head.
    #[test]
    fn prefetching_changes_no_answer(ops in ops(6)) {
        let plain = Run::replay(&ops, Check::None);
        let prefetching = Run::replay_with(&ops, Check::None, true);
        prop_assert_eq!(&plain.sent, &prefetching.sent);
        prop_assert!(plain.ledger == prefetching.ledger);
        prop_assert_eq!(plain.ledger.snapshot(), prefetching.ledger.snapshot());
        prop_assert_eq!(plain.ledger.chain_head(), prefetching.ledger.chain_head());
    }

    /// No input panics (huge amounts, empty and oversized ids, unknown reservations, other
    /// tenants' reservations, reused request ids), and the audit chain always verifies.
    #[test]
    fn no_input_panics_and_the_chain_verifies(ops in ops(6)) {
        let run = Run::replay(&ops, Check::None);
        prop_assert_eq!(run.ledger.verify_audit(), Ok(run.ledger.chain_head()));
        let records = run.ledger.audit(&AuditFilter::default());
        prop_assert_eq!(verify_chain(&records), Ok(run.ledger.chain_head()));
    }
}

// ---- leases held by client processes ---------------------------------------------------

/// What one client process does with its leases, as the Rust client would: it grants
/// calls locally inside a lease's slice until its local deadline, reports them at its
/// settles, and may crash (its lease is then never settled again and expires).
#[derive(Clone, Debug)]
enum ClientOp {
    Advance(u64),
    Ask {
        a: usize,
        want: Amounts,
        units: u32,
    },
    /// A call inside lease `k` (of those the client holds): `under` of its estimate unspent.
    Call {
        k: usize,
        estimate: Amounts,
        under: u64,
        fingerprint: Option<u8>,
    },
    Settle {
        k: usize,
        want: Amounts,
        units: u32,
    },
    Crash {
        k: usize,
    },
    /// A per-call reserve, committed at once at most its estimate.
    Reserve {
        a: usize,
        estimate: Amounts,
        under: u64,
    },
    Freeze {
        a: Option<usize>,
        frozen: bool,
    },
    /// The same limit put again: changes no counter, recalls every lease.
    PutLimitAgain,
}

fn client_amounts() -> impl Strategy<Value = Amounts> {
    (0u64..40, 0u64..40).prop_map(|(tokens, cost_micros)| Amounts {
        tokens,
        cost_micros,
        calls: 1,
    })
}

fn client_op() -> impl Strategy<Value = ClientOp> {
    prop_oneof![
        2 => (0u64..1_500).prop_map(ClientOp::Advance),
        3 => (0..3usize, client_amounts(), 0u32..3).prop_map(|(a, want, units)| ClientOp::Ask {
            a,
            want: Amounts { tokens: want.tokens * 5, cost_micros: want.cost_micros * 5, calls: 8 },
            units,
        }),
        8 => (any::<usize>(), client_amounts(), 0u64..10, proptest::option::of(0u8..2)).prop_map(
            |(k, estimate, under, fingerprint)| ClientOp::Call { k, estimate, under, fingerprint }
        ),
        3 => (any::<usize>(), client_amounts(), 0u32..3).prop_map(|(k, want, units)| {
            ClientOp::Settle {
                k,
                want: Amounts { tokens: want.tokens * 5, cost_micros: want.cost_micros * 5, calls: 8 },
                units,
            }
        }),
        1 => any::<usize>().prop_map(|k| ClientOp::Crash { k }),
        2 => (0..3usize, client_amounts(), 0u64..10)
            .prop_map(|(a, estimate, under)| ClientOp::Reserve { a, estimate, under }),
        1 => (proptest::option::of(0..3usize), any::<bool>())
            .prop_map(|(a, frozen)| ClientOp::Freeze { a, frozen }),
        1 => Just(ClientOp::PutLimitAgain),
    ]
}

/// A lease as its client holds it.
struct Held {
    id: ReservationId,
    /// What the client may still grant from.
    remaining: Amounts,
    /// The client stops granting here: receipt + TTL - margin.
    deadline_ms: u64,
    /// Calls decided since the last acknowledged settle.
    pending: Vec<LeaseCall>,
}

/// One tenant with leases on, its clients, and what they spent.
struct Clients {
    run: Run,
    held: Vec<Held>,
    /// Tokens of every call made (inside leases, reported or not, and per call).
    spent: u128,
    /// Tokens of every call reported by a settle, and of every per-call commit.
    reported: u128,
}

/// The limits the client runs meet: a lifetime tenant budget whose committed spend only
/// grows (what the checks compare), an hourly per-agent budget, a cost budget, a rate and
/// a concurrency limit.
fn client_limits() -> Vec<LimitSpec> {
    let spec = |id: &str, scope, dimension, kind| LimitSpec {
        id: limit_id(id),
        scope,
        dimension,
        kind,
        thresholds: Default::default(),
    };
    vec![
        spec(
            "life",
            Scope::Tenant,
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Lifetime,
                amount: 500,
            },
        ),
        spec(
            "hourly",
            Scope::EachAgent,
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Hour,
                amount: 400,
            },
        ),
        spec(
            "cost",
            Scope::ToolTenant(tool("llm")),
            Dimension::Cost,
            LimitKind::Budget {
                window: Window::Day,
                amount: 900,
            },
        ),
        spec(
            "rate",
            Scope::EachAgent,
            Dimension::Calls,
            LimitKind::Rate {
                amount: 5,
                period_ms: 1_000,
                burst: 20,
            },
        ),
        spec(
            "slots",
            Scope::EachAgent,
            Dimension::Concurrency,
            LimitKind::Concurrency { max: 3 },
        ),
    ]
}

fn under(amounts: &Amounts, by: u64) -> Amounts {
    Amounts {
        tokens: amounts.tokens.saturating_sub(by),
        cost_micros: amounts.cost_micros.saturating_sub(by),
        calls: amounts.calls,
    }
}

impl Clients {
    fn new() -> Self {
        let mut run = Run::new();
        // Runaway detection on, so reported calls trip agents.
        let cmd = Command::PutTenant {
            request_id: run.next_request(),
            tenant: tenant("t0"),
            policy: policy(false, true),
        };
        run.send(cmd, Check::None);
        for limit in client_limits() {
            let cmd = Command::PutLimit {
                request_id: run.next_request(),
                tenant: tenant("t0"),
                limit,
            };
            run.send(cmd, Check::None);
        }
        Clients {
            run,
            held: Vec::new(),
            spent: 0,
            reported: 0,
        }
    }

    fn send(&mut self, cmd: Command) -> Outcome {
        self.run.send(cmd, Check::None)
    }

    fn step(&mut self, op: &ClientOp) {
        match *op {
            ClientOp::Advance(ms) => {
                self.run.now_ms += ms;
                self.send(Command::Tick);
            }
            ClientOp::Ask { a, want, units } => self.ask(a, want, units),
            ClientOp::Call {
                k,
                estimate,
                under: by,
                ref fingerprint,
            } => {
                let now_ms = self.run.now_ms;
                let request_id = self.run.next_request();
                let Some(lease) = self.pick(k) else { return };
                let fits = !estimate.exceeds(&lease.remaining) && now_ms < lease.deadline_ms;
                if fits {
                    let actual = under(&estimate, by);
                    lease.remaining.tokens -= actual.tokens;
                    lease.remaining.cost_micros -= actual.cost_micros;
                    lease.remaining.calls -= actual.calls;
                    lease.pending.push(LeaseCall {
                        request_id,
                        estimate,
                        actual,
                        fingerprint: fingerprint.map(|f| format!("fp{f}")),
                        shape: None,
                    });
                    self.spent += u128::from(actual.tokens);
                }
            }
            ClientOp::Settle { k, want, units } => self.settle(k, want, units),
            ClientOp::Crash { k } => {
                if !self.held.is_empty() {
                    let k = k % self.held.len();
                    self.held.swap_remove(k);
                }
            }
            ClientOp::Reserve {
                a,
                estimate,
                under: by,
            } => self.reserve(a, estimate, by),
            ClientOp::Freeze { a, frozen } => {
                let request_id = self.run.next_request();
                let (tenant, agent) = (tenant("t0"), a.map(|a| agent(AGENTS[a])));
                let cmd = if frozen {
                    Command::Freeze {
                        request_id,
                        tenant,
                        agent,
                    }
                } else {
                    Command::Unfreeze {
                        request_id,
                        tenant,
                        agent,
                    }
                };
                self.send(cmd);
            }
            ClientOp::PutLimitAgain => {
                let limit = client_limits().swap_remove(0);
                let cmd = Command::PutLimit {
                    request_id: self.run.next_request(),
                    tenant: tenant("t0"),
                    limit,
                };
                self.send(cmd);
            }
        }
    }

    fn pick(&mut self, k: usize) -> Option<&mut Held> {
        let len = self.held.len();
        (len > 0).then(|| &mut self.held[k % len])
    }

    fn ask(&mut self, a: usize, want: Amounts, units: u32) {
        let cmd = Command::Lease {
            request_id: self.run.next_request(),
            tenant: tenant("t0"),
            agent: agent(AGENTS[a]),
            tool: tool("llm"),
            want,
            units,
            floor: Amounts {
                tokens: 1,
                cost_micros: 1,
                calls: 1,
            },
            ttl_ms: 0,
        };
        if let Outcome::Leased(terms) = self.send(cmd) {
            self.held.push(Held {
                id: terms.lease_id,
                remaining: terms.slice,
                deadline_ms: self.run.now_ms + LEASE_TTL_MS_DEFAULT - LEASE_MARGIN_MS,
                pending: Vec::new(),
            });
        }
    }

    fn settle(&mut self, k: usize, want: Amounts, units: u32) {
        if self.held.is_empty() {
            return;
        }
        let k = k % self.held.len();
        let request_id = self.run.next_request();
        let lease = &mut self.held[k];
        let calls = std::mem::take(&mut lease.pending);
        let reported: u128 = calls.iter().map(|c| u128::from(c.actual.tokens)).sum();
        let cmd = Command::Settle {
            request_id,
            tenant: tenant("t0"),
            lease_id: lease.id,
            calls,
            want,
            units,
            ttl_ms: 0,
            keep: Amounts::default(),
            keep_units: 0,
        };
        let outcome = self.send(cmd);
        self.reported += reported;
        match outcome {
            Outcome::Settled {
                lease: Some(terms), ..
            } => {
                let lease = &mut self.held[k];
                lease.remaining = terms.slice;
                lease.deadline_ms = self.run.now_ms + LEASE_TTL_MS_DEFAULT - LEASE_MARGIN_MS;
            }
            Outcome::Settled { lease: None, .. } => {
                self.held.swap_remove(k);
            }
            other => panic!("a settle of a lease its client holds answered {other:?}"),
        }
    }

    fn reserve(&mut self, a: usize, estimate: Amounts, by: u64) {
        let cmd = Command::Reserve {
            request_id: self.run.next_request(),
            tenant: tenant("t0"),
            agent: agent(AGENTS[a]),
            tool: tool("llm"),
            estimate,
            ttl_ms: 1_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        };
        if let Outcome::Granted { reservation_id, .. } = self.send(cmd) {
            let actual = under(&estimate, by);
            let cmd = Command::Commit {
                request_id: self.run.next_request(),
                tenant: tenant("t0"),
                reservation_id,
                actual,
                abandoned: false,
                usage: None,
            };
            if let Outcome::Committed { .. } = self.send(cmd) {
                self.spent += u128::from(actual.tokens);
                self.reported += u128::from(actual.tokens);
            }
        }
    }

    /// Committed spend of the lifetime budget: every charge of the tenant in tokens.
    fn charged(&self) -> u128 {
        let usage = self.run.ledger.usage(&tenant("t0"), None, None).unwrap();
        let life = usage
            .iter()
            .find(|u| u.limit.id.as_str() == "life")
            .unwrap();
        u128::from(life.used)
    }

    /// No call's actual exceeded its estimate nor its lease's slice, so every budget holds:
    /// committed + held <= amount, for the tenant and each agent; and everything reported
    /// was charged.
    fn check(&self) {
        let t = tenant("t0");
        let mut rows = self.run.ledger.usage(&t, None, None).unwrap();
        for who in AGENTS {
            rows.extend(self.run.ledger.usage(&t, Some(&agent(who)), None).unwrap());
        }
        for u in rows {
            if let LimitKind::Budget { amount, .. } = u.limit.kind {
                assert!(
                    u128::from(u.used) + u128::from(u.held) <= u128::from(amount),
                    "{} past its budget: {u:?}",
                    u.limit.id
                );
            }
        }
        assert!(
            self.charged() >= self.reported,
            "charged {} < reported {}",
            self.charged(),
            self.reported
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases()))]

    /// Leases held by clients that call inside their slices, settle, and crash: every
    /// budget holds at every step, everything reported is charged (a call reported after
    /// its lease expired was paid for by the expiry), and once every lease has ended, the
    /// ledger charged at least everything the clients spent, reported or not.
    #[test]
    fn leases_keep_every_budget_and_charge_every_call_whatever_the_clients_do(
        ops in proptest::collection::vec(client_op(), 1..OPS_MAX * 2)
    ) {
        let mut clients = Clients::new();
        for op in &ops {
            clients.step(op);
            clients.check();
        }
        clients.run.now_ms += LEASE_TTL_MS_MAX + LEASE_GRACE_MS;
        clients.send(Command::Tick);
        prop_assert_eq!(clients.run.ledger.leases_on(&tenant("t0"), None), 0);
        prop_assert!(clients.charged() >= clients.spent, "charged {} < spent {}", clients.charged(), clients.spent);
        clients.check();
    }
}
