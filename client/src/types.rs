//! The client's own domain types, converted from and to the wire types at the edge so
//! callers do not build protobuf messages for the hot path (reserve, commit).

use std::fmt;
use std::time::Duration;

use tollgate_proto::v1;

/// Reservation TTL when the caller does not set one: long enough for a slow LLM call,
/// short enough that a dead worker's hold does not linger.
pub const TTL_DEFAULT: Duration = Duration::from_secs(60);

/// Spend in every dimension. Cost is integer micro-units of the tenant's currency
/// (1 USD = 1_000_000), never floating point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Amounts {
    /// Tokens (LLM input + output).
    pub tokens: u64,
    /// Cost in micro-units of the tenant's currency.
    pub cost_micros: u64,
    /// Calls, usually 1.
    pub calls: u64,
}

impl Amounts {
    /// Nothing in any dimension.
    pub const ZERO: Amounts = Amounts {
        tokens: 0,
        cost_micros: 0,
        calls: 0,
    };

    /// Amounts from their three dimensions.
    pub const fn new(tokens: u64, cost_micros: u64, calls: u64) -> Amounts {
        Amounts {
            tokens,
            cost_micros,
            calls,
        }
    }

    /// `self + other` in every dimension, or `None` if any dimension overflows.
    pub fn checked_add(self, other: Amounts) -> Option<Amounts> {
        Some(Amounts {
            tokens: self.tokens.checked_add(other.tokens)?,
            cost_micros: self.cost_micros.checked_add(other.cost_micros)?,
            calls: self.calls.checked_add(other.calls)?,
        })
    }

    /// `self - other` in every dimension, stopping at zero.
    pub fn saturating_sub(self, other: Amounts) -> Amounts {
        Amounts {
            tokens: self.tokens.saturating_sub(other.tokens),
            cost_micros: self.cost_micros.saturating_sub(other.cost_micros),
            calls: self.calls.saturating_sub(other.calls),
        }
    }

    /// True when every dimension of `self` is at most the same dimension of `other`.
    pub fn fits_within(self, other: Amounts) -> bool {
        self.tokens <= other.tokens
            && self.cost_micros <= other.cost_micros
            && self.calls <= other.calls
    }
}

impl fmt::Display for Amounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens, {} cost micros, {} calls",
            self.tokens, self.cost_micros, self.calls
        )
    }
}

impl From<Amounts> for v1::Amounts {
    fn from(a: Amounts) -> Self {
        v1::Amounts {
            tokens: a.tokens,
            cost_micros: a.cost_micros,
            calls: Some(a.calls),
        }
    }
}

impl From<v1::Amounts> for Amounts {
    fn from(a: v1::Amounts) -> Self {
        Amounts {
            tokens: a.tokens,
            cost_micros: a.cost_micros,
            // The cluster always says; absent only from a peer that predates the field.
            calls: a.calls.unwrap_or_default(),
        }
    }
}

/// What an LLM call used, as its provider reports it. Given instead of a cost, the cluster
/// prices it with the tenant's price table (integer arithmetic, rounding up) and, when no
/// token count is given with it, counts input + cached input + output as the tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// The model as the tenant's price table names it, e.g. `gpt-4o` (at most 128 bytes).
    pub model: String,
    /// Input tokens billed at the full input price (not read from a cache).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache, billed at the cached price.
    pub cached_input_tokens: u64,
}

impl Usage {
    /// Usage of `model`: input and output tokens, none cached.
    pub fn new(model: impl Into<String>, input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            model: model.into(),
            input_tokens,
            output_tokens,
            cached_input_tokens: 0,
        }
    }

    /// Sets the input tokens read from the provider's prompt cache.
    pub fn cached_input_tokens(mut self, cached_input_tokens: u64) -> Usage {
        self.cached_input_tokens = cached_input_tokens;
        self
    }

    /// Input + cached input + output, saturating: the tokens the cluster counts.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cached_input_tokens)
            .saturating_add(self.output_tokens)
    }
}

impl From<Usage> for v1::Usage {
    fn from(u: Usage) -> Self {
        v1::Usage {
            model: u.model,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
        }
    }
}

/// What a call spent, in either form a commit takes: amounts (cost included), or usage that
/// the cluster prices. Both convert into it, so [`Client::guarded`](crate::Client::guarded)
/// takes either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Tokens, cost and calls as the caller counted them.
    Amounts(Amounts),
    /// Model and tokens, priced by the tenant's price table.
    Usage(Usage),
}

impl From<Amounts> for Spend {
    fn from(amounts: Amounts) -> Self {
        Spend::Amounts(amounts)
    }
}

impl From<Usage> for Spend {
    fn from(usage: Usage) -> Self {
        Spend::Usage(usage)
    }
}

/// What a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The cost charged, micro-units: priced from the usage by the tenant's price table.
    pub cost_micros: u64,
    /// Where the record was applied.
    pub applied: Applied,
}

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// LLM tokens.
    Tokens,
    /// Cost in micro-units.
    Cost,
    /// Calls.
    Calls,
    /// Reservations in flight.
    Concurrency,
    /// A dimension this client does not know (a newer server).
    Unknown(i32),
}

impl From<i32> for Dimension {
    fn from(wire: i32) -> Self {
        match v1::Dimension::try_from(wire) {
            Ok(v1::Dimension::Tokens) => Dimension::Tokens,
            Ok(v1::Dimension::Cost) => Dimension::Cost,
            Ok(v1::Dimension::Calls) => Dimension::Calls,
            Ok(v1::Dimension::Concurrency) => Dimension::Concurrency,
            Ok(v1::Dimension::Unspecified) | Err(_) => Dimension::Unknown(wire),
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dimension::Tokens => f.write_str("tokens"),
            Dimension::Cost => f.write_str("cost"),
            Dimension::Calls => f.write_str("calls"),
            Dimension::Concurrency => f.write_str("concurrency"),
            Dimension::Unknown(wire) => write!(f, "dimension #{wire}"),
        }
    }
}

/// A limit's scope as people write it: `tenant`, `each-agent`, `agent:NAME`,
/// `tool-per-agent:TOOL`, `tool-tenant:TOOL`, `each-session`.
pub fn scope_to_string(scope: Option<&v1::Scope>) -> String {
    use v1::scope::Scope;
    match scope.and_then(|s| s.scope.as_ref()) {
        Some(Scope::Tenant(_)) => "tenant".into(),
        Some(Scope::EachAgent(_)) => "each-agent".into(),
        Some(Scope::Agent(agent)) => format!("agent:{agent}"),
        Some(Scope::ToolPerAgent(tool)) => format!("tool-per-agent:{tool}"),
        Some(Scope::ToolTenant(tool)) => format!("tool-tenant:{tool}"),
        Some(Scope::EachSession(_)) => "each-session".into(),
        None => "unknown-scope".into(),
    }
}

/// Where in the Raft log a mutation was applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Applied {
    /// Raft log index of the entry.
    pub log_index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// The leader's timestamp of the entry, unix milliseconds.
    pub at_ms: u64,
}

impl From<Option<v1::Applied>> for Applied {
    /// A server always sends `applied` on mutations; a missing one reads as all zeros
    /// (log index 0 is never a real entry) rather than turning a success into an error.
    fn from(applied: Option<v1::Applied>) -> Self {
        let a = applied.unwrap_or_default();
        Applied {
            log_index: a.log_index,
            term: a.term,
            at_ms: a.at_ms,
        }
    }
}

/// What remains of one limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remaining {
    /// The limit's id.
    pub limit_id: String,
    /// What it counts.
    pub dimension: Dimension,
    /// What remains; negative after overruns.
    pub remaining: i64,
}

impl From<v1::LimitRemaining> for Remaining {
    fn from(r: v1::LimitRemaining) -> Self {
        Remaining {
            limit_id: r.limit_id,
            dimension: Dimension::from(r.dimension),
            remaining: r.remaining,
        }
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Actual spend exceeded the estimate in some dimension (charged anyway, audited).
    pub overrun: bool,
    /// The reservation had already expired; the expiry charge was trued up to the actual.
    pub late: bool,
    /// The cost charged, micro-units: the actual's, the estimate's for an abandoned
    /// reservation, or the price table's for usage. 0 from a node that predates the field.
    pub cost_micros: u64,
    /// Where the commit was applied; `None` for a local (fail-open) reservation.
    pub applied: Option<Applied>,
}

/// A reservation to ask for: who spends, on what, and the estimate.
///
/// Built with [`ReserveRequest::new`] and the setters; the estimate starts at 0 tokens,
/// 0 cost and 1 call, the TTL at [`TTL_DEFAULT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The tenant (organisation) that pays.
    pub tenant: String,
    /// The agent that spends.
    pub agent: String,
    /// What the call is for, e.g. `llm:gpt-x`, `search`.
    pub tool: String,
    /// The estimated spend, held until commit, release or expiry.
    pub estimate: Amounts,
    /// How long the hold lasts without a commit or release.
    pub ttl: Duration,
    /// Hash of tool + normalised arguments, for repetition (runaway) detection.
    pub fingerprint: Option<String>,
    /// Hash of tool + the shape of the arguments (keys and value types), for shape velocity
    /// (runaway) detection: see [`fingerprint_shape`](crate::fingerprint_shape).
    pub shape: Option<String>,
    /// An estimate by model and tokens, priced by the cluster, instead of a cost.
    pub usage: Option<Usage>,
    /// The session (one run of the agent on one task) the call belongs to.
    pub session: Option<String>,
}

impl ReserveRequest {
    /// A request for one call by `agent` of `tenant` on `tool`.
    pub fn new(
        tenant: impl Into<String>,
        agent: impl Into<String>,
        tool: impl Into<String>,
    ) -> Self {
        ReserveRequest {
            tenant: tenant.into(),
            agent: agent.into(),
            tool: tool.into(),
            estimate: Amounts {
                tokens: 0,
                cost_micros: 0,
                calls: 1,
            },
            ttl: TTL_DEFAULT,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        }
    }

    /// Sets the estimated tokens.
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.estimate.tokens = tokens;
        self
    }

    /// Sets the estimated cost in micro-units.
    pub fn cost_micros(mut self, cost_micros: u64) -> Self {
        self.estimate.cost_micros = cost_micros;
        self
    }

    /// Sets the estimated calls (default 1).
    pub fn calls(mut self, calls: u64) -> Self {
        self.estimate.calls = calls;
        self
    }

    /// Sets the whole estimate at once.
    pub fn estimate(mut self, estimate: Amounts) -> Self {
        self.estimate = estimate;
        self
    }

    /// Sets how long the hold lasts without a commit or release.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the fingerprint used for repetition detection.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Names the session (one run of the agent on one task, e.g. a ticket id) the call
    /// belongs to: every worker of the task passes the same name, and the tenant's
    /// `each-session` limits count the whole run.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Sets the argument shape used for shape velocity detection, e.g. from
    /// [`fingerprint_shape`](crate::fingerprint_shape).
    pub fn shape(mut self, shape: impl Into<String>) -> Self {
        self.shape = Some(shape.into());
        self
    }

    /// Estimates by model and tokens instead of a cost (which must then stay 0): the
    /// cluster prices `usage` with the tenant's price table, `output_tokens` being the call's
    /// maximum. Unless [`tokens`](Self::tokens) is set, the estimate's tokens are the
    /// usage's.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The estimate a local (fail-open) reservation holds: with usage and no tokens, the
    /// usage's tokens. Its cost stays as given: no price table is at hand offline.
    pub(crate) fn local_estimate(&self) -> Amounts {
        match &self.usage {
            Some(usage) if self.estimate.tokens == 0 => Amounts {
                tokens: usage.tokens(),
                ..self.estimate
            },
            _ => self.estimate,
        }
    }

    pub(crate) fn to_wire(&self, request_id: &str) -> v1::ReserveRequest {
        v1::ReserveRequest {
            request_id: request_id.to_owned(),
            tenant: self.tenant.clone(),
            agent: self.agent.clone(),
            tool: self.tool.clone(),
            estimate: Some(self.estimate.into()),
            ttl_ms: duration_ms(self.ttl),
            fingerprint: self.fingerprint.clone().unwrap_or_default(),
            usage: self.usage.clone().map(Into::into),
            session: self.session.clone().unwrap_or_default(),
            shape: self.shape.clone().unwrap_or_default(),
        }
    }
}

/// A duration in whole milliseconds, saturating (the server rejects absurd TTLs).
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A fresh request id: 128 random bits as 32 lowercase hex digits. One per logical
/// operation, reused on every retry of it, so the cluster applies it once.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_unique() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
    }

    #[test]
    fn reserve_request_defaults_to_one_call_and_default_ttl() {
        let request = ReserveRequest::new("acme", "bot", "search");
        assert_eq!(request.estimate, Amounts::new(0, 0, 1));
        assert_eq!(request.ttl, TTL_DEFAULT);
        let wire = request.tokens(5).fingerprint("f").to_wire("id-1");
        assert_eq!(wire.shape, "");
        assert_eq!(wire.request_id, "id-1");
        assert_eq!(
            wire.estimate,
            Some(v1::Amounts {
                tokens: 5,
                cost_micros: 0,
                calls: Some(1)
            })
        );
        assert_eq!(wire.ttl_ms, 60_000);
        assert_eq!(wire.fingerprint, "f");
        assert_eq!(wire.usage, None);
        let wire = ReserveRequest::new("acme", "bot", "search")
            .shape("s")
            .to_wire("id-2");
        assert_eq!(wire.shape, "s");
    }

    #[test]
    fn a_usage_estimate_goes_on_the_wire_and_counts_its_tokens_offline() {
        let usage = Usage::new("gpt-4o", 1_000, 500).cached_input_tokens(200);
        assert_eq!(usage.tokens(), 1_700);
        let request = ReserveRequest::new("acme", "bot", "llm").usage(usage);
        let wire = request.to_wire("id-1");
        assert_eq!(
            wire.usage,
            Some(v1::Usage {
                model: "gpt-4o".into(),
                input_tokens: 1_000,
                output_tokens: 500,
                cached_input_tokens: 200,
            })
        );
        assert_eq!(wire.estimate.unwrap().cost_micros, 0);
        assert_eq!(request.local_estimate(), Amounts::new(1_700, 0, 1));
        assert_eq!(
            request.tokens(9).local_estimate(),
            Amounts::new(9, 0, 1),
            "tokens given win"
        );
    }

    #[test]
    fn amounts_arithmetic_is_checked() {
        let max = Amounts::new(u64::MAX, 0, 0);
        assert_eq!(max.checked_add(Amounts::new(1, 0, 0)), None);
        assert_eq!(
            Amounts::new(1, 2, 3).saturating_sub(Amounts::new(5, 1, 3)),
            Amounts::new(0, 1, 0)
        );
        assert!(Amounts::new(1, 2, 3).fits_within(Amounts::new(1, 2, 3)));
        assert!(!Amounts::new(1, 2, 4).fits_within(Amounts::new(1, 2, 3)));
    }
}
