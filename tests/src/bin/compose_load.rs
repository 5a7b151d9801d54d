//! Load client of the compose fault test (tests/compose/run.sh).
//!
//! `setup` creates the test tenants and their limits on a fresh cluster and writes the
//! budgets the checker holds the cluster to. `run` is one client process: a few workers that
//! reserve, commit, release, abandon and record against the published ports until the
//! duration ends, writing every answer as one JSON line of `tollgate_sim::history` the moment
//! it arrives, so a process killed with SIGKILL leaves its history up to that instant.
//! This program decides nothing about correctness; `compose_check` does.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rand::Rng;
use tollgate_client::v1;
use tollgate_client::v1::reserve_response::Decision;
use tollgate_client::{
    new_request_id, Amounts, Client, ClientConfig, Error, ReservationInfo, ReserveRequest,
};
use tollgate_ledger::Dimension;
use tollgate_sim::history::{BudgetSpec, Event, Op, OpResult};

/// The tenants of the test and their lifetime cost budgets (micro-units). At the ~300
/// operations a second of two busy cores, `t-tight` runs out within seconds and spends the
/// rest of the run at its limit, `t-mid` runs out during the second half of a three-minute
/// run, `t-wide` never: grants race a budget's edge in every phase of the fault schedule.
const TENANT_BUDGETS_COST_MICROS: [(&str, u64); 4] = [
    ("t-tight", 3_000_000),
    ("t-mid", 30_000_000),
    ("t-wide", 1_000_000_000_000),
    (LEASED_TENANT, 30_000_000),
];
/// The tenant whose policy lends leases: its calls go through `Client::reserve`, which
/// decides them inside leases (killed clients leave their slices to expire, charged), and
/// its budget runs out mid-run, so leases shrink, are refused and recalled under faults.
const LEASED_TENANT: &str = "t-leased";
/// Id of each tenant's budget limit.
const BUDGET_LIMIT_ID: &str = "cost-lifetime";
/// A second budget, on tokens, for `t-mid`: a reservation must fit both.
const TOKENS_LIMIT_ID: &str = "tokens-lifetime";
const TOKENS_BUDGET_T_MID: u64 = 9_000_000;
/// Reservations in flight per agent of `t-mid`: adds concurrency denials to the mix.
const CONCURRENCY_PER_AGENT_MAX: u64 = 4;
const AGENTS: [&str; 4] = ["planner", "coder", "searcher", "summariser"];
const TOOLS: [&str; 3] = ["llm:gpt-x", "search", "db:orders.read"];
/// Reservation TTL: short, so abandoned reservations and those of killed clients expire (and
/// are charged) during the run, and long enough that most commits beat it across a failover.
const RESERVATION_TTL_MS: u64 = 8_000;
/// Longest pause between a grant and its commit or release (the "LLM call").
const CALL_MS_MAX: u64 = 40;
/// Times an operation whose answer was lost is sent again with the same request id.
const AMBIGUOUS_RETRIES_MAX: u32 = 2;
const AMBIGUOUS_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause after a denial, so a worker at an exhausted budget does not spin.
const DENIED_PAUSE: Duration = Duration::from_millis(25);
/// How long `setup` keeps trying while the new cluster elects its first leader.
const SETUP_DEADLINE: Duration = Duration::from_secs(90);
/// Most workers one process runs.
const WORKERS_MAX: usize = 64;

#[derive(Parser)]
#[command(about = "Load client of the compose fault test")]
struct Cli {
    /// The cluster's published ports, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the test tenants, their limits and a worker key each (with the admin key in
    /// TOLLGATE_API_KEY or TOLLGATE_API_KEY_FILE); writes the budgets for the checker and
    /// the worker keys for the clients.
    /// TLS to the nodes comes from TOLLGATE_TLS_CA (all subcommands).
    Setup {
        /// Where to write the budgets (JSON).
        #[arg(long)]
        budgets: PathBuf,
        /// Where to write the worker keys, one `TENANT=KEY` a line.
        #[arg(long)]
        tenant_keys: PathBuf,
    },
    /// One client process: drives load until --duration-s ends.
    Run {
        /// Unique among all client processes of the run (histories are merged).
        #[arg(long)]
        client_id: u64,
        #[arg(long)]
        duration_s: u64,
        /// Concurrent workers in this process.
        #[arg(long, default_value_t = 6)]
        workers: usize,
        /// Where to append this client's history (JSON lines).
        #[arg(long)]
        history: PathBuf,
        /// The file `setup` wrote: a worker key per test tenant, `TENANT=KEY` a line.
        #[arg(long)]
        tenant_keys: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup {
            budgets,
            tenant_keys,
        } => setup(&cli.endpoints, &budgets, &tenant_keys).await,
        Command::Run {
            client_id,
            duration_s,
            workers,
            history,
            tenant_keys,
        } => {
            if workers == 0 || workers > WORKERS_MAX {
                bail!("--workers {workers}: between 1 and {WORKERS_MAX} (WORKERS_MAX)");
            }
            let tenants = read_tenant_keys(&tenant_keys)?;
            let log = HistoryLog::create(&history)?;
            run(
                &cli.endpoints,
                client_id,
                Duration::from_secs(duration_s),
                workers,
                tenants,
                log,
            )
            .await
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn budget_limit(id: &str, dimension: v1::Dimension, amount: u64) -> v1::Limit {
    v1::Limit {
        id: id.to_owned(),
        scope: Some(v1::Scope {
            scope: Some(v1::scope::Scope::Tenant(v1::Empty {})),
        }),
        dimension: dimension.into(),
        kind: Some(v1::limit::Kind::Budget(v1::Budget {
            window: v1::Window::Lifetime.into(),
            amount,
        })),
        thresholds: None,
    }
}

/// Every limit of the test, by tenant.
fn limits() -> Vec<(&'static str, v1::Limit)> {
    let mut limits: Vec<(&'static str, v1::Limit)> = TENANT_BUDGETS_COST_MICROS
        .iter()
        .map(|&(tenant, amount)| {
            (
                tenant,
                budget_limit(BUDGET_LIMIT_ID, v1::Dimension::Cost, amount),
            )
        })
        .collect();
    limits.push((
        "t-mid",
        budget_limit(TOKENS_LIMIT_ID, v1::Dimension::Tokens, TOKENS_BUDGET_T_MID),
    ));
    limits.push((
        "t-mid",
        v1::Limit {
            id: "concurrency-per-agent".into(),
            scope: Some(v1::Scope {
                scope: Some(v1::scope::Scope::EachAgent(v1::Empty {})),
            }),
            dimension: v1::Dimension::Concurrency.into(),
            kind: Some(v1::limit::Kind::Concurrency(v1::Concurrency {
                max: CONCURRENCY_PER_AGENT_MAX,
            })),
            thresholds: None,
        },
    ));
    limits
}

fn budget_specs() -> Vec<BudgetSpec> {
    let mut specs: Vec<BudgetSpec> = TENANT_BUDGETS_COST_MICROS
        .iter()
        .map(|&(tenant, amount)| BudgetSpec {
            tenant: tenant.into(),
            limit_id: BUDGET_LIMIT_ID.into(),
            dimension: Dimension::Cost,
            amount,
        })
        .collect();
    specs.push(BudgetSpec {
        tenant: "t-mid".into(),
        limit_id: TOKENS_LIMIT_ID.into(),
        dimension: Dimension::Tokens,
        amount: TOKENS_BUDGET_T_MID,
    });
    specs
}

fn client(endpoints: &[String], token: &str) -> anyhow::Result<Client> {
    let config = ClientConfig {
        token: Some(token.to_owned()),
        tls: tollgate_tests::tls_from_env()?,
        ..ClientConfig::new(endpoints.iter().cloned())
    };
    Client::new(config).context("client config")
}

/// Retries `f` until it succeeds or the setup deadline passes: the cluster may still be
/// electing its first leader when setup starts.
async fn until_ok<T, F, Fut>(what: &str, started: Instant, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(Error::Unavailable { reason }) if started.elapsed() < SETUP_DEADLINE => {
                eprintln!("setup: {what}: cluster not ready ({reason}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => bail!("setup: {what}: {error}"),
        }
    }
}

async fn setup(endpoints: &[String], budgets: &Path, tenant_keys: &Path) -> anyhow::Result<()> {
    let admin_key = tollgate_client::api_key_from_env()?
        .context("no admin key: set TOLLGATE_API_KEY or TOLLGATE_API_KEY_FILE")?;
    let admin = client(endpoints, &admin_key)?;
    let started = Instant::now();
    for (tenant, _) in TENANT_BUDGETS_COST_MICROS {
        let policy = (tenant == LEASED_TENANT).then(tollgate_tests::leased_policy);
        until_ok(&format!("put tenant {tenant}"), started, || {
            admin.put_tenant(tenant, policy)
        })
        .await?;
    }
    for (tenant, limit) in limits() {
        let what = format!("put limit {} of {tenant}", limit.id);
        until_ok(&what, started, || admin.put_limit(tenant, limit.clone())).await?;
    }
    let mut keys = String::new();
    for (tenant, _) in TENANT_BUDGETS_COST_MICROS {
        let what = format!("create a worker key of {tenant}");
        let created = until_ok(&what, started, || {
            admin.create_key(Some(tenant), v1::KeyRole::Worker, &[], "compose load")
        })
        .await?;
        keys.push_str(&format!("{tenant}={}\n", created.api_key));
    }
    std::fs::write(tenant_keys, keys)
        .with_context(|| format!("writing {}", tenant_keys.display()))?;
    let text = serde_json::to_string_pretty(&budget_specs())?;
    std::fs::write(budgets, text).with_context(|| format!("writing {}", budgets.display()))?;
    println!(
        "setup: {} tenants, {} limits; budgets in {}",
        TENANT_BUDGETS_COST_MICROS.len(),
        limits().len(),
        budgets.display()
    );
    Ok(())
}

fn read_tenant_keys(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let tenants: Vec<(String, String)> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim()
                .split_once('=')
                .map(|(tenant, key)| (tenant.to_owned(), key.to_owned()))
                .context("a tenant key line is not TENANT=KEY")
        })
        .collect::<anyhow::Result<_>>()?;
    if tenants.is_empty() {
        bail!("no tenant keys in {}: run `setup` first", path.display());
    }
    Ok(tenants)
}

/// This client's history on disk: one line per answer, flushed at once, so SIGKILL loses
/// at most the operations still in flight (which the checker treats as never answered).
#[derive(Clone)]
struct HistoryLog {
    out: Arc<Mutex<BufWriter<File>>>,
}

impl HistoryLog {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            out: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }

    fn write(&self, event: &Event) {
        let mut line = serde_json::to_vec(event).expect("an event always serialises");
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // One write and one flush per line: a kill never leaves half of a line behind
        // another's. A full disk ends the run loudly rather than losing answers quietly.
        if let Err(error) = out.write_all(&line).and_then(|()| out.flush()) {
            eprintln!("history write failed: {error}");
            std::process::exit(2);
        }
    }
}

/// One worker's view: its clients per tenant and where its answers go.
struct Worker {
    client_id: u64,
    tenants: Vec<(String, Client)>,
    log: HistoryLog,
}

/// The outcome of one attempt at an operation, as the history records it.
fn failed(error: &Error) -> OpResult {
    let code = match error {
        // The answer was lost: the operation may have taken effect.
        Error::Unavailable { .. } | Error::Internal(_) => {
            return OpResult::Ambiguous {
                error: error.to_string(),
            }
        }
        Error::Invalid(_) => "INVALID_ARGUMENT",
        Error::NotFound(_) => "NOT_FOUND",
        Error::PermissionDenied(_) => "PERMISSION_DENIED",
        Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
        Error::Exhausted(_) => "RESOURCE_EXHAUSTED",
        Error::RequestIdReused(_) => "ALREADY_EXISTS",
        Error::Denied { .. } | Error::Frozen { .. } | Error::Tripped { .. } => "DENIED",
    };
    OpResult::Rejected {
        code: code.into(),
        message: error.to_string(),
    }
}

fn reserve_result(response: &v1::ReserveResponse) -> OpResult {
    let log_index = response.applied.map_or(0, |a| a.log_index);
    match &response.decision {
        Some(Decision::Granted(granted)) => OpResult::Granted {
            reservation_id: granted.reservation_id,
            log_index,
        },
        Some(Decision::Denied(denied)) => OpResult::Denied {
            reason: format!("limit {}", denied.limit_id),
            log_index,
        },
        Some(Decision::Frozen(_)) => OpResult::Denied {
            reason: "frozen".into(),
            log_index,
        },
        Some(Decision::Tripped(_)) => OpResult::Denied {
            reason: "tripped".into(),
            log_index,
        },
        None => OpResult::Ambiguous {
            error: "reserve answered without a decision".into(),
        },
    }
}

impl Worker {
    /// Sends `op` under one request id until it gets a definite answer or runs out of
    /// retries; every attempt is an event. Returns the last result.
    async fn perform(&self, client: &Client, op: Op) -> OpResult {
        let request_id = new_request_id();
        let mut attempt = 0;
        loop {
            let invoked_ms = now_ms();
            let result = self.send(client, &request_id, &op).await;
            self.log.write(&Event {
                client: self.client_id,
                request_id: request_id.clone(),
                op: op.clone(),
                invoked_ms,
                completed_ms: now_ms().max(invoked_ms),
                result: result.clone(),
            });
            let ambiguous = matches!(result, OpResult::Ambiguous { .. });
            if !ambiguous || attempt >= AMBIGUOUS_RETRIES_MAX {
                return result;
            }
            attempt += 1;
            tokio::time::sleep(AMBIGUOUS_RETRY_PAUSE).await;
        }
    }

    async fn send(&self, client: &Client, request_id: &str, op: &Op) -> OpResult {
        let request_id = request_id.to_owned();
        match op {
            Op::Reserve {
                tenant,
                agent,
                tool,
                tokens,
                cost_micros,
                calls,
                ttl_ms,
            } => {
                let wire = v1::ReserveRequest {
                    request_id,
                    tenant: tenant.clone(),
                    agent: agent.clone(),
                    tool: tool.clone(),
                    estimate: Some(Amounts::new(*tokens, *cost_micros, *calls).into()),
                    ttl_ms: *ttl_ms,
                    fingerprint: String::new(),
                    usage: None,
                    session: String::new(),
                    shape: String::new(),
                };
                send_reserve(client, wire).await
            }
            Op::Commit {
                tenant,
                reservation_id,
                tokens,
                cost_micros,
                calls,
            } => {
                let actual = Amounts::new(*tokens, *cost_micros, *calls);
                let committed = client
                    .commit_reservation(request_id, tenant, *reservation_id, actual)
                    .await;
                done(committed.map(|info| info.applied.map_or(0, |a| a.log_index)))
            }
            Op::Release {
                tenant,
                reservation_id,
            } => {
                let released = client
                    .release_reservation(request_id, tenant, *reservation_id)
                    .await;
                done(released.map(|applied| applied.log_index))
            }
            Op::Record {
                tenant,
                agent,
                tool,
                tokens,
                cost_micros,
                calls,
            } => {
                let actual = Amounts::new(*tokens, *cost_micros, *calls);
                let recorded = client
                    .record_with_id(request_id, tenant, agent, tool, actual)
                    .await;
                done(recorded.map(|applied| applied.log_index))
            }
        }
    }

    /// One agent call: reserve, "call", then commit (mostly), release, or abandon; or, now
    /// and then, a record of spend made without a reservation.
    async fn step(&self) {
        // Drawn up front: the thread-local rng must not live across an await.
        let call = Call::draw(self.tenants.len());
        let (tenant, client) = &self.tenants[call.tenant_index];
        if tenant == LEASED_TENANT && !call.is_record {
            self.leased_step(client, tenant, &call).await;
            return;
        }
        if call.is_record {
            self.perform(client, call.record(tenant)).await;
            return;
        }
        let reservation_id = match self.perform(client, call.reserve(tenant)).await {
            OpResult::Granted { reservation_id, .. } => reservation_id,
            OpResult::Denied { .. } => {
                tokio::time::sleep(DENIED_PAUSE).await;
                return;
            }
            // Lost answers keep whatever they held until the TTL: the fail-safe default.
            _ => return,
        };
        tokio::time::sleep(Duration::from_millis(call.call_ms)).await;
        if let Some(op) = call.settle(tenant, reservation_id) {
            self.perform(client, op).await;
        }
    }
}

impl Worker {
    /// One call of the leased tenant, through `Client::reserve`: decided inside a lease
    /// when the client can (the history says `local`), per call otherwise. An abandoned
    /// call is a dropped guard, settled at its estimate.
    async fn leased_step(&self, client: &Client, tenant: &str, call: &Call) {
        let op = call.reserve(tenant);
        let request_id = new_request_id();
        let request = ReserveRequest::new(tenant, call.agent, call.tool)
            .estimate(client_amounts(op.amounts()))
            .ttl(Duration::from_millis(RESERVATION_TTL_MS));
        let invoked_ms = now_ms();
        let answer = client
            .reserve_with_call_id(request_id.clone(), request)
            .await;
        let result = match &answer {
            Ok(reservation) => match reservation.info() {
                ReservationInfo {
                    lease_id: Some(lease_id),
                    ..
                } => OpResult::Local { lease_id },
                info => OpResult::Granted {
                    reservation_id: info.reservation_id.unwrap_or_default(),
                    log_index: reservation.applied().map_or(0, |a| a.log_index),
                },
            },
            Err(Error::Denied { limit_id, .. }) => OpResult::Denied {
                reason: format!("limit {limit_id}"),
                log_index: 0,
            },
            Err(error) => failed(error),
        };
        self.log.write(&Event {
            client: self.client_id,
            request_id,
            op,
            invoked_ms,
            completed_ms: now_ms().max(invoked_ms),
            result,
        });
        let Ok(reservation) = answer else {
            tokio::time::sleep(DENIED_PAUSE).await;
            return;
        };
        tokio::time::sleep(Duration::from_millis(call.call_ms)).await;
        let info = reservation.info();
        let Some(op) = call.settle(tenant, info.lease_id.or(info.reservation_id).unwrap_or(0))
        else {
            drop(reservation);
            return;
        };
        let request_id = new_request_id();
        let invoked_ms = now_ms();
        let settled = match &op {
            Op::Commit { .. } => reservation
                .commit_with_id(request_id.clone(), client_amounts(op.amounts()))
                .await
                .map(|c| c.applied.map_or(0, |a| a.log_index)),
            _ => reservation
                .release_with_id(request_id.clone())
                .await
                .map(|a| a.map_or(0, |a| a.log_index)),
        };
        let result = match (settled, info.lease_id) {
            (Ok(_), Some(lease_id)) => OpResult::Local { lease_id },
            (settled, None) => done(settled),
            (Err(error), _) => failed(&error),
        };
        self.log.write(&Event {
            client: self.client_id,
            request_id,
            op,
            invoked_ms,
            completed_ms: now_ms().max(invoked_ms),
            result,
        });
    }
}

fn client_amounts(a: tollgate_ledger::Amounts) -> Amounts {
    Amounts::new(a.tokens, a.cost_micros, a.calls)
}

/// A reserve through the raw call, not `Client::reserve`: a denial's log index matters to
/// the checker, and the guard would release a reservation this test abandons.
async fn send_reserve(client: &Client, wire: v1::ReserveRequest) -> OpResult {
    let response = client
        .call(|rpc| {
            let wire = wire.clone();
            async move { rpc.tollgate().reserve(wire).await }
        })
        .await;
    match response {
        Ok(response) => reserve_result(&response),
        Err(error) => failed(&error),
    }
}

/// A commit, release or record: done at its log index, or failed.
fn done(result: Result<u64, Error>) -> OpResult {
    match result {
        Ok(log_index) => OpResult::Done { log_index },
        Err(error) => failed(&error),
    }
}

/// One agent call's random draw: who calls what, for how much, and how it ends.
struct Call {
    tenant_index: usize,
    agent: &'static str,
    tool: &'static str,
    tokens: u64,
    cost_micros: u64,
    /// A record of spend made without a reservation, instead of a reserve.
    is_record: bool,
    call_ms: u64,
    /// 0..100: abandon, release or commit (see `settle`).
    settle: u32,
    /// The actual spend in percent of the estimate.
    actual_pct: u64,
}

impl Call {
    fn draw(tenants: usize) -> Call {
        let mut rng = rand::rng();
        Call {
            tenant_index: rng.random_range(0..tenants),
            agent: AGENTS[rng.random_range(0..AGENTS.len())],
            tool: TOOLS[rng.random_range(0..TOOLS.len())],
            tokens: rng.random_range(100..4_000u64),
            cost_micros: rng.random_range(1_000..20_000u64),
            is_record: rng.random_ratio(1, 20),
            call_ms: rng.random_range(0..=CALL_MS_MAX),
            settle: rng.random_range(0..100u32),
            // Actual spend 50%..120% of the estimate: about a fifth of commits overrun.
            actual_pct: rng.random_range(50..=120u64),
        }
    }

    fn record(&self, tenant: &str) -> Op {
        Op::Record {
            tenant: tenant.to_owned(),
            agent: self.agent.into(),
            tool: self.tool.into(),
            tokens: self.tokens / 10,
            cost_micros: self.cost_micros / 10,
            calls: 1,
        }
    }

    fn reserve(&self, tenant: &str) -> Op {
        Op::Reserve {
            tenant: tenant.to_owned(),
            agent: self.agent.into(),
            tool: self.tool.into(),
            tokens: self.tokens,
            cost_micros: self.cost_micros,
            calls: 1,
            ttl_ms: RESERVATION_TTL_MS,
        }
    }

    /// What follows the granted call: nothing (abandoned), a release, or a commit.
    fn settle(&self, tenant: &str, reservation_id: u64) -> Option<Op> {
        match self.settle {
            // Abandoned: the worker "died" after its call; the reservation expires, charged.
            0..=4 => None,
            5..=19 => Some(Op::Release {
                tenant: tenant.to_owned(),
                reservation_id,
            }),
            _ => Some(Op::Commit {
                tenant: tenant.to_owned(),
                reservation_id,
                tokens: self.tokens * self.actual_pct / 100,
                cost_micros: self.cost_micros * self.actual_pct / 100,
                calls: 1,
            }),
        }
    }
}

async fn run(
    endpoints: &[String],
    client_id: u64,
    duration: Duration,
    workers: usize,
    tenants: Vec<(String, String)>,
    log: HistoryLog,
) -> anyhow::Result<()> {
    // One connection pool shared by every tenant's credentials, as one agent host would.
    let (_, first_token) = &tenants[0];
    let base = client(endpoints, first_token)?;
    let tenant_clients: Vec<(String, Client)> = tenants
        .iter()
        .map(|(tenant, token)| Ok((tenant.clone(), base.with_token(Some(token))?)))
        .collect::<Result<_, Error>>()?;
    let end = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let worker = Worker {
            client_id,
            tenants: tenant_clients.clone(),
            log: log.clone(),
        };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                worker.step().await;
            }
        }));
    }
    for task in tasks {
        task.await.context("worker panicked")?;
    }
    // Settles every call decided in a lease and gives the rest back.
    for (_, client) in &tenant_clients {
        client.return_leases().await;
    }
    eprintln!("client {client_id}: done");
    Ok(())
}
