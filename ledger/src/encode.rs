//! Postcard's bytes for the hot path's values, written by hand.
//!
//! The payload hash of a command, a remembered answer and an audit record's hashed body are
//! all defined as postcard bytes (see `dedup.rs`, `audit.rs`). Reserve, commit, release and
//! record are the commands that run at full rate; for them and their answers and audit
//! records this writes the very same bytes directly (varints, length-prefixed strings)
//! instead of going through serde's generic serializer. Everything else falls back to
//! postcard itself. `tests` checks the two agree, value for value.
//!
//! The bytes go into a `Writer`: a buffer on the stack and a length the compiler keeps in a
//! register, where a `&mut Vec<u8>` would reload and store its length after every byte (a
//! store of a byte may alias it) and copy each id through a call to memcpy.

use serde::Serialize;

use super::{Amounts, Command, Dimension, Outcome, SessionId};

/// Room of a hot-path encoding, on the stack. A command, answer or audit body with ids of
/// a few dozen bytes (UUIDs, names) fits; a longer one (ids may have `ID_BYTES_MAX` bytes)
/// is encoded by postcard instead, into a reused buffer. Small enough that zeroing it is a
/// few vector stores, not a call to memset.
pub const HOT_BYTES: usize = 256;

/// Appends bytes to a fixed buffer; what does not fit is dropped and remembered as an
/// overflow, so that `finish` gives nothing rather than a cut value.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflowed: bool,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            len: 0,
            overflowed: false,
        }
    }

    #[inline]
    pub fn byte(&mut self, byte: u8) {
        match self.buf.get_mut(self.len) {
            Some(at) => {
                *at = byte;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    #[inline]
    pub fn bytes(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        match self.buf.get_mut(self.len..end) {
            Some(into) => {
                copy_short(into, bytes);
                self.len = end;
            }
            None => self.overflowed = true,
        }
    }

    /// Postcard's varint of `value` (LEB128: 7 bits a byte, low bits first).
    #[inline]
    pub fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte((value as u8) | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    /// Postcard's zigzag varint of `value`.
    #[inline]
    pub fn varint_i64(&mut self, value: i64) {
        self.varint(((value << 1) ^ (value >> 63)) as u64);
    }

    /// A string as postcard writes it: its length as a varint, then its bytes.
    #[inline]
    pub fn str(&mut self, value: &[u8]) {
        self.varint(value.len() as u64);
        self.bytes(value);
    }

    /// An `Option<&str>`: a 0 byte, or a 1 byte and the string.
    #[inline]
    pub fn opt_str(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.byte(0),
            Some(value) => {
                self.byte(1);
                self.str(value);
            }
        }
    }

    #[inline]
    pub fn amounts(&mut self, a: &Amounts) {
        self.varint(a.tokens);
        self.varint(a.cost_micros);
        self.varint(a.calls);
    }

    /// The bytes written; None if some did not fit.
    pub fn finish(self) -> Option<&'a [u8]> {
        let Writer {
            buf,
            len,
            overflowed,
        } = self;
        let buf: &'a [u8] = buf;
        if overflowed {
            None
        } else {
            buf.get(..len)
        }
    }
}

/// `into.copy_from_slice(from)` (of equal lengths) for the short ids of the hot path,
/// without a call to memcpy: eight bytes at a time, the last word overlapping the one
/// before it.
#[inline]
fn copy_short(into: &mut [u8], from: &[u8]) {
    let n = from.len().min(into.len());
    if n < 8 {
        for (into, from) in into.iter_mut().zip(from) {
            *into = *from;
        }
        return;
    }
    let mut at = 0;
    while at + 8 < n {
        into[at..at + 8].copy_from_slice(&from[at..at + 8]);
        at += 8;
    }
    into[n - 8..n].copy_from_slice(&from[n - 8..n]);
}

/// `prefix` (raw bytes, e.g. a remembered answer's request id; often empty), then the bytes
/// of `value`: written by `fast` into `stack` if it can (it returns false for values it
/// leaves to postcard), else by postcard into `spill`.
pub fn bytes_of<'a, T: Serialize + ?Sized>(
    stack: &'a mut [u8; HOT_BYTES],
    spill: &'a mut Vec<u8>,
    prefix: &[u8],
    value: &T,
    fast: impl FnOnce(&mut Writer<'a>, &T) -> bool,
) -> &'a [u8] {
    let mut writer = Writer::new(stack);
    writer.bytes(prefix);
    if fast(&mut writer, value) {
        if let Some(bytes) = writer.finish() {
            return bytes;
        }
    }
    spill.clear();
    spill.extend_from_slice(prefix);
    postcard_into(spill, value);
    spill
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

/// Writes postcard's bytes of `outcome`; false (nothing written) for the outcomes left to
/// postcard: denials, rejections and the answers about leases.
pub fn outcome(w: &mut Writer<'_>, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Granted {
            reservation_id,
            expires_at_ms,
            tightest,
        } => {
            w.byte(0);
            w.varint(reservation_id.0);
            w.varint(*expires_at_ms);
            match tightest {
                None => w.byte(0),
                Some(r) => {
                    w.byte(1);
                    w.str(r.limit_id.as_bytes());
                    w.byte(dimension(r.dimension));
                    w.varint_i64(r.remaining);
                }
            }
        }
        Outcome::Committed {
            reservation_id,
            overrun,
            late,
            cost_micros,
        } => {
            w.byte(2);
            w.varint(reservation_id.0);
            w.byte(u8::from(*overrun));
            w.byte(u8::from(*late));
            w.varint(*cost_micros);
        }
        Outcome::Released { reservation_id } => {
            w.byte(3);
            w.varint(reservation_id.0);
        }
        Outcome::Recorded { cost_micros } => {
            w.byte(4);
            w.varint(*cost_micros);
        }
        Outcome::Done => w.byte(5),
        Outcome::Denied(_)
        | Outcome::Rejected(_)
        | Outcome::Leased(_)
        | Outcome::LeaseRefused(_)
        | Outcome::Settled { .. } => return false,
    }
    true
}

/// Writes postcard's bytes of a reserve without usage, as `command` does.
fn reserve(w: &mut Writer<'_>, cmd: &Command) {
    let Command::Reserve {
        request_id,
        tenant,
        agent,
        tool,
        estimate,
        ttl_ms,
        fingerprint,
        shape,
        usage: None,
        session,
    } = cmd
    else {
        debug_assert!(
            false,
            "reserve() is called with reserves without usage only"
        );
        return;
    };
    w.byte(0);
    w.str(request_id.as_bytes());
    w.str(tenant.as_bytes());
    w.str(agent.as_bytes());
    w.str(tool.as_bytes());
    w.amounts(estimate);
    w.varint(*ttl_ms);
    w.opt_str(fingerprint.as_deref().map(str::as_bytes));
    w.opt_str(shape.as_deref().map(str::as_bytes));
    w.byte(0);
    w.opt_str(session.as_ref().map(SessionId::as_bytes));
}

/// Writes postcard's bytes of `cmd`; false (nothing written) for the commands left to
/// postcard: all but reserve, commit, release and record.
pub fn command(w: &mut Writer<'_>, cmd: &Command) -> bool {
    match cmd {
        Command::Reserve { usage: None, .. } => reserve(w, cmd),
        Command::Commit {
            request_id,
            tenant,
            reservation_id,
            actual,
            usage: None,
            abandoned,
        } => {
            w.byte(1);
            w.str(request_id.as_bytes());
            w.str(tenant.as_bytes());
            w.varint(reservation_id.0);
            w.amounts(actual);
            w.byte(0);
            w.byte(u8::from(*abandoned));
        }
        Command::Release {
            request_id,
            tenant,
            reservation_id,
        } => {
            w.byte(2);
            w.str(request_id.as_bytes());
            w.str(tenant.as_bytes());
            w.varint(reservation_id.0);
        }
        Command::Record {
            request_id,
            tenant,
            agent,
            tool,
            actual,
            usage: None,
            offline,
            session,
        } => {
            w.byte(3);
            w.str(request_id.as_bytes());
            w.str(tenant.as_bytes());
            w.str(agent.as_bytes());
            w.str(tool.as_bytes());
            w.amounts(actual);
            w.byte(0);
            w.byte(u8::from(*offline));
            w.opt_str(session.as_ref().map(SessionId::as_bytes));
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        AgentId, DenyReason, LimitId, Rejection, Remaining, RequestId, ReservationId, TenantId,
        TenantPolicy, ToolId,
    };

    /// The bytes the hot path uses for `value`: `fast`'s, or postcard's where it declines.
    fn fast<T: Serialize>(f: impl FnOnce(&mut Writer<'_>, &T) -> bool, value: &T) -> Vec<u8> {
        let mut stack = [0u8; HOT_BYTES];
        let mut spill = vec![0xAB];
        bytes_of(&mut stack, &mut spill, &[], value, f).to_vec()
    }

    fn varint_of(value: &u64) -> Vec<u8> {
        fast(
            |w, v| {
                w.varint(*v);
                true
            },
            value,
        )
    }

    fn varint_i64_of(value: &i64) -> Vec<u8> {
        fast(
            |w, v| {
                w.varint_i64(*v);
                true
            },
            value,
        )
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
                    cost_micros: 0,
                }
            }),
            any::<u64>().prop_map(|r| Outcome::Released {
                reservation_id: ReservationId(r)
            }),
            any::<u64>().prop_map(|cost_micros| Outcome::Recorded { cost_micros }),
            Just(Outcome::Done),
            id().prop_map(|a| Outcome::Denied(DenyReason::Frozen {
                agent: Some(AgentId::new(a).unwrap())
            })),
            id().prop_map(|t| Outcome::Rejected(Rejection::UnknownTenant {
                tenant: TenantId::new(t).unwrap()
            })),
        ]
    }

    /// Usage (which the hand-written encodings leave to postcard).
    fn usage_strategy() -> impl Strategy<Value = crate::Usage> {
        (id(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(m, input, output, cached)| {
            crate::Usage {
                model: crate::ModelId::new(m).unwrap(),
                input_tokens: input,
                output_tokens: output,
                cached_input_tokens: cached,
            }
        })
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
                proptest::option::of(id()),
                proptest::option::of(id())
            )
                .prop_map(|(q, t, a, tool, estimate, ttl_ms, fingerprint, shape)| {
                    Command::Reserve {
                        request_id: RequestId::new(q).unwrap(),
                        tenant: TenantId::new(t).unwrap(),
                        agent: AgentId::new(a).unwrap(),
                        tool: ToolId::new(tool).unwrap(),
                        estimate,
                        ttl_ms,
                        fingerprint,
                        shape,
                        usage: None,
                        session: None,
                    }
                }),
            (
                id(),
                id(),
                any::<u64>(),
                amounts_strategy(),
                any::<bool>(),
                proptest::option::of(usage_strategy())
            )
                .prop_map(|(q, t, r, actual, abandoned, usage)| Command::Commit {
                    request_id: RequestId::new(q).unwrap(),
                    tenant: TenantId::new(t).unwrap(),
                    reservation_id: ReservationId(r),
                    actual,
                    abandoned,
                    usage,
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
                    usage: None,
                    offline: false,
                    session: None,
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
            prop_assert_eq!(varint_of(&value), postcard::to_allocvec(&value).unwrap());
            prop_assert_eq!(varint_i64_of(&signed), postcard::to_allocvec(&signed).unwrap());
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
            assert_eq!(varint_of(&value), postcard::to_allocvec(&value).unwrap());
        }
        for value in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(
                varint_i64_of(&value),
                postcard::to_allocvec(&value).unwrap()
            );
        }
    }

    #[test]
    fn ids_of_every_length_are_copied_whole() {
        let id: Vec<u8> = (0..=255u8).collect();
        for len in 0..=crate::ID_BYTES_MAX {
            let mut buf = [0u8; HOT_BYTES];
            let mut w = Writer::new(&mut buf);
            w.str(&id[..len]);
            let mut expected = Vec::new();
            postcard_into(&mut expected, &id[..len]);
            assert_eq!(w.finish(), Some(&expected[..]), "{len} bytes");
        }
    }

    #[test]
    fn a_value_that_does_not_fit_is_left_to_postcard() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.str(b"abcd");
        assert_eq!(w.finish(), None);
        // Where the fast path gives nothing, `bytes_of` takes postcard's bytes, after the
        // prefix.
        let value = 300u64;
        let mut stack = [0u8; HOT_BYTES];
        let mut spill = Vec::new();
        let bytes = bytes_of(&mut stack, &mut spill, b"id", &value, |w, v| {
            w.varint(*v);
            false
        });
        let mut expected = b"id".to_vec();
        postcard_into(&mut expected, &value);
        assert_eq!(bytes, expected);
    }
}
