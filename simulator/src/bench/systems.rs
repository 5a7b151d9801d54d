//! The three systems a benchmark drives, each with reserve and commit written the way a user
//! of that system would: Tollgate through `tollgate-client`; etcd as compare-and-swap
//! transactions on the budget key; Redis as Lua scripts (what LiteLLM-style gateways do).
//!
//! Every system sees the same workload: a reserve of `ESTIMATE` against one budget, then a
//! commit of `ACTUAL`. Budgets are sized so nothing is ever denied (the run measures the
//! cost of the decision), unless a run sizes the hot budget to run out (`--budget`,
//! `--budget-runs-out`): then every system denies a reserve that would not fit.

use std::time::Duration;

use anyhow::{bail, Context};
use tollgate_client::{v1, Amounts, Client, ClientConfig, Error, Reservation, ReserveRequest};
use tonic::transport::{Channel, Endpoint};

use super::etcd_pb::kv_client::KvClient;
use super::etcd_pb::{self as pb};

/// The tenant every workload runs in.
pub const TENANT: &str = "bench";
/// The estimate each reserve holds and what each commit charges (tokens, cost µ, calls).
pub const ESTIMATE: Amounts = Amounts {
    tokens: 100,
    cost_micros: 1_000,
    calls: 1,
};
pub const ACTUAL: Amounts = Amounts {
    tokens: 90,
    cost_micros: 900,
    calls: 1,
};
/// The id of the bench budget (Tollgate).
pub const BUDGET_LIMIT_ID: &str = "budget";
/// Every budget's cap (cost µ): 10^15, the ledger's largest amount; at 10^3 per reserve no
/// run comes near it.
pub const BUDGET_AMOUNT: u64 = 1_000_000_000_000_000;
/// A reservation's TTL: far longer than any pair takes, so nothing expires mid-run.
pub const TTL: Duration = Duration::from_secs(60);
/// Most compare-and-swap attempts one etcd operation makes before it counts as an error.
pub const CAS_ATTEMPTS_MAX: u32 = 10_000;
/// A client's deadline per operation.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Tollgate,
    Etcd,
    Redis,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// One tenant, one budget, every client on it.
    Hot,
    /// Agents drawn at random from `--agents`, each with its own budget.
    Spread,
}

/// The tenant a run charges and its budget's cap (cost µ).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub tenant: String,
    pub budget: u64,
    /// Tollgate: the tenant's policy turns budget leases on.
    pub leases: bool,
}

impl Account {
    /// The default: tenant `bench`, a budget no run comes near, leases off.
    pub fn unlimited() -> Account {
        Account {
            tenant: TENANT.to_owned(),
            budget: BUDGET_AMOUNT,
            leases: false,
        }
    }
}

/// Which budget a pair charges.
#[derive(Clone, Debug)]
pub struct Key {
    pub agent: String,
}

impl Key {
    /// The key of `agent_index` (spread) or of the one hot budget.
    pub fn new(workload: Workload, worker: usize, agent_index: u64) -> Key {
        match workload {
            // The budget is the tenant's; agents differ so per-agent state stays realistic.
            Workload::Hot => Key {
                agent: format!("agent-{worker}"),
            },
            Workload::Spread => Key {
                agent: format!("a{agent_index}"),
            },
        }
    }

    /// The peers' key of the budget this pair charges.
    fn budget(&self, workload: Workload, tenant: &str) -> String {
        match workload {
            Workload::Hot => format!("budget/{tenant}"),
            Workload::Spread => format!("budget/{tenant}/{}", self.agent),
        }
    }
}

/// How an operation failed.
pub enum OpError {
    /// `by_budget`: the bench budget said no (not another limit, a freeze or a trip).
    Denied {
        by_budget: bool,
    },
    Failed(String),
}

/// A granted reservation, to be committed.
// It lives on one worker's stack for one pair; boxing the large variant would add an
// allocation to every pair the benchmark measures.
#[allow(clippy::large_enum_variant)]
pub enum Held {
    Tollgate(Reservation),
    Etcd { budget: String, reservation: String },
    Redis { budget: String, reservation: String },
}

/// One connection's worth of a system; workers share them.
#[derive(Clone)]
pub enum Driver {
    Tollgate(Client),
    Etcd(KvClient<Channel>),
    Redis(redis::aio::MultiplexedConnection),
}

/// Per-worker state that survives between operations.
#[derive(Default)]
pub struct WorkerState {
    /// etcd: the last budget value seen (key, mod revision, value), tried first.
    etcd_cached: Option<(String, i64, Budget)>,
    /// Reservation ids this worker issued (etcd and Redis key their holds with them).
    seq: u64,
    pub conflicts: u64,
}

/// A peer's budget value: held and committed cost, as "held used" in ASCII.
#[derive(Clone, Copy, Debug, Default)]
struct Budget {
    held: u64,
    used: u64,
}

impl Budget {
    fn parse(bytes: &[u8]) -> Budget {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut numbers = text.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        Budget {
            held: numbers.next().unwrap_or(0),
            used: numbers.next().unwrap_or(0),
        }
    }

    fn encode(self) -> Vec<u8> {
        format!("{} {}", self.held, self.used).into_bytes()
    }
}

const REDIS_RESERVE: &str = r"
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local estimate = tonumber(ARGV[1])
if held + used + estimate > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'held', estimate)
redis.call('SET', KEYS[2], estimate, 'PX', ARGV[3])
return 1
";

const REDIS_COMMIT: &str = r"
local estimate = redis.call('GET', KEYS[2])
if not estimate then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[1], 'held', -tonumber(estimate))
redis.call('HINCRBY', KEYS[1], 'used', tonumber(ARGV[1]))
return 1
";

/// Connects `connections` drivers to `endpoints`; Tollgate's clients coalesce concurrent
/// operations into `Batch` calls when `coalesce` (the client's default).
pub async fn connect(
    system: System,
    endpoints: &[String],
    token: Option<&str>,
    connections: usize,
    coalesce: bool,
) -> anyhow::Result<Vec<Driver>> {
    let mut drivers = Vec::with_capacity(connections);
    for _ in 0..connections {
        drivers.push(match system {
            System::Tollgate => {
                let mut config = ClientConfig::new(endpoints.to_vec());
                config.token = token.map(str::to_owned);
                // A secured deployment: its CA from TOLLGATE_TLS_CA.
                config.tls = tollgate_client::TlsConfig::from_env()?;
                config.deadline = DEADLINE;
                config.coalesce = coalesce;
                // Each client has its own pool: one HTTP/2 connection per node per client.
                Driver::Tollgate(Client::new(config)?)
            }
            System::Etcd => {
                // etcd forwards proposals from followers; give it the leader (compare.sh
                // finds it) for its best case.
                let addr = endpoints.first().context("no etcd endpoint")?;
                let channel = Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to etcd at {addr}"))?;
                Driver::Etcd(KvClient::new(channel))
            }
            System::Redis => {
                let addr = endpoints.first().context("no redis endpoint")?;
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                let connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("connecting to redis at {addr}"))?;
                Driver::Redis(connection)
            }
        });
    }
    Ok(drivers)
}

/// The bench tenant's policy: the default one (runaway detection included) with every quota
/// at its maximum, so the load, not a quota, is what is measured.
pub fn bench_policy(leases: bool) -> tollgate_ledger::TenantPolicy {
    let quotas = tollgate_ledger::TenantQuotas {
        agents: tollgate_ledger::AGENTS_PER_TENANT_MAX as u64,
        answers: tollgate_ledger::ANSWERS_PER_TENANT_MAX as u64,
        proposals_queued: tollgate_ledger::PROPOSALS_QUEUED_PER_TENANT_MAX as u64,
        ..Default::default()
    };
    // Velocity off: the bench measures throughput at one agent's peak, which velocity
    // detection would rightly call a runaway; Redis and etcd detect nothing either.
    tollgate_ledger::TenantPolicy {
        quotas,
        leases,
        velocity_factor: 0,
        ..Default::default()
    }
}

/// Creates the tenant and its budget (Tollgate), or clears the keys (peers).
/// The bench tenant and its one budget. A load test is one tenant at the cluster's peak: it
/// may hold the whole exactly-once table and the whole proposal queue, and as many agents as
/// one tenant may have (the snapshot scenario loads a million).
async fn setup_tollgate(
    client: &tollgate_client::Client,
    workload: Workload,
    account: &Account,
) -> anyhow::Result<()> {
    let policy = tollgate_server::grpc::convert::policy_to_pb(&bench_policy(account.leases));
    let tenant = account.tenant.as_str();
    client
        .put_tenant(tenant, Some(policy))
        .await
        .context("creating the bench tenant")?;
    let scope = match workload {
        Workload::Hot => v1::scope::Scope::Tenant(v1::Empty {}),
        Workload::Spread => v1::scope::Scope::EachAgent(v1::Empty {}),
    };
    let limit = v1::Limit {
        id: BUDGET_LIMIT_ID.into(),
        scope: Some(v1::Scope { scope: Some(scope) }),
        dimension: v1::Dimension::Cost.into(),
        kind: Some(v1::limit::Kind::Budget(v1::Budget {
            window: v1::Window::Lifetime.into(),
            amount: account.budget,
        })),
        thresholds: None,
    };
    client
        .put_limit(tenant, limit)
        .await
        .context("setting the bench budget")?;
    Ok(())
}

pub async fn setup(driver: &Driver, workload: Workload, account: &Account) -> anyhow::Result<()> {
    match driver {
        Driver::Tollgate(client) => setup_tollgate(client, workload, account).await?,
        Driver::Etcd(kv) => {
            // Start from empty budgets: a missing key reads as zero.
            let mut kv = kv.clone();
            let prefix = b"budget/".to_vec();
            let mut range_end = prefix.clone();
            if let Some(last) = range_end.last_mut() {
                *last += 1;
            }
            let delete = |key: Vec<u8>, range_end: Vec<u8>| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest { key, range_end },
                )),
            };
            kv.txn(pb::TxnRequest {
                compare: Vec::new(),
                success: vec![
                    delete(prefix, range_end),
                    delete(b"res/".to_vec(), b"res0".to_vec()),
                ],
                failure: Vec::new(),
            })
            .await
            .context("clearing etcd's bench keys")?;
        }
        Driver::Redis(connection) => {
            let mut connection = connection.clone();
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut connection)
                .await
                .context("flushing redis")?;
        }
    }
    Ok(())
}

impl Driver {
    /// After a run: a Tollgate client gives its leases back (reports the calls decided
    /// inside them and returns the rest), as a process does before it exits.
    pub async fn finish(&self) {
        if let Driver::Tollgate(client) = self {
            client.return_leases().await;
        }
    }

    pub async fn reserve(
        &self,
        workload: Workload,
        worker: usize,
        state: &mut WorkerState,
        account: &Account,
        key: &Key,
    ) -> Result<Held, OpError> {
        let budget_amount = account.budget;
        match self {
            Driver::Tollgate(client) => {
                let request =
                    ReserveRequest::new(account.tenant.as_str(), key.agent.as_str(), "llm:bench")
                        .estimate(ESTIMATE)
                        .ttl(TTL);
                match client.reserve(request).await {
                    Ok(reservation) => Ok(Held::Tollgate(reservation)),
                    Err(Error::Denied { limit_id, .. }) => Err(OpError::Denied {
                        by_budget: limit_id == BUDGET_LIMIT_ID,
                    }),
                    Err(error) => Err(OpError::Failed(error.to_string())),
                }
            }
            Driver::Etcd(kv) => {
                state.seq += 1;
                let budget = key.budget(workload, &account.tenant);
                let reservation = format!("res/{worker}/{}", state.seq);
                let estimate = ESTIMATE.cost_micros;
                let put_reservation = put(&reservation, estimate.to_string().into_bytes());
                let granted = etcd_cas(kv, state, &budget, |value| {
                    if value.held + value.used + estimate > budget_amount {
                        return None;
                    }
                    let next = Budget {
                        held: value.held + estimate,
                        used: value.used,
                    };
                    Some((next, vec![put_reservation.clone()]))
                })
                .await?;
                if !granted {
                    return Err(OpError::Denied { by_budget: true });
                }
                Ok(Held::Etcd {
                    budget,
                    reservation,
                })
            }
            Driver::Redis(connection) => {
                state.seq += 1;
                let budget = key.budget(workload, &account.tenant);
                let reservation = format!("res/{worker}/{}", state.seq);
                let mut connection = connection.clone();
                let granted: i64 = redis_script(REDIS_RESERVE)
                    .key(&budget)
                    .key(&reservation)
                    .arg(ESTIMATE.cost_micros)
                    .arg(budget_amount)
                    .arg(TTL.as_millis() as u64)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| OpError::Failed(e.to_string()))?;
                if granted != 1 {
                    return Err(OpError::Denied { by_budget: true });
                }
                Ok(Held::Redis {
                    budget,
                    reservation,
                })
            }
        }
    }

    pub async fn commit(&self, state: &mut WorkerState, held: Held) -> Result<(), OpError> {
        match (self, held) {
            (Driver::Tollgate(_), Held::Tollgate(reservation)) => reservation
                .commit(ACTUAL)
                .await
                .map(|_| ())
                .map_err(|e| OpError::Failed(e.to_string())),
            (
                Driver::Etcd(kv),
                Held::Etcd {
                    budget,
                    reservation,
                },
            ) => {
                let estimate = ESTIMATE.cost_micros;
                let actual = ACTUAL.cost_micros;
                let delete = pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: reservation.into_bytes(),
                            range_end: Vec::new(),
                        },
                    )),
                };
                etcd_cas(kv, state, &budget, |value| {
                    let next = Budget {
                        held: value.held.saturating_sub(estimate),
                        used: value.used.saturating_add(actual),
                    };
                    Some((next, vec![delete.clone()]))
                })
                .await
                .map(|_| ())
            }
            (
                Driver::Redis(connection),
                Held::Redis {
                    budget,
                    reservation,
                },
            ) => {
                let mut connection = connection.clone();
                let committed: i64 = redis_script(REDIS_COMMIT)
                    .key(&budget)
                    .key(&reservation)
                    .arg(ACTUAL.cost_micros)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| OpError::Failed(e.to_string()))?;
                if committed != 1 {
                    return Err(OpError::Failed(format!(
                        "reservation {reservation} is gone"
                    )));
                }
                Ok(())
            }
            _ => Err(OpError::Failed("a hold of another system".into())),
        }
    }
}

/// Redis's view of a hot budget after a run: (held, used) cost µ.
pub async fn redis_budget(driver: &Driver, tenant: &str) -> anyhow::Result<(u64, u64)> {
    let Driver::Redis(connection) = driver else {
        bail!("not a Redis driver");
    };
    let mut connection = connection.clone();
    let (held, used): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(format!("budget/{tenant}"))
        .arg("held")
        .arg("used")
        .query_async(&mut connection)
        .await
        .context("reading the budget from redis")?;
    Ok((held.unwrap_or(0), used.unwrap_or(0)))
}

/// A script handle per call: `redis::Script` hashes its source once, then each invocation
/// sends EVALSHA (and EVAL once, if the server does not know the script yet).
fn redis_script(source: &'static str) -> redis::Script {
    thread_local! {
        static SCRIPTS: std::cell::RefCell<Vec<(&'static str, redis::Script)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRIPTS.with(|scripts| {
        let mut scripts = scripts.borrow_mut();
        if let Some((_, script)) = scripts.iter().find(|(s, _)| std::ptr::eq(*s, source)) {
            return script.clone();
        }
        let script = redis::Script::new(source);
        scripts.push((source, script.clone()));
        script
    })
}

fn put(key: &str, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: 0,
        })),
    }
}

/// One optimistic update of a budget key: read (or reuse the last value seen), compute the
/// new value, and write it in a transaction that succeeds only if the key's mod revision is
/// still the one read; on a lost race the transaction's failure branch returns the current
/// value and we try again. `update` returns None to deny. Returns whether it was applied.
async fn etcd_cas(
    kv: &KvClient<Channel>,
    state: &mut WorkerState,
    budget: &str,
    update: impl Fn(Budget) -> Option<(Budget, Vec<pb::RequestOp>)>,
) -> Result<bool, OpError> {
    let mut kv = kv.clone();
    // A cached value for this key saves the read; otherwise read it (linearizably).
    let (mut mod_revision, mut value) = match &state.etcd_cached {
        Some((key, revision, value)) if key == budget => (*revision, *value),
        _ => etcd_read(&mut kv, budget).await?,
    };
    for attempt in 0..CAS_ATTEMPTS_MAX {
        if attempt > 0 {
            state.conflicts += 1;
        }
        let Some((next, mut ops)) = update(value) else {
            return Ok(false);
        };
        ops.push(put(budget, next.encode()));
        let response = kv
            .txn(cas_request(budget, mod_revision, ops))
            .await
            .map_err(etcd_failed)?
            .into_inner();
        if response.succeeded {
            let revision = response.header.map(|h| h.revision).unwrap_or(0);
            state.etcd_cached = Some((budget.to_owned(), revision, next));
            return Ok(true);
        }
        // Lost the race: the failure branch read the current value.
        (mod_revision, value) = current_of_failed(response);
    }
    state.etcd_cached = None;
    Err(OpError::Failed(format!(
        "etcd: {CAS_ATTEMPTS_MAX} compare-and-swap attempts lost the race"
    )))
}

fn etcd_failed(e: tonic::Status) -> OpError {
    OpError::Failed(format!("etcd: {}", e.message()))
}

/// The budget key's mod revision and value (0 and an empty budget when it does not exist).
async fn etcd_read(kv: &mut KvClient<Channel>, budget: &str) -> Result<(i64, Budget), OpError> {
    let response = kv
        .range(pb::RangeRequest {
            key: budget.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .map_err(etcd_failed)?
        .into_inner();
    Ok(revision_and_value(response.kvs.into_iter().next()))
}

fn revision_and_value(kv: Option<pb::KeyValue>) -> (i64, Budget) {
    match kv {
        Some(kv) => (kv.mod_revision, Budget::parse(&kv.value)),
        None => (0, Budget::default()),
    }
}

/// A transaction that applies `ops` if the budget key's mod revision is still `mod_revision`,
/// and otherwise reads the key.
fn cas_request(budget: &str, mod_revision: i64, ops: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal.into(),
            target: pb::compare::CompareTarget::Mod.into(),
            key: budget.as_bytes().to_vec(),
            // A key that does not exist has mod revision 0.
            target_union: Some(pb::compare::TargetUnion::ModRevision(mod_revision)),
        }],
        success: ops,
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: budget.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
    }
}

/// The budget key's current revision and value, from a failed transaction's range read.
fn current_of_failed(response: pb::TxnResponse) -> (i64, Budget) {
    let current = response
        .responses
        .into_iter()
        .find_map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(range)) => Some(range),
            _ => None,
        });
    revision_and_value(current.and_then(|range| range.kvs.into_iter().next()))
}

/// Checks the arguments make sense for `system`.
pub fn check_target(system: System, cluster: Option<&[String]>) -> anyhow::Result<()> {
    if system != System::Tollgate && cluster.is_none() {
        bail!("--system {system:?} needs --cluster ADDR (only Tollgate runs embedded)");
    }
    Ok(())
}
