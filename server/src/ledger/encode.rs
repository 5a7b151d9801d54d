//! Postcard's bytes for the hot path's values, written by hand.
//!
//! The payload hash of a command, a remembered answer and an audit record's hashed body are
//! all defined as postcard bytes (see `dedup.rs`, `audit.rs`). Reserve, commit, release and
//! record are the commands that run at full rate; for them and their answers and audit
//! records this writes the very same bytes directly (varints, length-prefixed strings)
//! instead of going through serde's generic serializer. Everything else falls back to
//! postcard itself. `tests` checks the two agree, value for value.

use serde::Serialize;

use super::{Amounts, Command, Dimension, Outcome};

/// Appends postcard's varint of `value` (LEB128: 7 bits a byte, low bits first).
#[inline]
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    // Byte by byte: copying a stack buffer of variable length costs a call to memcpy,
    // which showed as 11 % of a reserve+commit pair in the ledger bench.
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends postcard's zigzag varint of `value`.
#[inline]
pub fn varint_i64(out: &mut Vec<u8>, value: i64) {
    varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Appends a string as postcard does: its length as a varint, then its bytes.
#[inline]
pub fn str(out: &mut Vec<u8>, value: &[u8]) {
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Appends an `Option<&str>`: a 0 byte, or a 1 byte and the string.
#[inline]
pub fn opt_str(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            str(out, value);
        }
    }
}

#[inline]
pub fn amounts(out: &mut Vec<u8>, a: &Amounts) {
    varint(out, a.tokens);
    varint(out, a.cost_micros);
    varint(out, a.calls);
}

/// Appends `value` with postcard itself (every value the fast paths leave out).
pub fn postcard_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let taken = std::mem::take(out);
    // Serializing plain data into a Vec cannot fail but for memory; an encoding cut short
    // would still be the same on every replica.
    *out = postcard::to_extend(value, taken).unwrap_or_default();
}

fn dimension(d: Dimension) -> u8 {
    match d {
        Dimension::Tokens => 0,
        Dimension::Cost => 1,
        Dimension::Calls => 2,
        Dimension::Concurrency => 3,
    }
}

/// Appends postcard's bytes of `outcome`.
pub fn outcome(out: &mut Vec<u8>, outcome: &Outcome) {
    match outcome {
        Outcome::Granted {
            reservation_id,
            expires_at_ms,
            tightest,
        } => {
            out.push(0);
            varint(out, reservation_id.0);
            varint(out, *expires_at_ms);
            match tightest {
                None => out.push(0),
                Some(r) => {
                    out.push(1);
                    str(out, r.limit_id.as_bytes());
                    out.push(dimension(r.dimension));
                    varint_i64(out, r.remaining);
                }
            }
        }
        Outcome::Committed {
            reservation_id,
            overrun,
            late,
        } => {
            out.push(2);
            varint(out, reservation_id.0);
            out.push(u8::from(*overrun));
            out.push(u8::from(*late));
        }
        Outcome::Released { reservation_id } => {
            out.push(3);
            varint(out, reservation_id.0);
        }
        Outcome::Recorded => out.push(4),
        Outcome::Done => out.push(5),
        Outcome::Denied(_) | Outcome::Rejected(_) => postcard_into(out, outcome),
    }
}

/// Appends postcard's bytes of `cmd`.
pub fn command(out: &mut Vec<u8>, cmd: &Command) {
    match cmd {
        Command::Reserve {
            request_id,
            tenant,
            agent,
            tool,
            estimate,
            ttl_ms,
            fingerprint,
        } => {
            out.push(0);
            str(out, request_id.as_bytes());
            str(out, tenant.as_bytes());
            str(out, agent.as_bytes());
            str(out, tool.as_bytes());
            amounts(out, estimate);
            varint(out, *ttl_ms);
            opt_str(out, fingerprint.as_deref().map(str::as_bytes));
        }
        Command::Commit {
            request_id,
            tenant,
            reservation_id,
            actual,
        } => {
            out.push(1);
            str(out, request_id.as_bytes());
            str(out, tenant.as_bytes());
            varint(out, reservation_id.0);
            amounts(out, actual);
        }
        Command::Release {
            request_id,
            tenant,
            reservation_id,
        } => {
            out.push(2);
            str(out, request_id.as_bytes());
            str(out, tenant.as_bytes());
            varint(out, reservation_id.0);
        }
        Command::Record {
            request_id,
            tenant,
            agent,
            tool,
            actual,
        } => {
            out.push(3);
            str(out, request_id.as_bytes());
            str(out, tenant.as_bytes());
            str(out, agent.as_bytes());
            str(out, tool.as_bytes());
            amounts(out, actual);
        }
        _ => postcard_into(out, cmd),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ledger::{
        AgentId, DenyReason, LimitId, Rejection, Remaining, RequestId, ReservationId, TenantId,
        TenantPolicy, ToolId,
    };

    fn fast<T>(f: impl Fn(&mut Vec<u8>, &T), value: &T) -> Vec<u8> {
        // Something already in the buffer must stay as it is.
        let mut out = vec![0xAB];
        f(&mut out, value);
        assert_eq!(out[0], 0xAB);
        out.split_off(1)
    }

    fn id() -> impl Strategy<Value = String> {
        "[!-~]{1,128}"
    }

    fn amounts_strategy() -> impl Strategy<Value = Amounts> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(tokens, cost_micros, calls)| {
            Amounts {
                tokens,
                cost_micros,
                calls,
            }
        })
    }

    fn dimension_strategy() -> impl Strategy<Value = Dimension> {
        prop_oneof![
            Just(Dimension::Tokens),
            Just(Dimension::Cost),
            Just(Dimension::Calls),
            Just(Dimension::Concurrency),
        ]
    }

    fn outcome_strategy() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                proptest::option::of((id(), dimension_strategy(), any::<i64>()))
            )
                .prop_map(|(r, e, t)| Outcome::Granted {
                    reservation_id: ReservationId(r),
                    expires_at_ms: e,
                    tightest: t.map(|(limit_id, dimension, remaining)| Remaining {
                        limit_id: LimitId::new(limit_id).unwrap(),
                        dimension,
                        remaining,
                    }),
                }),
            (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(r, overrun, late)| {
                Outcome::Committed {
                    reservation_id: ReservationId(r),
                    overrun,
                    late,
                }
            }),
            any::<u64>().prop_map(|r| Outcome::Released {
                reservation_id: ReservationId(r)
            }),
            Just(Outcome::Recorded),
            Just(Outcome::Done),
            id().prop_map(|a| Outcome::Denied(DenyReason::Frozen {
                agent: Some(AgentId::new(a).unwrap())
            })),
            id().prop_map(|m| Outcome::Rejected(Rejection::NotFound(m))),
        ]
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        prop_oneof![
            (
                id(),
                id(),
                id(),
                id(),
                amounts_strategy(),
                any::<u64>(),
                proptest::option::of(id())
            )
                .prop_map(|(q, t, a, tool, estimate, ttl_ms, fingerprint)| {
                    Command::Reserve {
                        request_id: RequestId::new(q).unwrap(),
                        tenant: TenantId::new(t).unwrap(),
                        agent: AgentId::new(a).unwrap(),
                        tool: ToolId::new(tool).unwrap(),
                        estimate,
                        ttl_ms,
                        fingerprint,
                    }
                }),
            (id(), id(), any::<u64>(), amounts_strategy()).prop_map(|(q, t, r, actual)| {
                Command::Commit {
                    request_id: RequestId::new(q).unwrap(),
                    tenant: TenantId::new(t).unwrap(),
                    reservation_id: ReservationId(r),
                    actual,
                }
            }),
            (id(), id(), any::<u64>()).prop_map(|(q, t, r)| Command::Release {
                request_id: RequestId::new(q).unwrap(),
                tenant: TenantId::new(t).unwrap(),
                reservation_id: ReservationId(r),
            }),
            (id(), id(), id(), id(), amounts_strategy()).prop_map(|(q, t, a, tool, actual)| {
                Command::Record {
                    request_id: RequestId::new(q).unwrap(),
                    tenant: TenantId::new(t).unwrap(),
                    agent: AgentId::new(a).unwrap(),
                    tool: ToolId::new(tool).unwrap(),
                    actual,
                }
            }),
            (id(), id()).prop_map(|(q, t)| Command::PutTenant {
                request_id: RequestId::new(q).unwrap(),
                tenant: TenantId::new(t).unwrap(),
                policy: TenantPolicy::default(),
            }),
            Just(Command::Tick),
        ]
    }

    proptest! {
        #[test]
        fn varints_are_postcards(value in any::<u64>(), signed in any::<i64>()) {
            prop_assert_eq!(fast(|o, v| varint(o, *v), &value), postcard::to_allocvec(&value).unwrap());
            prop_assert_eq!(
                fast(|o, v| varint_i64(o, *v), &signed),
                postcard::to_allocvec(&signed).unwrap()
            );
        }

        #[test]
        fn outcomes_are_postcards(o in outcome_strategy()) {
            prop_assert_eq!(fast(outcome, &o), postcard::to_allocvec(&o).unwrap());
        }

        #[test]
        fn commands_are_postcards(c in command_strategy()) {
            prop_assert_eq!(fast(command, &c), postcard::to_allocvec(&c).unwrap());
        }
    }

    #[test]
    fn varint_edges_are_postcards() {
        for value in [0, 1, 0x7f, 0x80, 0x3fff, 0x4000, u64::MAX - 1, u64::MAX] {
            assert_eq!(
                fast(|o, v| varint(o, *v), &value),
                postcard::to_allocvec(&value).unwrap()
            );
        }
        for value in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(
                fast(|o, v| varint_i64(o, *v), &value),
                postcard::to_allocvec(&value).unwrap()
            );
        }
    }
}
