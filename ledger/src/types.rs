//! The ledger's vocabulary: ids, amounts, limits, commands and outcomes.
//!
//! These types travel through the Raft log (serde), so changing their shape changes the log
//! and snapshot format: bump `SNAPSHOT_FORMAT_VERSION` when you do.
//!
//! The enums an audit record carries are snake_case in JSON, the audit export's schema
//! (`AuditRecord`), and still read their older CamelCase names. Postcard, which the log,
//! snapshots and the audit hash use, encodes variants by index: names never reach it.

use serde::{Deserialize, Serialize};
use std::fmt;

use compact_str::CompactString;

/// Longest id (tenant, agent, tool, limit, request, fingerprint) a client may send, in bytes;
/// longer ids are rejected before they reach the log.
pub const ID_BYTES_MAX: usize = 128;
/// Largest single amount (tokens, cost micros, calls, or a limit's amount) accepted on input:
/// 10^15 (a billion USD in micros). Sums of such amounts cannot overflow u64 for a long time,
/// and the ledger still saturates.
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Shortest reservation TTL: a call that completes faster than this is not a real call.
pub const TTL_MS_MIN: u64 = 100;
/// Longest reservation TTL: one hour. A reservation is a hold on live budget; longer holds
/// starve other agents and are almost always a bug in the caller.
pub const TTL_MS_MAX: u64 = 3_600_000;
/// Longest rate period a limit may use: one week.
pub const RATE_PERIOD_MS_MAX: u64 = 7 * 86_400_000;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(CompactString);

        impl $name {
            /// Checks length and characters; the one way to build this id from input.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
                let value = value.into();
                validate_id(stringify!($name), &value)?;
                Ok(Self(CompactString::from(value)))
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The id's bytes (printable ASCII once validated); no UTF-8 check.
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }

            /// Rechecks an id that arrived through serde, which does not run `new`.
            pub fn validate(&self) -> Result<(), InvalidInput> {
                let bytes = self.0.as_bytes();
                if !bytes.is_empty()
                    && bytes.len() <= ID_BYTES_MAX
                    && all_ascii_graphic(bytes)
                {
                    return Ok(());
                }
                validate_id(stringify!($name), self.0.as_str())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.as_str())
            }
        }
    };
}

id_type!(
    /// An organisation or account; isolated from every other tenant.
    TenantId
);
id_type!(
    /// One autonomous actor of a tenant (e.g. `support-bot`); many workers may run it.
    AgentId
);
id_type!(
    /// What a call is for: `llm:gpt-x`, `search`, `db:orders.write`.
    ToolId
);
id_type!(
    /// The operator's name for a limit, unique within its tenant.
    LimitId
);
id_type!(
    /// A model as a tenant's price table names it (`gpt-4o`); `*` is the fallback entry.
    ModelId
);
id_type!(
    /// Client-chosen id of a mutating request; a retry with the same id has no second effect.
    RequestId
);
id_type!(
    /// One run of an agent on one task, named by the client (`ticket-4711`): every worker
    /// that serves the task passes the same name, so limits of scope `EachSession` see the
    /// whole run however it was spread or restarted.
    SessionId
);

/// Ids are printable ASCII without spaces, 1 to `ID_BYTES_MAX` bytes: they appear in logs,
/// metrics labels and audit exports, where control characters would do harm.
pub(super) fn validate_id(kind: &'static str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput(format!("{kind} is empty")));
    }
    if value.len() > ID_BYTES_MAX {
        return Err(InvalidInput(format!(
            "{kind} is {} bytes, longer than ID_BYTES_MAX ({ID_BYTES_MAX})",
            value.len()
        )));
    }
    // Bytes first (eight at a time); chars only to name the culprit.
    if !all_ascii_graphic(value.as_bytes()) {
        if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(InvalidInput(format!(
                "{kind} contains {c:?}; ids are printable ASCII without spaces"
            )));
        }
    }
    Ok(())
}

/// Whether every byte is printable ASCII other than space (0x21..=0x7E), eight bytes at a
/// time: every command carries four or five ids, so this check runs on every byte of every
/// request that reaches the log.
fn all_ascii_graphic(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A word whose bytes are all below 0x80 has a byte below 0x21 iff subtracting 0x21 from
    // each sets a high bit, and a 0x7F iff adding 1 does (a borrow or carry only crosses
    // into the next byte after a byte that is already bad).
    let bad =
        |word: u64| (word | word.wrapping_add(ONES) | word.wrapping_sub(0x21 * ONES)) & HIGH != 0;
    let words_ok = bytes.chunks_exact(8).all(|chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        !bad(u64::from_ne_bytes(word))
    });
    // The tail: the last eight bytes again, overlapping the words checked (a fixed-size
    // load, where copying the remainder into a padded word cost a call to memcpy per id);
    // an id shorter than a word is padded with a graphic byte.
    let tail = match bytes.len().checked_sub(8) {
        Some(at) => {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..]);
            word
        }
        None => {
            let mut word = [b'!'; 8];
            for (into, &byte) in word.iter_mut().zip(bytes) {
                *into = byte;
            }
            word
        }
    };
    words_ok && !bad(u64::from_ne_bytes(tail))
}

/// Bad input, found without looking at state: maps to INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Issued by the ledger per tenant (1, 2, 3, ... in the tenant's log order), unique within
/// the tenant for the life of the cluster, and telling nothing of other tenants' traffic.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// What a call spends. `cost_micros` is integer micro-units of the tenant's currency
/// (1 USD = 1_000_000); never floating point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Amounts {
    pub tokens: u64,
    pub cost_micros: u64,
    pub calls: u64,
}

impl Amounts {
    pub fn get(&self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::Tokens => self.tokens,
            Dimension::Cost => self.cost_micros,
            Dimension::Calls => self.calls,
            // A reservation occupies one slot of concurrency, whatever it spends.
            Dimension::Concurrency => 1,
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), InvalidInput> {
        for (name, value) in [
            ("tokens", self.tokens),
            ("cost_micros", self.cost_micros),
            ("calls", self.calls),
        ] {
            if value > AMOUNT_MAX {
                return Err(InvalidInput(format!(
                    "{what}.{name} is {value}, above AMOUNT_MAX ({AMOUNT_MAX})"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    #[serde(alias = "Tokens")]
    Tokens,
    #[serde(alias = "Cost")]
    Cost,
    #[serde(alias = "Calls")]
    Calls,
    /// Reservations in flight; only concurrency limits use it.
    #[serde(alias = "Concurrency")]
    Concurrency,
}

/// A budget's accounting window. Calendar windows are UTC and reset at their boundary;
/// weeks start on Monday 00:00 UTC (ISO 8601).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    #[serde(alias = "Lifetime")]
    Lifetime,
    #[serde(alias = "Hour")]
    Hour,
    #[serde(alias = "Day")]
    Day,
    #[serde(alias = "Week")]
    Week,
    #[serde(alias = "Month")]
    Month,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// At most `amount` of committed + held spend in the window.
    #[serde(alias = "Budget")]
    Budget { window: Window, amount: u64 },
    /// A smooth rate of `amount` per `period_ms`, allowing bursts up to `burst` (GCRA).
    #[serde(alias = "Rate")]
    Rate {
        amount: u64,
        period_ms: u64,
        burst: u64,
    },
    /// At most `max` reservations in flight.
    #[serde(alias = "Concurrency")]
    Concurrency { max: u64 },
    /// Calls only within `ms` of the subject's first call (scope `EachSession` only; its
    /// dimension is `Calls`).
    Duration { ms: u64 },
}

/// Where a limit attaches. A call is made by (tenant, agent, tool).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The tenant as a whole: every call of every agent counts.
    #[serde(alias = "Tenant")]
    Tenant,
    /// Every agent of the tenant, each separately (the default for agents).
    #[serde(alias = "EachAgent")]
    EachAgent,
    /// One named agent; replaces the `EachAgent` limits of the same dimension and kind.
    #[serde(alias = "Agent")]
    Agent(AgentId),
    /// A tool, counted for each agent separately.
    #[serde(alias = "ToolPerAgent")]
    ToolPerAgent(ToolId),
    /// A tool, summed over the whole tenant.
    #[serde(alias = "ToolTenant")]
    ToolTenant(ToolId),
    /// Every session of the tenant, each separately; applies only to calls that name a
    /// session. A session is created on its first call and forgotten `SESSION_IDLE_MS`
    /// after its last.
    EachSession,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitSpec {
    pub id: LimitId,
    pub scope: Scope,
    pub dimension: Dimension,
    pub kind: LimitKind,
    /// Soft thresholds (budgets only): crossing one is audited, never denied. Absent from
    /// an older export: the defaults.
    #[serde(default)]
    pub thresholds: crate::Thresholds,
}

/// What happens to a reservation that outlives its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ExpiryPolicy {
    /// Charge the estimate: the call may have happened and its worker died (fail safe).
    #[default]
    Charge,
    /// Release the hold: nothing is charged.
    Release,
}

/// Default repetition: the same fingerprint 5 times within 10 minutes trips the agent. A
/// loop repeats within seconds; a tool polled every few minutes never reaches it.
pub const REPEAT_MAX_DEFAULT: u32 = 5;
pub const REPEAT_WINDOW_MS_DEFAULT: u64 = 600_000;
/// Default velocity: spend in one minute more than 10 times the agent's own average per
/// minute, and more than the floor, trips it.
pub const VELOCITY_FACTOR_DEFAULT: u32 = 10;
pub const VELOCITY_WINDOW_MS_DEFAULT: u64 = 60_000;
/// $10 of cost in a minute: what an agent with no history may spend before velocity
/// judges it (and the least spend per minute that ever trips).
pub const VELOCITY_FLOOR_DEFAULT: u64 = 10_000_000;
/// Default shape floor: 60 calls of one (tool, argument shape) in a velocity window (one a
/// second in the default minute) is what an agent with no history may make before shape
/// velocity judges it, and the fewest calls per window that ever trip.
pub const SHAPE_FLOOR_DEFAULT: u64 = 60;

/// A tenant's settings for expiry and runaway detection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantPolicy {
    pub expiry: ExpiryPolicy,
    /// Trip an agent when the same fingerprint is reserved this many times within the
    /// last `repeat_window_ms` (a sliding window). 0 turns repetition detection off.
    pub repeat_max: u32,
    pub repeat_window_ms: u64,
    /// Trip an agent when its spend in `velocity_window_ms` exceeds `velocity_factor` times
    /// its own recent average per window and also `velocity_floor`; spend is what it is
    /// charged (estimates granted, overruns committed, records). 0 turns it off.
    pub velocity_factor: u32,
    pub velocity_window_ms: u64,
    pub velocity_dimension: Dimension,
    pub velocity_floor: u64,
    /// Trip an agent when its calls of one (tool, argument shape) in `velocity_window_ms`
    /// exceed `velocity_factor` times that shape's own recent average per window and also
    /// `shape_floor`. 0 (or a `velocity_factor` of 0) turns it off.
    pub shape_floor: u64,
    /// A tripped agent is let through again after this long; 0 means only an operator's
    /// reset does.
    pub trip_cooldown_ms: u64,
    /// How much of each shared bound the tenant may hold.
    pub quotas: crate::TenantQuotas,
    /// Clients may hold leases: slices of the tenant's limits they decide calls in.
    pub leases: bool,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            expiry: ExpiryPolicy::Charge,
            repeat_max: REPEAT_MAX_DEFAULT,
            repeat_window_ms: REPEAT_WINDOW_MS_DEFAULT,
            velocity_factor: VELOCITY_FACTOR_DEFAULT,
            velocity_window_ms: VELOCITY_WINDOW_MS_DEFAULT,
            velocity_dimension: Dimension::Cost,
            velocity_floor: VELOCITY_FLOOR_DEFAULT,
            shape_floor: SHAPE_FLOOR_DEFAULT,
            trip_cooldown_ms: 0,
            quotas: crate::TenantQuotas::default(),
            leases: false,
        }
    }
}

/// A request to change the ledger. Every variant but `Tick` carries the client's request id
/// and the tenant it acts for (the tenant its credentials belong to).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    Reserve {
        request_id: RequestId,
        tenant: TenantId,
        agent: AgentId,
        tool: ToolId,
        estimate: Amounts,
        ttl_ms: u64,
        /// A hash of tool + normalised arguments, for repetition detection.
        fingerprint: Option<String>,
        /// A hash of tool + the shape of the arguments (their keys and value types), for
        /// shape velocity: a loop that changes a value on every call keeps its shape.
        shape: Option<String>,
        /// The estimate's cost derived from the tenant's price table.
        usage: Option<crate::Usage>,
        /// The session (one run of the agent on one task) the call belongs to.
        session: Option<SessionId>,
    },
    Commit {
        request_id: RequestId,
        tenant: TenantId,
        reservation_id: ReservationId,
        actual: Amounts,
        /// The actual's cost derived from the tenant's price table.
        usage: Option<crate::Usage>,
        /// A client guard left without commit or release: the estimate is charged.
        abandoned: bool,
    },
    Release {
        request_id: RequestId,
        tenant: TenantId,
        reservation_id: ReservationId,
    },
    /// Spend that happened without a reservation; always charged, never denied.
    Record {
        request_id: RequestId,
        tenant: TenantId,
        agent: AgentId,
        tool: ToolId,
        actual: Amounts,
        /// The actual's cost derived from the tenant's price table.
        usage: Option<crate::Usage>,
        /// Granted by a client failing open while the cluster was unreachable.
        offline: bool,
        /// The session (one run of the agent on one task) the call belongs to.
        session: Option<SessionId>,
    },
    /// Creates the tenant or changes its policy.
    PutTenant {
        request_id: RequestId,
        tenant: TenantId,
        policy: TenantPolicy,
    },
    /// Creates or replaces the limit with this id.
    PutLimit {
        request_id: RequestId,
        tenant: TenantId,
        limit: LimitSpec,
    },
    DeleteLimit {
        request_id: RequestId,
        tenant: TenantId,
        limit_id: LimitId,
    },
    /// The kill switch: freezes the tenant (agent = None) or one agent.
    Freeze {
        request_id: RequestId,
        tenant: TenantId,
        agent: Option<AgentId>,
    },
    Unfreeze {
        request_id: RequestId,
        tenant: TenantId,
        agent: Option<AgentId>,
    },
    ResetTrip {
        request_id: RequestId,
        tenant: TenantId,
        agent: AgentId,
    },
    /// Carries only the leader's time: drives expiry and window resets when no one calls.
    Tick,
    /// Sets one model's entry of the tenant's price table.
    PutPrice {
        request_id: RequestId,
        tenant: TenantId,
        model: ModelId,
        price: crate::Price,
    },
    DeletePrice {
        request_id: RequestId,
        tenant: TenantId,
        model: ModelId,
    },
    /// Stores a new API key; `tenant` is None exactly for admin keys.
    CreateKey {
        request_id: RequestId,
        tenant: Option<TenantId>,
        key: crate::KeySpec,
    },
    /// Replaces the key's secret; `tenant` must be the key's own (None for admin keys).
    RotateKey {
        request_id: RequestId,
        tenant: Option<TenantId>,
        key_id: crate::KeyId,
        digest: [u8; 32],
    },
    /// Revokes the key for good; `tenant` must be the key's own (None for admin keys).
    RevokeKey {
        request_id: RequestId,
        tenant: Option<TenantId>,
        key_id: crate::KeyId,
    },
    /// The leader's alert sender had every `ThresholdCrossed` record up to this audit
    /// sequence acknowledged by the webhook: the replicated cursor a new leader resumes
    /// from. Not a decision, so not audited; it never moves back nor past the chain head.
    AlertsDelivered { up_to_seq: u64 },
    /// Asks for a lease: a slice of every limit that applies to (tenant, agent, tool), held
    /// for one client process, inside which it decides calls itself (`leases.rs`).
    Lease {
        request_id: RequestId,
        tenant: TenantId,
        agent: AgentId,
        tool: ToolId,
        /// The slice asked for; at most a fair share of what is left is granted.
        want: Amounts,
        /// Concurrency slots: the client's calls in flight at once inside the slice.
        units: u32,
        /// The smallest slice worth having (one call's estimate); less is refused.
        floor: Amounts,
        ttl_ms: u64,
    },
    /// Reports the calls a lease's holder decided since its last settle, charges them, and
    /// resizes the lease to `want` (renewing it), or ends it (`want` zero and `units` 0).
    Settle {
        request_id: RequestId,
        tenant: TenantId,
        lease_id: ReservationId,
        calls: Vec<LeaseCall>,
        want: Amounts,
        units: u32,
        ttl_ms: u64,
        /// What the holder may still spend from the lease before it hears back: calls in
        /// flight and reported later, and (unless it stops granting) the rest of its slice.
        /// The lease never shrinks below it (within what it holds), nor ends while it is
        /// not zero, so no call the holder decided is left outside the hold.
        keep: Amounts,
        /// Concurrency slots the holder may still use, likewise.
        keep_units: u32,
    },
}

/// Default lease TTL: long enough that a settle every quarter of it is cheap, short enough
/// that a recalled or crashed client's slice comes back within seconds.
pub const LEASE_TTL_MS_DEFAULT: u64 = 2_000;
/// Shortest and longest lease TTL.
pub const LEASE_TTL_MS_MIN: u64 = 500;
pub const LEASE_TTL_MS_MAX: u64 = 60_000;
/// The cluster reclaims an unsettled lease this long after its TTL: the slack for clock
/// drift and message delay (docs/SPEC.md, "Leases").
pub const LEASE_GRACE_MS: u64 = 500;
/// The client stops granting from a lease this long before its TTL ends.
pub const LEASE_MARGIN_MS: u64 = 200;
/// Most calls one Settle reports.
pub const LEASE_SETTLE_CALLS_MAX: usize = 10_000;
/// Most concurrency slots one lease holds.
pub const LEASE_UNITS_MAX: u32 = 1_024;

/// One call a lease's holder decided itself, as its Settle reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseCall {
    pub request_id: RequestId,
    pub estimate: Amounts,
    pub actual: Amounts,
    pub fingerprint: Option<String>,
    pub shape: Option<String>,
}

/// A lease as it stands: what it holds, and when the ledger reclaims it if unsettled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseTerms {
    pub lease_id: ReservationId,
    pub slice: Amounts,
    pub units: u32,
    pub expires_at_ms: u64,
    /// The tenant's repetition policy, which the client applies to its local grants.
    pub repeat_max: u32,
    pub repeat_window_ms: u64,
}

/// Why no lease was granted; the client then reserves per call, which decides and audits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseRefusal {
    /// The tenant's policy has no leases.
    Off,
    /// The tenant or the agent is frozen.
    Frozen,
    /// The agent is tripped.
    Tripped,
    /// A fair share of what is left is below the floor.
    Room,
}

/// Why a reservation was denied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// A limit would not hold. `remaining` may be negative after overruns.
    #[serde(alias = "Limit")]
    Limit {
        limit_id: LimitId,
        scope: Scope,
        dimension: Dimension,
        remaining: i64,
        /// For rate limits: when the same request would fit. None: never (larger than the
        /// burst), or not a rate limit.
        retry_after_ms: Option<u64>,
    },
    /// The tenant (agent = None) or the agent is frozen by an operator.
    #[serde(alias = "Frozen")]
    Frozen { agent: Option<AgentId> },
    /// The agent tripped runaway detection.
    #[serde(alias = "Tripped")]
    Tripped {
        cause: TripCause,
        /// When the cool-down lets it through again; None: only a reset does.
        until_ms: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripCause {
    /// The same fingerprint `count` times within the repetition window.
    #[serde(alias = "Repetition")]
    Repetition { fingerprint: String, count: u32 },
    /// Spend `spent` in the velocity window against a recent average of `baseline`.
    #[serde(alias = "Velocity")]
    Velocity { spent: u64, baseline: u64 },
    /// `calls` of one argument shape in the velocity window against that shape's recent
    /// average of `baseline` calls per window.
    ShapeVelocity {
        shape: String,
        calls: u64,
        baseline: u64,
    },
}

/// What remains of one limit, from the caller's point of view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Remaining {
    pub limit_id: LimitId,
    pub dimension: Dimension,
    pub remaining: i64,
}

/// The answer to a command. Errors that depend on state are `Rejected` and change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Granted {
        reservation_id: ReservationId,
        expires_at_ms: u64,
        /// The limit with the least remaining (relative to its amount), if any applies.
        tightest: Option<Remaining>,
    },
    Denied(DenyReason),
    Committed {
        reservation_id: ReservationId,
        /// Actual exceeded the estimate in some dimension.
        overrun: bool,
        /// The reservation had expired; the expiry charge was trued up to the actual.
        late: bool,
        /// The cost charged (derived from usage when the commit gave usage).
        cost_micros: u64,
    },
    Released {
        reservation_id: ReservationId,
    },
    Recorded {
        /// The cost charged (derived from usage when the record gave usage).
        cost_micros: u64,
    },
    /// An admin command or a tick took effect.
    Done,
    Rejected(Rejection),
    Leased(LeaseTerms),
    LeaseRefused(LeaseRefusal),
    /// `lease`: the lease goes on as it now stands, None: it ended (returned, recalled or
    /// expired). `expired`: its whole slice had been charged at expiry, so the calls were
    /// audited but not charged again.
    Settled {
        lease: Option<LeaseTerms>,
        recalled: bool,
        expired: bool,
        charged_calls: u32,
    },
}

/// A command that could not take effect, in the ledger's words; it changed nothing.
/// `server/src/grpc/call.rs` (`rejection_status`) maps each to one gRPC status, and the
/// text of each names the `tollgate` command that helps, where one does.
///
/// Rejections are never remembered (`dedup.rs`) nor audited, so their serialized form is
/// in no snapshot: it travels only in a node's own apply results.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command is malformed (`Command::validate`).
    #[error("{0}")]
    Invalid(InvalidInput),
    #[error("tenant {tenant} does not exist; create it with `tollgate tenant put {tenant}`")]
    UnknownTenant { tenant: TenantId },
    #[error(
        "tenant {tenant} has no agent {agent}; an agent exists from its first reserve, \
         record or `tollgate freeze --tenant {tenant} --agent {agent}`"
    )]
    UnknownAgent { tenant: TenantId, agent: AgentId },
    #[error(
        "tenant {tenant} has no limit {limit}; see its limits with \
         `tollgate limit list --tenant {tenant}`"
    )]
    UnknownLimit { tenant: TenantId, limit: LimitId },
    #[error(
        "tenant {tenant} has no price for model {model}; see its prices with \
         `tollgate price list --tenant {tenant}`"
    )]
    UnknownPrice { tenant: TenantId, model: ModelId },
    #[error(
        "tenant {tenant} has no price for model {model} and no fallback price; set one with \
         `tollgate price put --tenant {tenant} --model {model} --input USD --output USD \
         --per 1M` (or `--model '*'` for every model it does not list), or send a cost \
         instead of usage"
    )]
    Unpriced { tenant: TenantId, model: ModelId },
    #[error("reservation {reservation} was never issued")]
    UnknownReservation { reservation: ReservationId },
    #[error(
        "reservation {reservation} has ended: it was committed, released, or expired more \
         than EXPIRED_RETENTION_MS ({} ms) ago",
        crate::EXPIRED_RETENTION_MS
    )]
    ReservationEnded { reservation: ReservationId },
    /// `charged`: the expiry charged the estimate (policy `Charge`), else released it.
    #[error(
        "reservation {reservation} expired at {expired_at_ms} ms; {}; commit it if the call \
         happened",
        if *charged { "its estimate was charged and the charge stands" } else { "its hold was released" }
    )]
    ReleaseAfterExpiry {
        reservation: ReservationId,
        expired_at_ms: u64,
        charged: bool,
    },
    /// A bound of the ledger is reached; `tenant` is the one the command acted for.
    #[error("{}", bound.describe(*max, tenant))]
    BoundReached {
        bound: Bound,
        max: u64,
        tenant: TenantId,
    },
    /// The request id was used before (within `DEDUP_WINDOW_MS`) with another payload.
    #[error(
        "request id {request_id} reused with a different payload: tenant {tenant} first \
         sent it at {first_at_ms} ms; a new request needs a new request id"
    )]
    RequestIdReused {
        tenant: TenantId,
        request_id: RequestId,
        first_at_ms: u64,
    },
    /// The remembered first answer does not decode: unreachable while this build wrote it,
    /// but answered the same on every replica if it happens.
    #[error("the first answer to request {request_id} cannot be read back")]
    AnswerUnreadable { request_id: RequestId },
    #[error("key {key_id} does not exist; see the keys with `tollgate key list`")]
    UnknownKey { key_id: crate::KeyId },
    #[error("key id {key_id} is taken; a new key needs a new id")]
    KeyIdTaken { key_id: crate::KeyId },
    #[error("key {key_id} was revoked at {revoked_at_ms} ms; create a new key instead")]
    KeyRevoked {
        key_id: crate::KeyId,
        revoked_at_ms: u64,
    },
}

impl Rejection {
    /// `bound` reached, with its maximum filled in from the bound itself.
    pub fn bound_reached(bound: Bound, tenant: &TenantId) -> Self {
        Rejection::BoundReached {
            bound,
            max: bound.max(),
            tenant: tenant.clone(),
        }
    }

    /// The tenant's quota for `bound` reached: `quota` is the tenant's own maximum.
    pub fn quota_reached(bound: Bound, quota: u64, tenant: &TenantId) -> Self {
        Rejection::BoundReached {
            bound,
            max: quota,
            tenant: tenant.clone(),
        }
    }
}

/// A bound of the ledger that a command can reach, named as its constant. The
/// `...PerTenant` bounds are reached at the tenant's quota (`TenantQuotas`), which is at
/// most the constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Bound {
    Tenants,
    Agents,
    AgentsPerTenant,
    ReservationsInFlight,
    ReservationsInFlightPerTenant,
    LimitsPerTenant,
    /// Distinct tool ids named by one tenant's limits.
    ToolsPerTenant,
    /// API keys of one tenant.
    KeysPerTenant,
    /// API keys over all tenants and admins.
    Keys,
    /// Answers remembered over all tenants (`DEDUP_ENTRIES_MAX`).
    Answers,
    AnswersPerTenant,
    /// Commands of one tenant waiting in a node's proposal queue.
    ProposalsQueuedPerTenant,
    /// Entries of one tenant's price table.
    PricesPerTenant,
    /// Sessions remembered over all tenants.
    Sessions,
    SessionsPerTenant,
}

impl Bound {
    /// The name of the constant, as the code and the docs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Bound::Tenants => "TENANTS_MAX",
            Bound::Agents => "AGENTS_MAX",
            Bound::AgentsPerTenant => "AGENTS_PER_TENANT_MAX",
            Bound::ReservationsInFlight => "RESERVATIONS_IN_FLIGHT_MAX",
            Bound::ReservationsInFlightPerTenant => "RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX",
            Bound::LimitsPerTenant => "LIMITS_PER_TENANT_MAX",
            Bound::ToolsPerTenant => "TOOLS_PER_TENANT_MAX",
            Bound::KeysPerTenant => "KEYS_PER_TENANT_MAX",
            Bound::Keys => "KEYS_MAX",
            Bound::Answers => "DEDUP_ENTRIES_MAX",
            Bound::AnswersPerTenant => "ANSWERS_PER_TENANT_MAX",
            Bound::ProposalsQueuedPerTenant => "PROPOSALS_QUEUED_PER_TENANT_MAX",
            Bound::PricesPerTenant => "PRICES_PER_TENANT_MAX",
            Bound::Sessions => "SESSIONS_MAX",
            Bound::SessionsPerTenant => "SESSIONS_PER_TENANT_MAX",
        }
    }

    /// The constant's value.
    pub fn max(self) -> u64 {
        let max = match self {
            Bound::Tenants => crate::TENANTS_MAX,
            Bound::Agents => crate::AGENTS_MAX,
            Bound::AgentsPerTenant => crate::AGENTS_PER_TENANT_MAX,
            Bound::ReservationsInFlight => crate::RESERVATIONS_IN_FLIGHT_MAX,
            Bound::ReservationsInFlightPerTenant => crate::RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX,
            Bound::LimitsPerTenant => crate::LIMITS_PER_TENANT_MAX,
            Bound::ToolsPerTenant => crate::TOOLS_PER_TENANT_MAX,
            Bound::KeysPerTenant => crate::KEYS_PER_TENANT_MAX,
            Bound::Keys => crate::KEYS_MAX,
            Bound::Answers => crate::DEDUP_ENTRIES_MAX,
            Bound::AnswersPerTenant => crate::ANSWERS_PER_TENANT_MAX,
            Bound::ProposalsQueuedPerTenant => crate::PROPOSALS_QUEUED_PER_TENANT_MAX,
            Bound::PricesPerTenant => crate::PRICES_PER_TENANT_MAX,
            Bound::Sessions => crate::SESSIONS_MAX,
            Bound::SessionsPerTenant => crate::SESSIONS_PER_TENANT_MAX,
        };
        max as u64
    }

    /// What the bound counts, and for a per-tenant bound the flag of `tollgate tenant put`
    /// that sets the tenant's quota (None: a ledger-wide bound).
    fn counted(self) -> (&'static str, Option<&'static str>) {
        match self {
            Bound::Tenants => ("tenants", None),
            Bound::Agents => ("agents", None),
            Bound::AgentsPerTenant => ("agents", Some("--quota-agents")),
            Bound::ReservationsInFlight => ("reservations in flight", None),
            Bound::ReservationsInFlightPerTenant => (
                "reservations in flight",
                Some("--quota-reservations-in-flight"),
            ),
            Bound::LimitsPerTenant => ("limits", Some("--quota-limits")),
            Bound::ToolsPerTenant => ("tools named by limits", Some("--quota-tools")),
            Bound::KeysPerTenant => ("live API keys", Some("--quota-keys")),
            Bound::Keys => ("live API keys", None),
            Bound::Answers => ("answers remembered for retries", None),
            Bound::AnswersPerTenant => (
                "answers remembered for retries (reserves and records are refused until \
                 older ones are forgotten, DEDUP_WINDOW_MS after they were given)",
                Some("--quota-answers"),
            ),
            Bound::ProposalsQueuedPerTenant => (
                "commands waiting to be proposed",
                Some("--quota-proposals-queued"),
            ),
            Bound::PricesPerTenant => ("price entries", None),
            Bound::Sessions => ("sessions", None),
            Bound::SessionsPerTenant => (
                "sessions (a session is forgotten SESSION_IDLE_MS after its last call)",
                Some("--quota-sessions"),
            ),
        }
    }

    fn describe(self, max: u64, tenant: &TenantId) -> String {
        let (counted, flag) = self.counted();
        let name = self.name();
        match flag {
            Some(flag) => format!(
                "tenant {tenant} has reached its quota of {max} {counted}; an admin may raise \
                 it with `tollgate tenant put {tenant} {flag} N` (at most {name}, {})",
                self.max()
            ),
            None => format!("the ledger holds {name} ({max}) {counted}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::all_ascii_graphic;

    /// Every byte value at every position of ids of 1 to 17 bytes (two words and a tail),
    /// among graphic neighbours of both edges ('!' and '~'): the word-wise check agrees with
    /// `u8::is_ascii_graphic` byte by byte.
    #[test]
    fn the_word_wise_check_agrees_with_the_byte_wise_one() {
        for len in 1..=17 {
            for at in 0..len {
                for filler in [b'!', b'~'] {
                    for byte in 0..=u8::MAX {
                        let mut id = vec![filler; len];
                        id[at] = byte;
                        let expected = id.iter().all(u8::is_ascii_graphic);
                        assert_eq!(all_ascii_graphic(&id), expected, "{id:?}");
                    }
                }
            }
        }
        assert!(all_ascii_graphic(b""));
    }
}
