//! Answers in the store's binary form, back to back: what the apply path hands to the
//! trail's writer. Each is its key and its value as they go to disk, so an answer costs the
//! apply path a few copies into one buffer rather than an allocation per id and outcome,
//! and the writer holds it with one more copy.

use tollgate_ledger::{RequestId, TenantId};

use crate::layout::{encode_answer_into, put_answer_key, AnswerRef};
use crate::AnswerRow;

/// Answers in their binary form, in the order pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerBatch {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    at_ms: u64,
    start: usize,
    key_end: usize,
    end: usize,
}

/// One answer of a batch: when it was given, its key and its value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EncodedAnswer<'a> {
    pub at_ms: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl AnswerBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Appends the answer to `request_id` of `tenant`: `answer`'s fields, and its encoded
    /// outcome borrowed (a caller encodes outcomes into a buffer it keeps).
    pub fn push(&mut self, tenant: &TenantId, request_id: &RequestId, answer: AnswerRef<'_>) {
        let start = self.bytes.len();
        put_answer_key(&mut self.bytes, tenant, request_id);
        let key_end = self.bytes.len();
        encode_answer_into(&mut self.bytes, &answer);
        self.spans.push(Span {
            at_ms: answer.at_ms,
            start,
            key_end,
            end: self.bytes.len(),
        });
    }

    pub fn push_row(&mut self, row: &AnswerRow) {
        let answer = &row.answer;
        let answer = AnswerRef {
            payload: answer.payload,
            at_ms: answer.at_ms,
            position: answer.position,
            outcome: &answer.outcome,
        };
        self.push(&row.tenant, &row.request_id, answer);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = EncodedAnswer<'_>> + '_ {
        self.spans.iter().map(|span| EncodedAnswer {
            at_ms: span.at_ms,
            key: &self.bytes[span.start..span.key_end],
            value: &self.bytes[span.key_end..span.end],
        })
    }
}
