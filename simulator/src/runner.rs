//! Runs one scenario against a cluster: sets up tenants and limits, drives the agents'
//! workers step by step through the real `tollgate-client`, injects faults, records every
//! operation in a history, then collects the audit trail and final usage.
//!
//! Time: with the embedded cluster every node shares one `Clock::shifted()`. After each step
//! the simulator advances it by `step_ms`, so the next entry the leader proposes (a call,
//! or a tick every `TICK_INTERVAL`) carries the new time: hours of agent behaviour run in
//! seconds. Against `--cluster` there is no clock to move; scenarios that need one are
//! refused and time-dependent expectations are skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate_client::v1::reserve_response::Decision;
use tollgate_client::{v1, Amounts, Client, ClientConfig, Error};
use tollgate_ledger::AuditRecord;
use tollgate_server::clock::Clock;
use tollgate_server::local_cluster::{LocalCluster, LocalClusterOptions};

use crate::history::{Event, Op, OpResult, Recorder};

mod leased;
use crate::scenario::{AgentSpec, Expiry, FaultKind, FingerprintMode, Role, Scenario};

/// The embedded cluster's tick: expiries and window resets happen on the next entry, so a
/// short tick lets them happen promptly after the clock moves.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// How long the simulator waits for a leader, or for the cluster to settle after a run.
pub const SETTLE_WAIT: Duration = Duration::from_secs(20);
/// A client's deadline per operation: longer than any election here, so a failover is
/// retried through rather than reported as unavailable.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(20);
/// Nodes of the embedded cluster.
pub const EMBEDDED_NODES: u64 = 3;
/// Interval between polls while waiting for the cluster to settle (no event to wait on
/// from outside the cluster).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A worker sends an operation whose answer was ambiguous (no answer, or an error that may
/// hide an applied request) again, with the same request id, this many more times: what a
/// worker runtime does, and a check that the retry is answered with the first result.
pub const AMBIGUOUS_RETRIES_MAX: u32 = 2;
/// Each fault moves by up to this many steps either way, by the seed.
pub const FAULT_JITTER_STEPS: u64 = 2;
/// Each step's clock advance varies by up to this percentage either way, by the seed.
pub const STEP_JITTER_PCT: u64 = 5;

/// What a reserve call came to, from the simulator's point of view.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CallOutcome {
    Granted,
    DeniedByLimit(String),
    Frozen,
    Tripped,
    /// Rejected, or no answer within the deadline.
    Failed(String),
}

/// One reserve call, with what the history does not carry (agent role, fingerprint).
#[derive(Clone, Debug)]
pub struct CallNote {
    pub agent: String,
    pub role: Role,
    pub fingerprint: Option<String>,
    /// The reserve's request id: its decision's place in the audit trail.
    pub request_id: String,
    pub invoked_ms: u64,
    pub outcome: CallOutcome,
}

/// Everything a run produced, for the expectations, the report and the chart.
pub struct RunOutput {
    /// Simulated time of step 0.
    pub start_ms: u64,
    pub end_ms: u64,
    pub events: Vec<Event>,
    pub notes: Vec<CallNote>,
    pub audit: Vec<AuditRecord>,
    /// Tenant-scope usage at the end, by (tenant, limit id).
    pub usage: BTreeMap<(String, String), v1::LimitUsage>,
    /// Whether the simulator controlled time (embedded cluster).
    pub time_controlled: bool,
    /// The tenant name prefix used on the cluster (empty on the embedded one).
    pub tenant_prefix: String,
    pub audit_chain_error: Option<String>,
    /// The faults injected, each with the simulated ms since step 0 at which it was.
    pub faults: Vec<(u64, FaultKind)>,
}

/// Where the scenario runs.
pub enum Target {
    /// A fresh three-node cluster in this process, on a shifted clock.
    Embedded,
    /// An existing deployment.
    External {
        endpoints: Vec<String>,
        token: Option<String>,
    },
}

struct Cluster {
    local: Option<(LocalCluster, tempfile::TempDir)>,
    clock: Clock,
    client: Client,
    isolated: Vec<u64>,
}

impl Cluster {
    async fn start(target: &Target) -> anyhow::Result<Cluster> {
        match target {
            Target::Embedded => {
                let dir = tempfile::tempdir().context("creating a data directory")?;
                let mut options = LocalClusterOptions::new(EMBEDDED_NODES, dir.path().into());
                options.fast_elections = true;
                options.clock = Clock::shifted();
                options.tick_interval = TICK_INTERVAL;
                let clock = options.clock.clone();
                let cluster = LocalCluster::start(options).await?;
                cluster.leader(SETTLE_WAIT).await?;
                let mut config = ClientConfig::new(cluster.endpoints());
                config.deadline = CLIENT_DEADLINE;
                let client = Client::new(config)?;
                Ok(Cluster {
                    local: Some((cluster, dir)),
                    clock,
                    client,
                    isolated: Vec::new(),
                })
            }
            Target::External { endpoints, token } => {
                let mut config = ClientConfig::new(endpoints.clone());
                config.token = token.clone();
                // A secured deployment: its CA from TOLLGATE_TLS_CA.
                config.tls = tollgate_client::TlsConfig::from_env()?;
                config.deadline = CLIENT_DEADLINE;
                Ok(Cluster {
                    local: None,
                    clock: Clock::system(),
                    client: Client::new(config)?,
                    isolated: Vec::new(),
                })
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn fault(&mut self, kind: FaultKind) -> anyhow::Result<()> {
        let Some((cluster, _)) = self.local.as_mut() else {
            bail!("faults need the embedded cluster");
        };
        match kind {
            FaultKind::KillLeader => {
                let leader = cluster.leader(SETTLE_WAIT).await?;
                cluster.stop(leader).await;
            }
            FaultKind::RestartKilled => {
                for id in cluster.ids() {
                    if !cluster.running_ids().contains(&id) {
                        cluster.restart(id).await?;
                    }
                }
            }
            FaultKind::IsolateLeader => {
                let leader = cluster.leader(SETTLE_WAIT).await?;
                cluster.isolate(leader);
                self.isolated.push(leader);
            }
            FaultKind::IsolateFollower => {
                let leader = cluster.leader(SETTLE_WAIT).await?;
                let follower = cluster
                    .running_ids()
                    .into_iter()
                    .find(|id| *id != leader && !self.isolated.contains(id))
                    .context("no follower left to isolate")?;
                cluster.isolate(follower);
                self.isolated.push(follower);
            }
            FaultKind::HealAll => {
                for id in self.isolated.drain(..) {
                    cluster.heal(id);
                }
            }
        }
        Ok(())
    }

    async fn shutdown(self) {
        if let Some((cluster, _dir)) = self.local {
            cluster.shutdown().await;
        }
    }
}

/// One worker of one agent: its own RNG (from the seed), the calls it still has to
/// commit, and whether it gave up.
struct Worker {
    /// The client id in the history.
    id: u64,
    agent: usize,
    name: String,
    role: Role,
    rng: StdRng,
    /// Granted calls still running: (step at which they commit, reservation id, estimate).
    running: Vec<(u64, u64, Amounts)>,
    denials_in_row: u64,
    gave_up: bool,
    calls_made: u64,
}

/// The simulated clients, shared read-only by the workers of one step.
#[derive(Clone)]
struct Io {
    client: Client,
    clock: Clock,
    recorder: Recorder,
    tenant_prefix: String,
    /// The scenario's tenants whose policy lends leases: their agents reserve through the
    /// client's own `reserve`, which decides inside a lease when it can.
    leased: std::sync::Arc<Vec<String>>,
}

impl Io {
    fn tenant(&self, name: &str) -> String {
        format!("{}{name}", self.tenant_prefix)
    }
}

fn new_request_id(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// Runs a scenario with one seed.
pub async fn run(scenario: &Scenario, seed: u64, target: &Target) -> anyhow::Result<RunOutput> {
    let time_controlled = matches!(target, Target::Embedded);
    if !time_controlled {
        if scenario.needs_time_control() {
            bail!(
                "scenario {} needs a controllable clock ({} ms of simulated time, expiries or calendar windows) and cannot run against --cluster; run it against the embedded cluster (no --cluster)",
                scenario.name,
                scenario.span_ms()
            );
        }
        if !scenario.faults.is_empty() {
            bail!(
                "scenario {} injects faults (kills, partitions), which only the embedded cluster allows",
                scenario.name
            );
        }
    }
    let mut cluster = Cluster::start(target).await?;
    let outcome = drive(scenario, seed, &mut cluster).await;
    cluster.shutdown().await;
    outcome
}

type Notes = std::sync::Arc<std::sync::Mutex<Vec<CallNote>>>;

async fn drive(scenario: &Scenario, seed: u64, cluster: &mut Cluster) -> anyhow::Result<RunOutput> {
    let time_controlled = cluster.local.is_some();
    let mut rng = StdRng::seed_from_u64(seed);
    let tenant_prefix = if time_controlled {
        String::new()
    } else {
        format!("sim-{seed}-{:08x}-", rng.random::<u32>())
    };
    let io = Io {
        client: cluster.client.clone(),
        clock: cluster.clock.clone(),
        recorder: Recorder::new(),
        tenant_prefix,
        leased: std::sync::Arc::new(
            scenario
                .tenants
                .iter()
                .filter(|t| t.leases)
                .map(|t| t.name.clone())
                .collect(),
        ),
    };
    setup(scenario, &io).await?;
    if time_controlled {
        move_to_start_of_day(scenario, cluster);
    }
    let start_ms = cluster.now_ms();

    let mut workers = spawn_workers(scenario, seed);
    let faults = schedule_faults(scenario, &mut rng);
    let notes = Notes::default();
    let injected = run_steps(
        scenario,
        cluster,
        &io,
        &mut workers,
        &faults,
        &notes,
        &mut rng,
    )
    .await?;
    finish_running_calls(scenario, &io, &mut workers).await;
    // Heal and restart, so the trail and usage can be read from a whole cluster.
    if time_controlled {
        cluster.fault(FaultKind::HealAll).await?;
        cluster.fault(FaultKind::RestartKilled).await?;
    }
    let end_ms = cluster.now_ms();
    settle(scenario, cluster, &io).await?;

    let usage = read_usage(scenario, &io).await?;
    let (audit, audit_chain_error) = read_audit(scenario, &io).await?;
    let notes = std::mem::take(&mut *lock(&notes));
    let events = io.recorder.clone().into_events();
    Ok(RunOutput {
        start_ms,
        end_ms,
        events,
        notes,
        audit: audit
            .into_iter()
            .map(|r| strip_record_prefix(r, &io.tenant_prefix))
            .collect(),
        usage,
        time_controlled,
        tenant_prefix: io.tenant_prefix.clone(),
        audit_chain_error,
        faults: injected
            .into_iter()
            .map(|(at_ms, kind)| (at_ms.saturating_sub(start_ms), kind))
            .collect(),
    })
}

/// Starts step 0 at the scenario's time of day, so calendar windows fall where it says.
fn move_to_start_of_day(scenario: &Scenario, cluster: &Cluster) {
    let now = cluster.now_ms();
    let day = 86_400_000;
    let next = (now / day + 1) * day + scenario.start_of_day_ms;
    cluster.clock.advance_ms(next - now);
}

/// Every worker of every agent, each with its own RNG from the seed.
fn spawn_workers(scenario: &Scenario, seed: u64) -> Vec<Worker> {
    let mut workers = Vec::new();
    for (index, spec) in scenario.agents.iter().enumerate() {
        for name in spec.names() {
            for w in 0..spec.workers {
                workers.push(Worker {
                    id: workers.len() as u64,
                    agent: index,
                    name: name.clone(),
                    role: spec.role,
                    rng: StdRng::seed_from_u64(seed ^ mix(index as u64, w, &name)),
                    running: Vec::new(),
                    denials_in_row: 0,
                    gave_up: false,
                    calls_made: 0,
                });
            }
        }
    }
    workers
}

/// Randomised fault timing: each fault moves by up to two steps either way (seeded).
fn schedule_faults(scenario: &Scenario, rng: &mut StdRng) -> Vec<(u64, FaultKind)> {
    let mut faults: Vec<(u64, FaultKind)> = scenario
        .faults
        .iter()
        .map(|f| {
            let at = (f.at_step + rng.random_range(0..=FAULT_JITTER_STEPS * 2))
                .saturating_sub(FAULT_JITTER_STEPS)
                .min(scenario.steps - 1);
            (at, f.kind)
        })
        .collect();
    faults.sort_by_key(|f| f.0);
    faults
}

/// Step by step: the faults due, every worker's calls, then the clock moves on. Returns the
/// faults injected, each with the cluster's time at which it was.
async fn run_steps(
    scenario: &Scenario,
    cluster: &mut Cluster,
    io: &Io,
    workers: &mut Vec<Worker>,
    faults: &[(u64, FaultKind)],
    notes: &Notes,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<(u64, FaultKind)>> {
    let mut fanout_pending: BTreeMap<String, u64> = BTreeMap::new();
    let mut injected = Vec::new();
    for step in 0..scenario.steps {
        for (_, kind) in faults.iter().filter(|(at, _)| *at == step) {
            injected.push((cluster.now_ms(), *kind));
            cluster.fault(*kind).await?;
        }
        fanout_pending = run_step(scenario, io, workers, &fanout_pending, step, notes).await?;
        if !will_call_again(scenario, workers, &fanout_pending, step) {
            break;
        }
        if cluster.local.is_some() {
            let pct = rng.random_range(100 - STEP_JITTER_PCT..=100 + STEP_JITTER_PCT);
            cluster.clock.advance_ms(scenario.step_ms * pct / 100);
        }
    }
    Ok(injected)
}

/// All workers' calls of one step, concurrently; returns the fan-out sub-calls each agent
/// owes the next step.
async fn run_step(
    scenario: &Scenario,
    io: &Io,
    workers: &mut Vec<Worker>,
    fanout_pending: &BTreeMap<String, u64>,
    step: u64,
    notes: &Notes,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let calls = calls_per_worker(scenario, workers, fanout_pending, step);
    let mut set = tokio::task::JoinSet::new();
    for (mut worker, calls) in std::mem::take(workers).into_iter().zip(calls) {
        let spec = scenario.agents[worker.agent].clone();
        let io = io.clone();
        let notes = notes.clone();
        set.spawn(async move {
            let granted = worker_step(&io, &spec, &mut worker, step, calls, &notes).await;
            (worker, granted)
        });
    }
    let mut fanout_next: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        let (worker, granted) = joined.context("a worker task panicked")?;
        let spec = &scenario.agents[worker.agent];
        if spec.fanout > 0 {
            *fanout_next.entry(worker.name.clone()).or_default() +=
                granted.saturating_mul(spec.fanout);
        }
        workers.push(worker);
    }
    workers.sort_by(|a, b| (a.agent, &a.name).cmp(&(b.agent, &b.name)));
    Ok(fanout_next)
}

/// Calls per worker this step, in the order of `workers`: the agent's base calls plus
/// fan-out sub-calls, spread over its workers, within `calls_max`.
fn calls_per_worker(
    scenario: &Scenario,
    workers: &[Worker],
    fanout_pending: &BTreeMap<String, u64>,
    step: u64,
) -> Vec<u64> {
    // Keyed by spec and name: two specs may give one agent two patterns (e.g. phases).
    let mut agent_calls: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    let mut made: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    for worker in workers {
        let spec = &scenario.agents[worker.agent];
        let name = (worker.agent, worker.name.as_str());
        agent_calls.entry(name).or_insert_with(|| {
            base_calls(spec, step)
                .saturating_add(fanout_pending.get(&worker.name).copied().unwrap_or(0))
        });
        *made.entry(name).or_default() += worker.calls_made;
    }
    let mut index_in_agent: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    workers
        .iter()
        .map(|worker| {
            let spec = &scenario.agents[worker.agent];
            let name = (worker.agent, worker.name.as_str());
            let position = index_in_agent.entry(name).or_default();
            let total = agent_calls[&name]
                .min(crate::scenario::CALLS_PER_STEP_MAX)
                .min(spec.calls_max.saturating_sub(made[&name]));
            // Round robin: worker i takes calls i, i + workers, ...
            let calls = total / spec.workers + u64::from(*position < total % spec.workers);
            *position += 1;
            calls
        })
        .collect()
}

/// Calls still running when the steps end finish now.
async fn finish_running_calls(scenario: &Scenario, io: &Io, workers: &mut [Worker]) {
    for worker in workers {
        let spec = scenario.agents[worker.agent].clone();
        let running = std::mem::take(&mut worker.running);
        for (_, reservation_id, estimate) in running {
            commit(io, &spec, worker, reservation_id, estimate).await;
        }
    }
    if !io.leased.is_empty() {
        // Settles every call decided in a lease and gives the rest back, so the trail and
        // usage read next hold all of them.
        io.client.return_leases().await;
    }
}

/// Each tenant-wide limit's usage at the end, by (tenant, limit id).
async fn read_usage(
    scenario: &Scenario,
    io: &Io,
) -> anyhow::Result<BTreeMap<(String, String), v1::LimitUsage>> {
    let mut usage = BTreeMap::new();
    for tenant in &scenario.tenants {
        let response = io
            .client
            .usage(&io.tenant(&tenant.name), None, None)
            .await
            .with_context(|| format!("reading the usage of tenant {}", tenant.name))?;
        for limit_usage in response.usage {
            let Some(limit) = &limit_usage.limit else {
                continue;
            };
            if limit_usage.agent.is_empty() {
                usage.insert((tenant.name.clone(), limit.id.clone()), limit_usage.clone());
            }
        }
    }
    Ok(usage)
}

fn mix(a: u64, b: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain(a.to_le_bytes()).chain(b.to_le_bytes()) {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether any worker has anything left to do after `step`: calls still running, fan-out
/// sub-calls, or a due step ahead without having given up or used up `calls_max`. The run
/// ends early otherwise: empty steps prove nothing and cost time.
fn will_call_again(
    scenario: &Scenario,
    workers: &[Worker],
    fanout_pending: &BTreeMap<String, u64>,
    step: u64,
) -> bool {
    if fanout_pending.values().any(|n| *n > 0) || workers.iter().any(|w| !w.running.is_empty()) {
        return true;
    }
    let mut made: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    for worker in workers {
        *made.entry((worker.agent, &worker.name)).or_default() += worker.calls_made;
    }
    workers.iter().any(|worker| {
        let spec = &scenario.agents[worker.agent];
        !worker.gave_up
            && made[&(worker.agent, worker.name.as_str())] < spec.calls_max
            && next_due(spec, step).is_some_and(|due| due < scenario.steps)
    })
}

/// The first step after `step` in which the agent makes its base calls.
fn next_due(spec: &AgentSpec, step: u64) -> Option<u64> {
    let due = if step < spec.from_step {
        spec.from_step
    } else {
        let rounds = (step - spec.from_step) / spec.every_steps + 1;
        spec.from_step
            .checked_add(rounds.checked_mul(spec.every_steps)?)?
    };
    (due <= spec.until_step).then_some(due)
}

/// Calls the agent makes this step before fan-out (all workers together).
fn base_calls(spec: &AgentSpec, step: u64) -> u64 {
    let due = step >= spec.from_step
        && step <= spec.until_step
        && (step - spec.from_step).is_multiple_of(spec.every_steps);
    if due {
        spec.workers * spec.calls_per_step
    } else {
        0
    }
}

/// Tenants, limits and prefilled spend.
async fn setup(scenario: &Scenario, io: &Io) -> anyhow::Result<()> {
    for tenant in &scenario.tenants {
        let policy = v1::TenantPolicy {
            expiry: match tenant.expiry {
                Expiry::Charge => v1::ExpiryPolicy::Charge,
                Expiry::Release => v1::ExpiryPolicy::Release,
            }
            .into(),
            repeat_max: tenant.repeat_max,
            repeat_window_ms: tenant.repeat_window_ms,
            velocity_factor: tenant.velocity_factor,
            velocity_window_ms: tenant.velocity_window_ms,
            velocity_dimension: match tenant.velocity_dimension {
                crate::scenario::DimensionToml::Tokens => v1::Dimension::Tokens,
                crate::scenario::DimensionToml::Cost => v1::Dimension::Cost,
                crate::scenario::DimensionToml::Calls => v1::Dimension::Calls,
                crate::scenario::DimensionToml::Concurrency => v1::Dimension::Concurrency,
            }
            .into(),
            velocity_floor: tenant.velocity_floor,
            trip_cooldown_ms: tenant.trip_cooldown_ms,
            quotas: None,
            shape_floor: tollgate_ledger::SHAPE_FLOOR_DEFAULT,
            leases: tenant.leases,
        };
        io.client
            .put_tenant(&io.tenant(&tenant.name), Some(policy))
            .await
            .with_context(|| format!("creating tenant {}", tenant.name))?;
    }
    for limit in &scenario.limits {
        io.client
            .put_limit(&io.tenant(&limit.tenant), limit.to_wire()?)
            .await
            .with_context(|| format!("setting limit {}", limit.id))?;
    }
    let mut rng = StdRng::seed_from_u64(0);
    for prefill in &scenario.prefill {
        let op = Op::Record {
            tenant: prefill.tenant.clone(),
            agent: prefill.agent.clone(),
            tool: prefill.tool.clone(),
            tokens: prefill.tokens,
            cost_micros: prefill.cost_micros,
            calls: prefill.calls,
        };
        record(io, u64::MAX, op, &new_request_id(&mut rng))
            .await
            .context("prefilling spend")?;
    }
    Ok(())
}

/// A record operation, in the history.
async fn record(io: &Io, client_id: u64, op: Op, request_id: &str) -> anyhow::Result<()> {
    let Op::Record {
        tenant,
        agent,
        tool,
        tokens,
        cost_micros,
        calls,
    } = &op
    else {
        bail!("not a record");
    };
    let invoked_ms = io.clock.now_ms();
    let answer = io
        .client
        .record_with_id(
            request_id.to_owned(),
            &io.tenant(tenant),
            agent,
            tool,
            Amounts::new(*tokens, *cost_micros, *calls),
        )
        .await;
    let result = match &answer {
        Ok(applied) => OpResult::Done {
            log_index: applied.log_index,
        },
        Err(error) => error_result(error),
    };
    io.recorder.record(Event {
        client: client_id,
        request_id: request_id.to_owned(),
        op,
        invoked_ms,
        completed_ms: io.clock.now_ms().max(invoked_ms),
        result,
    });
    answer.map(|_| ()).map_err(Into::into)
}

/// Definite refusals are `Rejected`; anything that may have taken effect is `Ambiguous`.
fn error_result(error: &Error) -> OpResult {
    let rejected = |code: &str, message: &str| OpResult::Rejected {
        code: code.into(),
        message: message.into(),
    };
    match error {
        Error::Invalid(m) => rejected("INVALID_ARGUMENT", m),
        Error::NotFound(m) => rejected("NOT_FOUND", m),
        Error::PermissionDenied(m) => rejected("PERMISSION_DENIED", m),
        Error::FailedPrecondition(m) => rejected("FAILED_PRECONDITION", m),
        Error::Exhausted(m) => rejected("RESOURCE_EXHAUSTED", m),
        Error::RequestIdReused(m) => rejected("ALREADY_EXISTS", m),
        other => OpResult::Ambiguous {
            error: other.to_string(),
        },
    }
}

/// One worker's calls in one step: commits of calls that finish now, then `calls` reserves.
/// Returns how many were granted (for fan-out).
async fn worker_step(
    io: &Io,
    spec: &AgentSpec,
    worker: &mut Worker,
    step: u64,
    calls: u64,
    notes: &std::sync::Mutex<Vec<CallNote>>,
) -> u64 {
    commit_due(io, spec, worker, step).await;
    let mut granted = 0;
    for _ in 0..calls {
        if worker.gave_up {
            break;
        }
        worker.calls_made += 1;
        let call = ReserveCall::new(io, spec, worker);
        if io.leased.contains(&spec.tenant) {
            granted += u64::from(leased::call(io, spec, worker, call, notes).await);
            continue;
        }
        let answer = reserve_with_retries(io, worker.id, &call).await;
        lock(notes).push(CallNote {
            agent: worker.name.clone(),
            role: worker.role,
            fingerprint: call.fingerprint,
            request_id: call.request_id,
            invoked_ms: answer.first_invoked_ms,
            outcome: answer.outcome,
        });
        let Some(reservation_id) = answer.reservation else {
            note_denial(spec, worker);
            continue;
        };
        worker.denials_in_row = 0;
        granted += 1;
        if spec.die_pct > 0 && worker.rng.random_range(0..100) < spec.die_pct {
            // The worker dies mid-call: nobody commits or releases; the hold expires.
            continue;
        }
        if spec.call_steps > 0 {
            let until = step + spec.call_steps;
            worker.running.push((until, reservation_id, call.estimate));
        } else {
            commit(io, spec, worker, reservation_id, call.estimate).await;
        }
    }
    granted
}

/// Commits the worker's running calls that finish at or before `step`.
async fn commit_due(io: &Io, spec: &AgentSpec, worker: &mut Worker, step: u64) {
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut worker.running)
        .into_iter()
        .partition(|(at, _, _)| *at <= step);
    worker.running = later;
    for (_, reservation_id, estimate) in due {
        commit(io, spec, worker, reservation_id, estimate).await;
    }
}

/// A denied or failed call: the worker gives up after `give_up_after_denials` in a row.
fn note_denial(spec: &AgentSpec, worker: &mut Worker) {
    worker.denials_in_row += 1;
    if spec.give_up_after_denials > 0 && worker.denials_in_row >= spec.give_up_after_denials {
        worker.gave_up = true;
    }
}

/// One reserve call as the history records it and as it goes on the wire.
struct ReserveCall {
    estimate: Amounts,
    fingerprint: Option<String>,
    request_id: String,
    op: Op,
    wire: v1::ReserveRequest,
}

impl ReserveCall {
    /// Draws the fingerprint, then the request id, from the worker's RNG (in that order,
    /// so a seed replays the same calls).
    fn new(io: &Io, spec: &AgentSpec, worker: &mut Worker) -> Self {
        let estimate = Amounts::new(spec.tokens, spec.cost_micros, spec.calls);
        let fingerprint = match spec.fingerprint {
            FingerprintMode::None => None,
            FingerprintMode::Same => Some(format!("{}:{}:same-args", worker.name, spec.tool)),
            FingerprintMode::Unique => Some(format!("{:016x}", worker.rng.random::<u64>())),
            FingerprintMode::PageCounter => {
                let args = serde_json::json!({"query": "same", "page": worker.calls_made});
                tollgate_client::fingerprint_ignoring(&spec.tool, &args, &["page"]).ok()
            }
        };
        let request_id = new_request_id(&mut worker.rng);
        let op = Op::Reserve {
            tenant: spec.tenant.clone(),
            agent: worker.name.clone(),
            tool: spec.tool.clone(),
            tokens: estimate.tokens,
            cost_micros: estimate.cost_micros,
            calls: estimate.calls,
            ttl_ms: spec.ttl_ms,
        };
        let wire = v1::ReserveRequest {
            request_id: request_id.clone(),
            tenant: io.tenant(&spec.tenant),
            agent: worker.name.clone(),
            tool: spec.tool.clone(),
            estimate: Some(estimate.into()),
            ttl_ms: spec.ttl_ms,
            fingerprint: fingerprint.clone().unwrap_or_default(),
            usage: None,
            session: spec.session.clone().unwrap_or_default(),
            shape: String::new(),
        };
        ReserveCall {
            estimate,
            fingerprint,
            request_id,
            op,
            wire,
        }
    }
}

/// What a reserve call came to after its retries.
struct ReserveAnswer {
    first_invoked_ms: u64,
    outcome: CallOutcome,
    reservation: Option<u64>,
}

/// Sends the reserve, and again with the same request id while the answer is ambiguous
/// (up to `AMBIGUOUS_RETRIES_MAX` more times); every attempt goes in the history.
async fn reserve_with_retries(io: &Io, client_id: u64, call: &ReserveCall) -> ReserveAnswer {
    let first_invoked_ms = io.clock.now_ms();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let invoked_ms = io.clock.now_ms();
        let answer = io
            .client
            .call(|rpc| {
                let wire = call.wire.clone();
                async move { rpc.tollgate().reserve(wire).await }
            })
            .await;
        let completed_ms = io.clock.now_ms().max(invoked_ms);
        let (result, outcome, reservation) = match answer {
            Ok(response) => reserve_result(response),
            Err(error) => (
                error_result(&error),
                CallOutcome::Failed(error.to_string()),
                None,
            ),
        };
        let ambiguous = matches!(result, OpResult::Ambiguous { .. });
        io.recorder.record(Event {
            client: client_id,
            request_id: call.request_id.clone(),
            op: call.op.clone(),
            invoked_ms,
            completed_ms,
            result,
        });
        if !ambiguous || attempt > AMBIGUOUS_RETRIES_MAX {
            return ReserveAnswer {
                first_invoked_ms,
                outcome,
                reservation,
            };
        }
    }
}

/// A reserve's answer as the history records it, as the simulator counts it, and the
/// reservation id when granted.
fn reserve_result(response: v1::ReserveResponse) -> (OpResult, CallOutcome, Option<u64>) {
    let log_index = response.applied.map_or(0, |a| a.log_index);
    let denied = |reason: String, outcome: CallOutcome| {
        (OpResult::Denied { reason, log_index }, outcome, None)
    };
    match response.decision {
        Some(Decision::Granted(g)) => (
            OpResult::Granted {
                reservation_id: g.reservation_id,
                log_index,
            },
            CallOutcome::Granted,
            Some(g.reservation_id),
        ),
        Some(Decision::Denied(d)) => denied(
            format!("limit {}", d.limit_id),
            CallOutcome::DeniedByLimit(d.limit_id),
        ),
        Some(Decision::Frozen(_)) => denied("frozen".into(), CallOutcome::Frozen),
        Some(Decision::Tripped(_)) => denied("tripped".into(), CallOutcome::Tripped),
        None => (
            OpResult::Ambiguous {
                error: "reserve answered without a decision".into(),
            },
            CallOutcome::Failed("no decision".into()),
            None,
        ),
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Commits the actual spend of a granted call (`actual_pct` of the estimate).
async fn commit(
    io: &Io,
    spec: &AgentSpec,
    worker: &mut Worker,
    reservation_id: u64,
    estimate: Amounts,
) {
    let scale = |v: u64| v.saturating_mul(spec.actual_pct) / 100;
    let actual = Amounts::new(
        scale(estimate.tokens),
        scale(estimate.cost_micros),
        estimate.calls,
    );
    let request_id = new_request_id(&mut worker.rng);
    for attempt in 0..=AMBIGUOUS_RETRIES_MAX {
        let invoked_ms = io.clock.now_ms();
        let answer = io
            .client
            .commit_reservation(
                request_id.clone(),
                &io.tenant(&spec.tenant),
                reservation_id,
                actual,
            )
            .await;
        let result = match &answer {
            Ok(info) => OpResult::Done {
                log_index: info.applied.map_or(0, |a| a.log_index),
            },
            Err(error) => error_result(error),
        };
        let ambiguous = matches!(result, OpResult::Ambiguous { .. });
        io.recorder.record(Event {
            client: worker.id,
            request_id: request_id.clone(),
            op: Op::Commit {
                tenant: spec.tenant.clone(),
                reservation_id,
                tokens: actual.tokens,
                cost_micros: actual.cost_micros,
                calls: actual.calls,
            },
            invoked_ms,
            completed_ms: io.clock.now_ms().max(invoked_ms),
            result,
        });
        if !ambiguous {
            break;
        }
        tracing::debug!(
            attempt,
            reservation_id,
            "commit ambiguous, retrying with the same request id"
        );
    }
}

/// Lets every reservation still in flight expire (moving the clock past the longest TTL),
/// and waits until none is left and all nodes have applied the same index.
async fn settle(scenario: &Scenario, cluster: &mut Cluster, io: &Io) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    let ttl_max = scenario.agents.iter().map(|a| a.ttl_ms).max().unwrap_or(0);
    let mut advanced = false;
    loop {
        let mut in_flight = 0;
        for tenant in &scenario.tenants {
            in_flight += io
                .client
                .reservations(&io.tenant(&tenant.name), None, 1)
                .await
                .context("listing reservations in flight")?
                .len();
        }
        if in_flight == 0 {
            break;
        }
        if cluster.local.is_none() {
            // No clock to move: leave them; held spend is compared as it stands.
            break;
        }
        if !advanced {
            cluster.clock.advance_ms(ttl_max + 1);
            advanced = true;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{in_flight} reservation(s) still in flight {SETTLE_WAIT:?} after the clock passed their TTL");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// The whole audit trail (all of this run's tenants), oldest first, and whether its hash
/// chain verifies.
async fn read_audit(
    scenario: &Scenario,
    io: &Io,
) -> anyhow::Result<(Vec<AuditRecord>, Option<String>)> {
    let mut records = Vec::new();
    // One tenant at a time: against a shared deployment, other tenants are not ours.
    for tenant in &scenario.tenants {
        let query = v1::AuditQueryRequest {
            tenant: io.tenant(&tenant.name),
            ..Default::default()
        };
        let mut export = io.client.export_audit(query).await?;
        while let Some(record) = export.next().await? {
            let parsed: AuditRecord = serde_json::from_str(&record.json)
                .with_context(|| format!("audit record seq {} is not readable JSON", record.seq))?;
            records.push(parsed);
        }
    }
    records.sort_by_key(|r| r.seq);
    // A single tenant's records are not consecutive in a shared trail; verify the links
    // only where the whole trail is ours (the embedded cluster with one tenant's run).
    let chain_error = if io.tenant_prefix.is_empty() {
        let mut whole = Vec::new();
        let mut export = io
            .client
            .export_audit(v1::AuditQueryRequest::default())
            .await?;
        while let Some(record) = export.next().await? {
            whole.push(serde_json::from_str::<AuditRecord>(&record.json)?);
        }
        tollgate_ledger::verify_chain(&whole)
            .err()
            .map(|e| e.to_string())
    } else {
        let verdict = io.client.verify_audit().await?;
        (!verdict.ok).then_some(verdict.error)
    };
    Ok((records, chain_error))
}

fn strip_record_prefix(mut record: AuditRecord, prefix: &str) -> AuditRecord {
    if prefix.is_empty() {
        return record;
    }
    if let Some(tenant) = &record.tenant {
        if let Some(bare) = tenant.as_str().strip_prefix(prefix) {
            if let Ok(id) = tollgate_ledger::TenantId::new(bare) {
                record.tenant = Some(id);
            }
        }
    }
    record
}
