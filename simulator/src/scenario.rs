//! Scenario files: tenants, limits, agents and their behaviour, faults, expectations.
//!
//! A scenario is TOML (see `simulator/scenarios/`). Time in a scenario is simulated: the run
//! is a sequence of steps of `step_ms` each; in every step each agent's workers make their
//! calls, then the simulator advances the cluster's shifted clock by `step_ms`. Parsing is
//! strict (unknown fields are errors), and `validate` bounds every number so that a typo
//! cannot start a million calls.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tollgate_client::v1;

/// Most steps a scenario may run.
pub const STEPS_MAX: u64 = 2_000;
/// Most reserve calls one agent (all its workers together) may make in one step.
pub const CALLS_PER_STEP_MAX: u64 = 256;
/// Most calls a scenario may make in total (the point is the cutoff, not volume).
pub const CALLS_MAX: u64 = 5_000;
/// Most agents (after `count` expansion) and workers per agent.
pub const AGENTS_MAX: u64 = 200;
pub const WORKERS_MAX: u64 = 64;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// One line for people: what this reproduces.
    pub description: String,
    /// What the run proves: that detection stops a runaway, that a limit is exact, or that
    /// an alert warns of a leak no detector can see before a budget stops it.
    pub proves: Proves,
    /// Simulated time per step, milliseconds.
    pub step_ms: u64,
    pub steps: u64,
    /// Simulated time of day (UTC, ms after midnight) at which step 0 starts; the embedded
    /// cluster's clock is moved forward to the next such moment before the run.
    #[serde(default = "default_start_of_day_ms")]
    pub start_of_day_ms: u64,
    #[serde(default)]
    pub tenants: Vec<TenantSpec>,
    #[serde(default)]
    pub limits: Vec<LimitSpecToml>,
    /// Spend recorded before step 0 (e.g. a budget that is nearly spent).
    #[serde(default)]
    pub prefill: Vec<Prefill>,
    pub agents: Vec<AgentSpec>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    pub expect: Expect,
}

fn default_start_of_day_ms() -> u64 {
    1_000
}

/// What a scenario proves, which decides what must cut its runaway off.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Proves {
    /// A runaway is tripped by runaway detection (repetition or velocity) before any hard
    /// limit: `expect.cutoff_by` names a trip.
    Detection,
    /// A hard limit holds exactly (a boundary, a window, an overrun): `expect.cutoff_by`
    /// names the limit.
    Limit,
    /// Spend that looks like normal work: a soft-threshold alert fires well before a budget
    /// stops it (`expect.alert_before_pct`).
    Alert,
}

impl Proves {
    pub fn label(self) -> &'static str {
        match self {
            Proves::Detection => "detection",
            Proves::Limit => "limit",
            Proves::Alert => "alert",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    /// `charge` (default) or `release`.
    #[serde(default)]
    pub expiry: Expiry,
    /// Runaway detection: each setting left out is the ledger's default (see the SPEC).
    #[serde(default = "default_repeat_max")]
    pub repeat_max: u32,
    #[serde(default = "default_repeat_window_ms")]
    pub repeat_window_ms: u64,
    #[serde(default = "default_velocity_factor")]
    pub velocity_factor: u32,
    #[serde(default = "default_velocity_window_ms")]
    pub velocity_window_ms: u64,
    #[serde(default = "default_velocity_dimension")]
    pub velocity_dimension: DimensionToml,
    #[serde(default = "default_velocity_floor")]
    pub velocity_floor: u64,
    #[serde(default)]
    pub trip_cooldown_ms: u64,
    /// Clients may hold leases: the tenant's agents then call through the client's own
    /// reserve, which decides calls inside a lease (docs/SPEC.md, "Leases").
    #[serde(default)]
    pub leases: bool,
}

fn default_repeat_max() -> u32 {
    tollgate_ledger::REPEAT_MAX_DEFAULT
}

fn default_repeat_window_ms() -> u64 {
    tollgate_ledger::REPEAT_WINDOW_MS_DEFAULT
}

fn default_velocity_factor() -> u32 {
    tollgate_ledger::VELOCITY_FACTOR_DEFAULT
}

fn default_velocity_window_ms() -> u64 {
    tollgate_ledger::VELOCITY_WINDOW_MS_DEFAULT
}

fn default_velocity_floor() -> u64 {
    tollgate_ledger::VELOCITY_FLOOR_DEFAULT
}

fn default_velocity_dimension() -> DimensionToml {
    DimensionToml::Cost
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Expiry {
    #[default]
    Charge,
    Release,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DimensionToml {
    Tokens,
    Cost,
    Calls,
    Concurrency,
}

impl DimensionToml {
    pub fn ledger(self) -> tollgate_ledger::Dimension {
        use tollgate_ledger::Dimension;
        match self {
            DimensionToml::Tokens => Dimension::Tokens,
            DimensionToml::Cost => Dimension::Cost,
            DimensionToml::Calls => Dimension::Calls,
            DimensionToml::Concurrency => Dimension::Concurrency,
        }
    }

    fn wire(self) -> v1::Dimension {
        match self {
            DimensionToml::Tokens => v1::Dimension::Tokens,
            DimensionToml::Cost => v1::Dimension::Cost,
            DimensionToml::Calls => v1::Dimension::Calls,
            DimensionToml::Concurrency => v1::Dimension::Concurrency,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WindowToml {
    Lifetime,
    Hour,
    Day,
}

impl WindowToml {
    /// Length of the calendar window; None for lifetime.
    pub fn length_ms(self) -> Option<u64> {
        match self {
            WindowToml::Lifetime => None,
            WindowToml::Hour => Some(3_600_000),
            WindowToml::Day => Some(86_400_000),
        }
    }

    fn wire(self) -> v1::Window {
        match self {
            WindowToml::Lifetime => v1::Window::Lifetime,
            WindowToml::Hour => v1::Window::Hour,
            WindowToml::Day => v1::Window::Day,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpecToml {
    pub tenant: String,
    pub id: String,
    /// `tenant`, `each-agent`, `agent:NAME`, `tool-per-agent:TOOL`, `tool-tenant:TOOL`.
    pub scope: String,
    pub dimension: DimensionToml,
    /// `budget` (with `window` and `amount`), `rate` (`amount` per `period_ms`, `burst`) or
    /// `concurrency` (`max`).
    pub kind: String,
    pub window: Option<WindowToml>,
    pub amount: Option<u64>,
    pub period_ms: Option<u64>,
    pub burst: Option<u64>,
    pub max: Option<u64>,
    /// A budget's soft thresholds in percent; absent: 50, 80, 95; empty: none.
    pub thresholds: Option<Vec<u32>>,
}

/// A limit's kind, with exactly the fields it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKindToml {
    Budget {
        window: WindowToml,
        amount: u64,
    },
    Rate {
        amount: u64,
        period_ms: u64,
        burst: u64,
    },
    Concurrency {
        max: u64,
    },
}

impl LimitSpecToml {
    pub fn kind(&self) -> anyhow::Result<LimitKindToml> {
        let need = |value: Option<u64>, field: &str| {
            value.with_context(|| format!("limit {}: kind {} needs {field}", self.id, self.kind))
        };
        Ok(match self.kind.as_str() {
            "budget" => LimitKindToml::Budget {
                window: self.window.unwrap_or(WindowToml::Lifetime),
                amount: need(self.amount, "amount")?,
            },
            "rate" => LimitKindToml::Rate {
                amount: need(self.amount, "amount")?,
                period_ms: need(self.period_ms, "period_ms")?,
                burst: need(self.burst, "burst")?,
            },
            "concurrency" => LimitKindToml::Concurrency {
                max: need(self.max, "max")?,
            },
            other => bail!(
                "limit {}: kind {other:?} is not one of budget, rate, concurrency",
                self.id
            ),
        })
    }

    /// The kind of a validated limit.
    pub fn kind_checked(&self) -> LimitKindToml {
        self.kind().unwrap_or(LimitKindToml::Concurrency { max: 0 })
    }

    pub fn is_tenant_scope(&self) -> bool {
        self.scope == "tenant"
    }

    pub fn to_wire(&self) -> anyhow::Result<v1::Limit> {
        use v1::scope::Scope;
        let scope = match self.scope.split_once(':') {
            None if self.scope == "tenant" => Scope::Tenant(v1::Empty {}),
            None if self.scope == "each-agent" => Scope::EachAgent(v1::Empty {}),
            None if self.scope == "each-session" => Scope::EachSession(v1::Empty {}),
            Some(("agent", name)) => Scope::Agent(name.into()),
            Some(("tool-per-agent", tool)) => Scope::ToolPerAgent(tool.into()),
            Some(("tool-tenant", tool)) => Scope::ToolTenant(tool.into()),
            _ => bail!(
                "limit {}: scope {:?} is not one of tenant, each-agent, agent:NAME, tool-per-agent:TOOL, tool-tenant:TOOL, each-session",
                self.id,
                self.scope
            ),
        };
        let kind = match self.kind()? {
            LimitKindToml::Budget { window, amount } => v1::limit::Kind::Budget(v1::Budget {
                window: window.wire().into(),
                amount,
            }),
            LimitKindToml::Rate {
                amount,
                period_ms,
                burst,
            } => v1::limit::Kind::Rate(v1::Rate {
                amount,
                period_ms,
                burst,
            }),
            LimitKindToml::Concurrency { max } => {
                v1::limit::Kind::Concurrency(v1::Concurrency { max })
            }
        };
        Ok(v1::Limit {
            id: self.id.clone(),
            scope: Some(v1::Scope { scope: Some(scope) }),
            dimension: self.dimension.wire().into(),
            kind: Some(kind),
            thresholds: self
                .thresholds
                .clone()
                .map(|percent| v1::AlertThresholds { percent }),
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prefill {
    pub tenant: String,
    pub agent: String,
    pub tool: String,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_micros: u64,
    #[serde(default)]
    pub calls: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The agent the scenario is about: it must be cut off.
    Runaway,
    /// An agent of the same tenant that must still be served.
    #[default]
    WellBehaved,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FingerprintMode {
    /// No fingerprint: repetition detection cannot see this agent.
    #[default]
    None,
    /// The same tool with the same arguments every time (a loop).
    Same,
    /// Different arguments every call.
    Unique,
    /// The same arguments but a page counter that grows with every call (a loop paging
    /// through results it never uses), fingerprinted as a worker would: with the client's
    /// `fingerprint_ignoring`, the page left out.
    PageCounter,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub tenant: String,
    /// With `count > 1`, agents are named `NAME-0`, `NAME-1`, ...
    pub name: String,
    #[serde(default = "one")]
    pub count: u64,
    #[serde(default)]
    pub role: Role,
    pub tool: String,
    /// Workers running this agent, each making its calls concurrently with the others.
    #[serde(default = "one")]
    pub workers: u64,
    /// Reserve calls each worker makes per step, one after the other (a retry loop without
    /// backoff makes several).
    #[serde(default = "one")]
    pub calls_per_step: u64,
    /// Steps between two rounds of calls of this agent (1: every step).
    #[serde(default = "one")]
    pub every_steps: u64,
    /// First and last step (inclusive) in which the agent calls.
    #[serde(default)]
    pub from_step: u64,
    #[serde(default = "u64_max")]
    pub until_step: u64,
    /// Most reserve calls the agent makes over the run (all workers).
    #[serde(default = "u64_max")]
    pub calls_max: u64,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_micros: u64,
    #[serde(default = "one")]
    pub calls: u64,
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// Actual spend as a percentage of the estimate (above 100: an overrun).
    #[serde(default = "hundred")]
    pub actual_pct: u64,
    #[serde(default)]
    pub fingerprint: FingerprintMode,
    /// Every granted call spawns this many sub-calls in the next step (fan-out).
    #[serde(default)]
    pub fanout: u64,
    /// Steps a granted call runs before it commits (0: within the same step).
    #[serde(default)]
    pub call_steps: u64,
    /// Percentage of granted calls whose worker dies before commit (a zombie: the
    /// reservation expires).
    #[serde(default)]
    pub die_pct: u64,
    /// A worker stops calling after this many denials in a row (0: never). A real runaway
    /// never stops; a scenario stops it a few denials after its cutoff because the calls
    /// after that prove nothing more and cost CI time.
    #[serde(default)]
    pub give_up_after_denials: u64,
    /// The session (one run of a task) every call of this agent names: agents that name
    /// the same one share the tenant's `each-session` limits.
    #[serde(default)]
    pub session: Option<String>,
}

fn one() -> u64 {
    1
}
fn hundred() -> u64 {
    100
}
fn u64_max() -> u64 {
    u64::MAX
}
fn default_ttl_ms() -> u64 {
    60_000
}

impl AgentSpec {
    /// The names this spec expands to.
    pub fn names(&self) -> Vec<String> {
        if self.count <= 1 {
            vec![self.name.clone()]
        } else {
            (0..self.count)
                .map(|i| format!("{}-{i}", self.name))
                .collect()
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Stop the current leader as a crash would.
    KillLeader,
    /// Start every stopped node again.
    RestartKilled,
    /// Cut the current leader off from its peers (a paused node: it keeps running).
    IsolateLeader,
    /// Cut one follower off from its peers.
    IsolateFollower,
    /// Reconnect every isolated node.
    HealAll,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Before the calls of this step.
    pub at_step: u64,
    pub kind: FaultKind,
}

/// What must hold after the run. Unset expectations are not checked.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The budget the table and chart report spend against (`tenant` scope).
    pub budget: String,
    /// A runaway agent must be denied at some point.
    #[serde(default)]
    pub cutoff: bool,
    /// What must cut off every runaway agent that is denied: `tripped` (any cause),
    /// `tripped:repetition`, `tripped:velocity`, `tripped:shape-velocity`, `frozen`, or
    /// the id of a limit.
    pub cutoff_by: Option<String>,
    /// Runaway agents denied at least once, exactly.
    pub runaways_cut_off: Option<u64>,
    /// committed + held of `budget` when the runaway is first denied, exactly (where the
    /// run is deterministic).
    pub spend_at_cutoff: Option<u64>,
    /// committed + held of `budget` when the runaway is first denied, at most this percent
    /// of the budget (above 100 only where overruns are expected).
    pub spend_at_cutoff_max_pct: Option<u64>,
    /// Reserve calls a runaway gets granted between its first repeated fingerprint and its
    /// trip, at most.
    pub calls_after_first_repeat_max: Option<u64>,
    /// The same, exactly, for every runaway agent that repeated a fingerprint.
    pub calls_after_first_repeat: Option<u64>,
    /// Simulated milliseconds from the runaway's first call to its cutoff, at most.
    pub time_to_cutoff_max_ms: Option<u64>,
    /// Well-behaved agents' reserve calls granted, at least this percent.
    pub well_behaved_served_min_pct: Option<u64>,
    /// Reserve calls granted to runaways over the whole run, at most.
    pub runaway_grants_max: Option<u64>,
    /// The same, exactly.
    pub runaway_grants: Option<u64>,
    /// Reservations that expired and were charged, at least.
    pub expired_charged_min: Option<u64>,
    /// The same, exactly.
    pub expired_charged: Option<u64>,
    /// Committed spend of `budget` at the end (current window), exactly.
    pub spend_final: Option<u64>,
    /// A soft-threshold crossing of `budget` is in the audit trail before the cutoff, at
    /// committed spend below this percent of it.
    pub alert_before_pct: Option<u64>,
    /// The thresholds of `budget` crossed over the run, in order, exactly.
    pub thresholds_crossed: Option<Vec<u32>>,
    /// A runaway is granted again after its first cutoff (a new window).
    #[serde(default)]
    pub served_again_after_cutoff: bool,
}

/// A scenario and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: String,
    pub scenario: Scenario,
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let scenario: Scenario =
        toml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))?;
    scenario
        .validate()
        .with_context(|| format!("scenario {}", path.display()))?;
    Ok(Loaded {
        path: path.display().to_string(),
        scenario,
    })
}

impl Scenario {
    /// Checks bounds and cross-references, so a run never starts on a broken file.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_timing()?;
        self.validate_limits()?;
        self.validate_budget()?;
        self.validate_agents()?;
        self.validate_leases()?;
        if !self.agents.iter().any(|a| a.role == Role::Runaway) && self.expect.cutoff {
            bail!("expect.cutoff is set but no agent has role runaway");
        }
        self.validate_proves()
    }

    /// The expectations say honestly what the scenario proves: a detection scenario
    /// expects a trip, a limit scenario a limit, an alert scenario an early alert.
    fn validate_proves(&self) -> anyhow::Result<()> {
        let by = self.expect.cutoff_by.as_deref().unwrap_or("");
        let tripped = by == "tripped" || by.starts_with("tripped:");
        if let Some(cause) = by.strip_prefix("tripped:") {
            if !["repetition", "velocity", "shape-velocity"].contains(&cause) {
                bail!(
                    "expect.cutoff_by {by:?}: a trip's cause is repetition, velocity or \
                     shape-velocity"
                );
            }
        }
        let is_limit = self.limits.iter().any(|l| l.id == by);
        match self.proves {
            Proves::Detection if !tripped => {
                bail!("proves = detection needs expect.cutoff_by = tripped[:repetition|:velocity]")
            }
            Proves::Limit if !is_limit => {
                bail!("proves = limit needs expect.cutoff_by naming one of the scenario's limits")
            }
            Proves::Alert if self.expect.alert_before_pct.is_none() => {
                bail!("proves = alert needs expect.alert_before_pct")
            }
            _ if by == "tripped:repetition" => self.validate_repeats_expected(),
            _ => Ok(()),
        }
    }

    /// A repetition trip must be expected within the configured count: at most
    /// `repeat_max - 2` grants between a runaway's first repeat and its trip.
    fn validate_repeats_expected(&self) -> anyhow::Result<()> {
        let expected = self
            .expect
            .calls_after_first_repeat
            .or(self.expect.calls_after_first_repeat_max)
            .context(
                "expect.cutoff_by = tripped:repetition needs expect.calls_after_first_repeat",
            )?;
        for agent in self.agents.iter().filter(|a| a.role == Role::Runaway) {
            let Some(tenant) = self.tenants.iter().find(|t| t.name == agent.tenant) else {
                continue;
            };
            let allowed = u64::from(tenant.repeat_max.saturating_sub(2));
            if expected > allowed {
                bail!(
                    "expect.calls_after_first_repeat {expected} is more than tenant {}'s repeat_max {} allows ({allowed})",
                    tenant.name,
                    tenant.repeat_max
                );
            }
        }
        Ok(())
    }

    /// A leased agent commits each call as soon as it is granted: the client decides it
    /// inside the lease, so calls that span steps (and sessions, which leases never carry)
    /// are refused rather than silently run per call.
    fn validate_leases(&self) -> anyhow::Result<()> {
        for agent in &self.agents {
            let leased = self
                .tenants
                .iter()
                .any(|t| t.name == agent.tenant && t.leases);
            if leased && (agent.call_steps > 0 || agent.session.is_some()) {
                bail!(
                    "agent {} of leased tenant {} has call_steps or a session; leased agents commit each call at once and carry no session",
                    agent.name,
                    agent.tenant
                );
            }
        }
        Ok(())
    }

    fn validate_timing(&self) -> anyhow::Result<()> {
        if self.steps == 0 || self.steps > STEPS_MAX {
            bail!("steps is {}, must be 1..={STEPS_MAX}", self.steps);
        }
        if self.step_ms == 0 {
            bail!("step_ms must be above 0");
        }
        if self.start_of_day_ms >= 86_400_000 {
            bail!("start_of_day_ms must be below 86_400_000 (one day)");
        }
        Ok(())
    }

    fn tenant_known(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|s| s.name == tenant)
    }

    fn validate_limits(&self) -> anyhow::Result<()> {
        for limit in &self.limits {
            if !self.tenant_known(&limit.tenant) {
                bail!("limit {} names unknown tenant {}", limit.id, limit.tenant);
            }
            limit.to_wire()?;
        }
        Ok(())
    }

    /// `expect.budget` names a tenant-scope budget: the one the run's metrics follow.
    fn validate_budget(&self) -> anyhow::Result<()> {
        let budget = self
            .limits
            .iter()
            .find(|l| l.id == self.expect.budget)
            .with_context(|| format!("expect.budget names unknown limit {}", self.expect.budget))?;
        if !budget.is_tenant_scope()
            || !matches!(budget.kind_checked(), LimitKindToml::Budget { .. })
        {
            bail!(
                "expect.budget {} must be a budget with scope tenant",
                self.expect.budget
            );
        }
        Ok(())
    }

    /// Each agent on its own, then the totals over all of them.
    fn validate_agents(&self) -> anyhow::Result<()> {
        let mut agents = 0;
        let mut calls_total: u64 = 0;
        for agent in &self.agents {
            let per_step = self.validate_agent(agent)?;
            agents += agent.count;
            let calls = per_step
                .saturating_mul(self.steps)
                .min(agent.calls_max)
                .saturating_mul(agent.count);
            calls_total = calls_total.saturating_add(calls);
        }
        if agents > AGENTS_MAX {
            bail!("{agents} agents, above AGENTS_MAX ({AGENTS_MAX})");
        }
        // Fan-out is bounded by CALLS_PER_STEP_MAX per step, which the estimate ignores.
        if calls_total > CALLS_MAX {
            bail!(
                "up to {calls_total} calls, above CALLS_MAX ({CALLS_MAX}); cap the agents with calls_max"
            );
        }
        Ok(())
    }

    /// One agent's bounds; returns its calls per step (workers x calls_per_step).
    fn validate_agent(&self, agent: &AgentSpec) -> anyhow::Result<u64> {
        if !self.tenant_known(&agent.tenant) {
            bail!("agent {} names unknown tenant {}", agent.name, agent.tenant);
        }
        if agent.count == 0 || agent.workers == 0 || agent.workers > WORKERS_MAX {
            bail!(
                "agent {}: count must be at least 1 and workers 1..={WORKERS_MAX}",
                agent.name
            );
        }
        if agent.every_steps == 0 {
            bail!("agent {}: every_steps must be at least 1", agent.name);
        }
        let per_step = agent.workers.saturating_mul(agent.calls_per_step);
        if per_step > CALLS_PER_STEP_MAX {
            bail!(
                "agent {}: workers x calls_per_step is {per_step}, above CALLS_PER_STEP_MAX ({CALLS_PER_STEP_MAX})",
                agent.name
            );
        }
        Ok(per_step)
    }

    /// Simulated span of the run, from step 0 to the end of the last step.
    pub fn span_ms(&self) -> u64 {
        self.steps.saturating_mul(self.step_ms)
    }

    /// Whether the run needs a clock the simulator controls: anything longer than a minute
    /// of simulated time, expiries, or calendar windows.
    pub fn needs_time_control(&self) -> bool {
        self.span_ms() > 60_000
            || self.agents.iter().any(|a| a.die_pct > 0)
            || self.limits.iter().any(|l| {
                matches!(l.kind_checked(), LimitKindToml::Budget { window, .. } if window != WindowToml::Lifetime)
            })
    }
}
