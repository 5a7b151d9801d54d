//! Runs whose hot budget runs out (`--budget`, `--budget-runs-out`): what a spend limit is
//! for is the edge, so these runs measure it.
//!
//! - **Exhaustion**: the first denial by the budget (any client, any process), from the
//!   run's start. `ran_out` says whether the cluster agrees: after the run, the room left
//!   (limit - committed - held) is below one estimate per client.
//! - **Pairs/s before exhaustion**: pairs completed from the start of the measured window
//!   until exhaustion, over that time (10 ms buckets).
//! - **Overspend**: committed + held - limit, read from the cluster once every lease has
//!   been returned or has expired (held back to 0), never below 0; for Tollgate it is
//!   cross-checked against the audit trail (the charged amounts of the tenant's
//!   `commit`, `record`, `lease_call` (charged), `expire` (charged) and `lease_expire`
//!   records must add up to committed). `client_overspend` is the clients' own count:
//!   every pair they completed (warm-up included) times its actual, minus the limit; and
//!   `charged_minus_client` compares what the ledger charged with what the clients spent.
//! - **False denials**: a denial by the budget at time t is false if it happened more than
//!   one lease TTL (2 s) before `T_ref`, where `T_ref` is the last successful reserve
//!   (a grant that late proves the ledger had room, which no lease may withhold for more
//!   than a TTL), or the end of the run if the budget never ran out (room of at least one
//!   estimate per client left after the run).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use tollgate_client::{v1, Client};

use super::stats::Timeline;
use super::systems::{self, Account, Driver, Workload, ACTUAL, BUDGET_LIMIT_ID, ESTIMATE};
use super::{BenchArgs, Mode, Ran, RATE_MAX};

/// The calibration run that sizes `--budget-runs-out`: its warm-up and measured seconds.
/// The warm-up is as long as a lease's first settles take (TTL/4, and half a slice): with
/// leases the first second runs on fresh slices, faster than the steady state.
const CALIBRATION_WARMUP_S: f64 = 1.0;
const CALIBRATION_S: f64 = 2.0;
/// The lease TTL the clients ask for (the client's default): the false-denial horizon.
pub const LEASE_TTL: Duration = Duration::from_millis(tollgate_ledger::LEASE_TTL_MS_DEFAULT);
/// Longest wait after a run for every lease to be returned or expire (TTL + grace, and time
/// for a loaded cluster to work through its backlog of settles).
const SETTLE_WAIT: Duration = Duration::from_millis(
    tollgate_ledger::LEASE_TTL_MS_DEFAULT + tollgate_ledger::LEASE_GRACE_MS + 5_000,
);
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Longest a status probe of one node may take.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// What a budget run found at the edge; part of the run's JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BudgetFigures {
    /// The budget's cap, cost µ (a pair holds 1,000 and commits 900).
    pub limit: u64,
    /// Seconds from the start of the measured window to the first denial by the budget.
    pub exhausted_at_s: Option<f64>,
    /// The cluster agrees the budget ran out (room below one estimate per client after).
    pub ran_out: bool,
    /// Pairs per second from the start of the measured window until exhaustion (until the
    /// end if it never ran out).
    pub pairs_s_before_exhaustion: f64,
    /// Seconds from the start of the measured window to the last successful reserve.
    pub last_grant_at_s: Option<f64>,
    /// After the run, once nothing is held (cost µ); None for a system not read back.
    pub committed: Option<u64>,
    pub held: Option<u64>,
    /// committed + held - limit, at least 0 (cost µ).
    pub overspend: Option<u64>,
    /// Every pair the clients completed (warm-up included) times its actual, cost µ, and
    /// how far that is above the limit.
    pub client_spend: u64,
    pub client_overspend: u64,
    /// committed - client_spend (cost µ): above 0, slices charged whole at expiry or
    /// estimates of abandoned calls; below 0, calls the clients completed that the ledger
    /// never charged (spend it cannot see, which would be overspend at the edge).
    pub charged_minus_client: Option<i64>,
    /// Tollgate: the charged amounts of the tenant's audit records (cost µ), whether every
    /// record of the run was still retained, and whether they add up to `committed`.
    pub audit_charged: Option<u64>,
    pub audit_complete: Option<bool>,
    pub audit_matches: Option<bool>,
    /// Denials by the budget over the whole run, and the false ones (see the module).
    pub denials: u64,
    pub false_denials: u64,
    /// Seconds waited after the run until nothing was held.
    pub settle_wait_s: f64,
    /// Why the cluster's side could not be read (then its figures are None).
    pub error: Option<String>,
}

/// Refuses budget flags that cannot work.
pub fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    if args.budget.is_none() && !args.budget_runs_out {
        return Ok(());
    }
    if args.workload != Workload::Hot {
        bail!("--budget and --budget-runs-out size the hot budget: use --workload hot");
    }
    if let Some(budget) = args.budget {
        if !(ESTIMATE.cost_micros..=tollgate_ledger::AMOUNT_MAX).contains(&budget) {
            bail!(
                "--budget must be within {}..={} cost µ",
                ESTIMATE.cost_micros,
                tollgate_ledger::AMOUNT_MAX
            );
        }
    }
    if let Some(rate) = args.budget_rate {
        if !(rate > 0.0 && rate <= RATE_MAX) {
            bail!("--budget-rate must be above 0 and at most {RATE_MAX}");
        }
    }
    if args.mode == Mode::Open {
        bail!("--budget and --budget-runs-out run closed loop: drop --mode open");
    }
    Ok(())
}

/// A tenant name no earlier run used, so every budget run starts from nothing.
fn fresh_tenant(prefix: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{prefix}-{ms}")
}

/// The tenant and budget a run charges: the shared unlimited one, or a fresh tenant with a
/// budget sized by `--budget` or to run out half-way through the measured window.
pub async fn account(
    args: &BenchArgs,
    endpoints: &[String],
    admin: &Driver,
    clients: usize,
) -> anyhow::Result<Account> {
    if args.budget.is_none() && !args.budget_runs_out {
        return Ok(Account {
            leases: args.leases,
            ..Account::unlimited()
        });
    }
    let budget = match args.budget {
        Some(budget) => budget,
        None => {
            let rate = match args.budget_rate {
                Some(rate) => rate,
                None => calibrate(args, endpoints, admin, clients).await?,
            };
            let pairs = (rate * (args.warmup + args.duration / 2.0)).ceil().max(1.0);
            (pairs as u64)
                .saturating_mul(ACTUAL.cost_micros)
                .clamp(ESTIMATE.cost_micros, tollgate_ledger::AMOUNT_MAX)
        }
    };
    eprintln!(
        "budget {budget} cost µ ({} pairs at {} each)",
        budget / ACTUAL.cost_micros,
        ACTUAL.cost_micros
    );
    Ok(Account {
        tenant: fresh_tenant("bench-out"),
        budget,
        leases: args.leases,
    })
}

/// Pairs per second of a short run of the same setup on an unlimited budget (own tenant).
async fn calibrate(
    args: &BenchArgs,
    endpoints: &[String],
    admin: &Driver,
    clients: usize,
) -> anyhow::Result<f64> {
    let account = Account {
        tenant: fresh_tenant("bench-cal"),
        leases: args.leases,
        ..Account::unlimited()
    };
    systems::setup(admin, Workload::Hot, &account).await?;
    let mut spec = super::part_spec(args, endpoints, clients, account, CALIBRATION_S);
    spec.warmup_s = CALIBRATION_WARMUP_S;
    spec.timeline = false;
    let ran = super::execute(args, &spec, &Probe::none()).await?;
    let rate = ran.total.pairs as f64 / CALIBRATION_S;
    eprintln!("calibration: {rate:.0} pairs/s over {CALIBRATION_S} s");
    if ran.total.pairs == 0 {
        bail!(
            "the calibration run completed no pair ({} errors, last: {:?})",
            ran.total.errors,
            ran.total.error_last
        );
    }
    Ok(rate)
}

/// Reads Raft progress and the audit chain head from a Tollgate cluster; idle otherwise.
pub struct Probe {
    client: Option<Client>,
    endpoints: Vec<String>,
}

impl Probe {
    pub fn new(admin: &Driver, endpoints: &[String]) -> Probe {
        Probe {
            client: match admin {
                Driver::Tollgate(client) => Some(client.clone()),
                _ => None,
            },
            endpoints: endpoints.to_vec(),
        }
    }

    pub fn none() -> Probe {
        Probe {
            client: None,
            endpoints: Vec::new(),
        }
    }

    async fn statuses(&self) -> Vec<v1::StatusResponse> {
        let Some(client) = &self.client else {
            return Vec::new();
        };
        let mut statuses = Vec::new();
        for addr in &self.endpoints {
            if let Ok(Ok(status)) = tokio::time::timeout(PROBE_WAIT, client.status(addr)).await {
                statuses.push(status);
            }
        }
        statuses
    }

    /// The highest applied log index of any node (the leader's, in a healthy cluster).
    pub async fn applied_index(&self) -> Option<u64> {
        self.statuses().await.iter().map(|s| s.applied_index).max()
    }

    /// The audit chain's head seq (highest of any node).
    pub async fn chain_head(&self) -> Option<u64> {
        self.statuses().await.iter().map(|s| s.chain_head_seq).max()
    }
}

/// The figures of a budget run; `audit_head_before` is the chain head before it started.
pub async fn figures(
    admin: &Driver,
    account: &Account,
    clients: usize,
    timeline: &Timeline,
    ran: &Ran,
    audit_head_before: Option<u64>,
) -> anyhow::Result<BudgetFigures> {
    let window = &ran.window;
    let from_us = window.offset_us(window.measure_from);
    let end_us = window.offset_us(window.measure_until);
    let seconds = |at_us: u64| (at_us as f64 - from_us as f64) / 1e6;
    let until_us = timeline.first_denial_us.unwrap_or(end_us).min(end_us);
    let (pairs, span_us) = timeline.pairs_between(from_us, until_us);
    let client_spend = timeline.pairs_all.saturating_mul(ACTUAL.cost_micros);
    let mut figures = BudgetFigures {
        limit: account.budget,
        exhausted_at_s: timeline.first_denial_us.map(seconds),
        pairs_s_before_exhaustion: if span_us == 0 {
            0.0
        } else {
            pairs as f64 * 1e6 / span_us as f64
        },
        last_grant_at_s: timeline.last_grant_us.map(seconds),
        client_spend,
        client_overspend: client_spend.saturating_sub(account.budget),
        denials: timeline.denials.iter().sum(),
        ..BudgetFigures::default()
    };
    let started = std::time::Instant::now();
    let read = match admin {
        Driver::Tollgate(client) => match settled_usage(client, &account.tenant).await {
            Ok((committed, held)) => {
                audit_check(client, account, committed, audit_head_before, &mut figures)
                    .await
                    .map(|()| (committed, held))
            }
            Err(error) => Err(error),
        },
        Driver::Redis(_) => systems::redis_budget(admin, &account.tenant)
            .await
            .map(|(held, used)| (used, held)),
        Driver::Etcd(_) => return Ok(figures),
    };
    // A cluster too busy to answer after the run is a finding, not a reason to lose the
    // run's other figures.
    let (committed, held) = match read {
        Ok(read) => read,
        Err(error) => {
            eprintln!("reading the cluster's side of the budget: {error:#}");
            figures.error = Some(format!("{error:#}"));
            figures.settle_wait_s = started.elapsed().as_secs_f64();
            return Ok(figures);
        }
    };
    figures.settle_wait_s = started.elapsed().as_secs_f64();
    figures.committed = Some(committed);
    figures.charged_minus_client =
        Some(i64::try_from(i128::from(committed) - i128::from(client_spend)).unwrap_or(i64::MIN));
    figures.held = Some(held);
    let spent = committed.saturating_add(held);
    figures.overspend = Some(spent.saturating_sub(account.budget));
    let room = account.budget.saturating_sub(spent);
    let never_ran_out = room >= ESTIMATE.cost_micros.saturating_mul(clients as u64);
    figures.ran_out = timeline.first_denial_us.is_some() && !never_ran_out;
    let reference_us = match (never_ran_out, timeline.last_grant_us) {
        (true, _) => end_us,
        (false, last_grant) => last_grant.unwrap_or(0),
    };
    let horizon_us = reference_us.saturating_sub(LEASE_TTL.as_micros() as u64);
    figures.false_denials = timeline.denials_before(horizon_us);
    Ok(figures)
}

/// The budget's committed and held once nothing is held any more (every lease returned or
/// expired), or as they are after `SETTLE_WAIT`.
async fn settled_usage(client: &Client, tenant: &str) -> anyhow::Result<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let usage = client
            .usage(tenant, None, None)
            .await
            .context("reading the budget's usage")?;
        let budget = usage
            .usage
            .iter()
            .find(|u| u.limit.as_ref().is_some_and(|l| l.id == BUDGET_LIMIT_ID))
            .context("the usage has no bench budget")?;
        if budget.held == 0 || tokio::time::Instant::now() >= deadline {
            return Ok((budget.used, budget.held));
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// What an audit record charged to the budget (cost µ): commits, records, calls charged
/// inside a lease, and expiries that charged.
fn charged(record: &v1::AuditRecord) -> u64 {
    let event: serde_json::Value = serde_json::from_str(&record.event_json).unwrap_or_default();
    // Unit variants are strings, others a one-key object.
    let (name, body) = match &event {
        serde_json::Value::String(name) => (name.as_str(), &serde_json::Value::Null),
        serde_json::Value::Object(map) => match map.iter().next() {
            Some((name, body)) => (name.as_str(), body),
            None => return 0,
        },
        _ => return 0,
    };
    let flag = |key: &str| body.get(key).and_then(serde_json::Value::as_bool);
    let counts = match name.to_ascii_lowercase().replace('_', "").as_str() {
        "commit" | "record" | "leaseexpire" => true,
        "leasecall" | "expire" => flag("charged").unwrap_or(false),
        _ => false,
    };
    if counts {
        record.amounts.as_ref().map_or(0, |a| a.cost_micros)
    } else {
        0
    }
}

/// Sums the tenant's charged audit amounts and checks they are all still retained.
async fn audit_check(
    client: &Client,
    account: &Account,
    committed: u64,
    head_before: Option<u64>,
    figures: &mut BudgetFigures,
) -> anyhow::Result<()> {
    let query = v1::AuditQueryRequest {
        tenant: account.tenant.clone(),
        ..Default::default()
    };
    let mut export = client
        .export_audit(query)
        .await
        .context("exporting the audit trail")?;
    let mut total: u64 = 0;
    while let Some(record) = export.next().await.context("exporting the audit trail")? {
        total = total.saturating_add(charged(&record));
    }
    // The oldest record still retained (any tenant): if it is newer than the chain head
    // before the run, some of the run's records were dropped and the sum is short.
    let oldest = client
        .query_audit(v1::AuditQueryRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .context("reading the oldest audit record")?;
    let complete = match (head_before, oldest.first()) {
        (Some(head), Some(first)) => first.seq <= head.saturating_add(1),
        _ => false,
    };
    figures.audit_charged = Some(total);
    figures.audit_complete = Some(complete);
    figures.audit_matches = Some(total == committed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event_json: &str) -> v1::AuditRecord {
        v1::AuditRecord {
            event_json: event_json.into(),
            amounts: Some(v1::Amounts {
                cost_micros: 900,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_records_that_charge_the_budget_are_summed() {
        let charging = [
            r#"{"commit":{"overrun":false,"late":false,"abandoned":false,"price":null}}"#,
            r#"{"record":{"price":null,"offline":false}}"#,
            r#"{"lease_call":{"overrun":false,"charged":true}}"#,
            r#"{"expire":{"charged":true}}"#,
            r#""lease_expire""#,
        ];
        let free = [
            r#""grant""#,
            r#""lease_grant""#,
            r#"{"lease_call":{"overrun":false,"charged":false}}"#,
            r#"{"expire":{"charged":false}}"#,
            r#"{"lease_return":{"recalled":true}}"#,
            r#""release""#,
            "not json",
        ];
        for event in charging {
            assert_eq!(charged(&record(event)), 900, "{event}");
        }
        for event in free {
            assert_eq!(charged(&record(event)), 0, "{event}");
        }
    }

    #[test]
    fn pairs_before_exhaustion_count_whole_buckets_of_the_measured_window() {
        let mut timeline = Timeline::new(3_000_000);
        for at_ms in (0..3_000).step_by(5) {
            timeline.pair(at_ms * 1_000, at_ms * 1_000);
        }
        timeline.denial(2_000_000);
        // Measured from 1 s, exhausted at 2 s: 200 pairs (one per 5 ms) in 1 s.
        let (pairs, span_us) = timeline.pairs_between(1_000_000, 2_000_000);
        assert_eq!((pairs, span_us), (200, 1_000_000));
        assert_eq!(timeline.first_denial_us, Some(2_000_000));
        assert_eq!(timeline.denials_before(2_000_000), 0);
        assert_eq!(timeline.denials_before(2_010_000), 1);
    }
}
