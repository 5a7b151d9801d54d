//! The one error type of the client, and the one place that maps a gRPC status to it.
//! Every variant says what happened in words an operator can act on.

use std::time::Duration;

use tonic::{Code, Status};

use crate::types::Dimension;

/// Why an operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A limit would be exceeded. Nothing was held.
    #[error(
        "denied by limit {limit_id:?} ({scope}, {dimension}): {remaining} remaining{}",
        retry_after.map(|d| format!("; retry after {} ms", d.as_millis())).unwrap_or_default()
    )]
    Denied {
        /// The limit that said no.
        limit_id: String,
        /// Where it attaches: `tenant`, `each-agent`, `agent:NAME`, `tool-per-agent:TOOL`,
        /// `tool-tenant:TOOL`.
        scope: String,
        /// What it counts.
        dimension: Dimension,
        /// What remains of it (negative after overruns).
        remaining: i64,
        /// For rate limits: when the same request would fit.
        retry_after: Option<Duration>,
    },
    /// The tenant (`agent: None`) or the agent is frozen by an operator (kill switch).
    #[error("frozen by an operator: {}", agent.as_deref().map(|a| format!("agent {a:?}")).unwrap_or_else(|| "the whole tenant".into()))]
    Frozen {
        /// The frozen agent, or `None` when the whole tenant is frozen.
        agent: Option<String>,
    },
    /// Runaway detection tripped the agent.
    #[error("agent tripped by runaway detection ({cause}); {}", until_ms.map(|t| format!("cool-down ends at {t} ms since epoch")).unwrap_or_else(|| "an operator must reset it".into()))]
    Tripped {
        /// What tripped it, e.g. `repetition: fingerprint "x" seen 20 times`.
        cause: String,
        /// When the cool-down ends (unix ms); `None`: only an operator's reset helps.
        until_ms: Option<u64>,
    },
    /// The cluster could not be reached or had no leader within the deadline.
    #[error("tollgate cluster unavailable: {reason}")]
    Unavailable {
        /// Which endpoints were tried and the last error seen.
        reason: String,
    },
    /// The request was malformed (INVALID_ARGUMENT), or the client config is.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Unknown tenant, agent or reservation.
    #[error("not found: {0}")]
    NotFound(String),
    /// Missing or wrong credentials, or another tenant's data.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is valid but not now, e.g. a release after expiry.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A cluster-wide bound was reached (RESOURCE_EXHAUSTED).
    #[error("cluster bound reached: {0}")]
    Exhausted(String),
    /// The request id was already used with a different payload.
    #[error("request id reused with a different payload: {0}")]
    RequestIdReused(String),
    /// The server failed or answered something this client cannot read.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The error for a status the retry loop does not retry (or gave up on).
    pub fn from_status(status: &Status) -> Error {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => Error::Invalid(message),
            Code::NotFound => Error::NotFound(message),
            Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::ResourceExhausted => Error::Exhausted(message),
            Code::AlreadyExists => Error::RequestIdReused(message),
            code if is_retryable(status) => Error::Unavailable {
                reason: format!("{code:?}: {message}"),
            },
            code => Error::Internal(format!("{code:?}: {message}")),
        }
    }
}

/// Statuses worth retrying with the same request id: the request may not have arrived, may
/// have been cut off, or hit a node that is not the leader. tonic reports some transport
/// failures as UNKNOWN, and a connection torn down mid-call (a node killed) as INTERNAL with
/// an h2 protocol error, so those are retried too; a retry is always safe because the request
/// id makes it idempotent. An INTERNAL status the server itself sent is not retried.
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::Unknown => true,
        Code::Internal => is_transport_failure(status.message()),
        _ => false,
    }
}

/// True when `status` says the connection to the node could not be opened (refused, no
/// route, a name that does not resolve): tonic turns its connector's
/// error into UNAVAILABLE with that error's words and no source, so the words are all there
/// is. A timeout of this client's own is DEADLINE_EXCEEDED and never matches.
pub(crate) fn is_connect_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && [
            "tcp connect error",
            "tcp open error",
            "dns error",
            "error trying to connect",
        ]
        .iter()
        .any(|words| status.message().starts_with(words))
}

/// How tonic words an INTERNAL status that came from the HTTP/2 connection, not the server.
fn is_transport_failure(message: &str) -> bool {
    message.starts_with("h2 protocol error") || message.contains("transport error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_code_maps_to_one_variant() {
        type IsExpected = fn(&Error) -> bool;
        let cases: [(Code, IsExpected); 12] = [
            (
                Code::InvalidArgument,
                |e| matches!(e, Error::Invalid(m) if m == "msg"),
            ),
            (Code::NotFound, |e| matches!(e, Error::NotFound(_))),
            (Code::PermissionDenied, |e| {
                matches!(e, Error::PermissionDenied(_))
            }),
            (Code::Unauthenticated, |e| {
                matches!(e, Error::PermissionDenied(_))
            }),
            (Code::FailedPrecondition, |e| {
                matches!(e, Error::FailedPrecondition(_))
            }),
            (Code::ResourceExhausted, |e| {
                matches!(e, Error::Exhausted(_))
            }),
            (Code::AlreadyExists, |e| {
                matches!(e, Error::RequestIdReused(_))
            }),
            (Code::Unavailable, |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (Code::DeadlineExceeded, |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (Code::Cancelled, |e| matches!(e, Error::Unavailable { .. })),
            (Code::Internal, |e| matches!(e, Error::Internal(_))),
            (Code::Unimplemented, |e| matches!(e, Error::Internal(_))),
        ];
        for (code, expected) in cases {
            let error = Error::from_status(&Status::new(code, "msg"));
            assert!(expected(&error), "{code:?} mapped to {error:?}");
        }
    }

    #[test]
    fn only_transient_codes_are_retried() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
        ] {
            assert!(is_retryable(&Status::new(code, "msg")), "{code:?}");
        }
        let torn_down = Status::internal("h2 protocol error: http2 error");
        assert!(
            is_retryable(&torn_down),
            "a connection cut mid-call is retried"
        );
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::AlreadyExists,
            Code::Internal,
        ] {
            assert!(!is_retryable(&Status::new(code, "msg")), "{code:?}");
        }
    }

    #[test]
    fn denied_message_says_which_limit_and_when_to_retry() {
        let error = Error::Denied {
            limit_id: "tpm".into(),
            scope: "agent:bot".into(),
            dimension: Dimension::Tokens,
            remaining: 12,
            retry_after: Some(Duration::from_millis(250)),
        };
        assert_eq!(
            error.to_string(),
            "denied by limit \"tpm\" (agent:bot, tokens): 12 remaining; retry after 250 ms"
        );
        assert_eq!(
            Error::Frozen { agent: None }.to_string(),
            "frozen by an operator: the whole tenant"
        );
    }
}
