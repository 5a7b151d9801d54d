//! Audit records in their binary form, back to back: what the apply path hands to the
//! node's trail on disk. The form is postcard's encoding of [`AuditRecord`], so a store
//! decodes it as it always did; the ledger builds it straight from the canonical bodies it
//! keeps (`AuditLog::encode_after`), with no decoding and no allocation per record.
//!
//! Postcard writes a record as its body's `seq` and `at_ms`, then `time` (None in binary
//! formats: one zero byte), then the rest of the body, then `hash`. So a body becomes a
//! record by inserting that byte and appending the hash.

use serde::Deserialize;

use super::AuditRecord;

/// Records in their binary form, in the order pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditBatch {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    seq: u64,
    at_ms: u64,
    start: usize,
    end: usize,
}

/// One record of a batch: its position, its time and its binary form.
#[derive(Clone, Copy, Debug)]
pub struct EncodedRecord<'a> {
    pub seq: u64,
    pub at_ms: u64,
    pub bytes: &'a [u8],
}

/// The fields a store indexes by, borrowed from the binary form.
#[derive(Deserialize)]
struct Ids<'a> {
    _seq: u64,
    _at_ms: u64,
    _time: Option<&'a str>,
    tenant: Option<&'a str>,
    agent: Option<&'a str>,
}

impl AuditBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    pub fn get(&self, index: usize) -> Option<EncodedRecord<'_>> {
        let span = self.spans.get(index)?;
        Some(EncodedRecord {
            seq: span.seq,
            at_ms: span.at_ms,
            bytes: self.bytes.get(span.start..span.end)?,
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = EncodedRecord<'_>> + '_ {
        self.spans.iter().map(|span| EncodedRecord {
            seq: span.seq,
            at_ms: span.at_ms,
            bytes: &self.bytes[span.start..span.end],
        })
    }

    /// The seq of the last record (None: empty).
    pub fn last_seq(&self) -> Option<u64> {
        self.spans.last().map(|span| span.seq)
    }

    /// Appends a record (a peer's, or one decoded earlier).
    pub fn push(&mut self, record: &AuditRecord) {
        let start = self.bytes.len();
        // Serializing a record into a Vec has no failure mode but allocation.
        if postcard::to_io(record, &mut self.bytes).is_err() {
            self.bytes.truncate(start);
            return;
        }
        self.spans.push(Span {
            seq: record.seq,
            at_ms: record.at_ms,
            start,
            end: self.bytes.len(),
        });
    }

    /// Appends the record whose canonical body (possibly split, as a ring holds it) and
    /// hash are given. A body that does not start with two varints (never written by the
    /// ledger) is skipped.
    pub(crate) fn push_body<'b>(
        &mut self,
        seq: u64,
        at_ms: u64,
        body: impl Iterator<Item = &'b [u8]>,
        hash: &[u8; 32],
    ) {
        let start = self.bytes.len();
        for part in body {
            self.bytes.extend_from_slice(part);
        }
        let Some(time_at) = varint_len(&self.bytes[start..])
            .and_then(|seq_len| Some(seq_len + varint_len(self.bytes.get(start + seq_len..)?)?))
        else {
            self.bytes.truncate(start);
            return;
        };
        // Shifts only this record's bytes after `seq` and `at_ms`: it is the last one.
        self.bytes.insert(start + time_at, 0);
        self.bytes.extend_from_slice(hash);
        self.spans.push(Span {
            seq,
            at_ms,
            start,
            end: self.bytes.len(),
        });
    }
}

/// The length of the varint at the start of `bytes` (postcard's integers), if whole.
fn varint_len(bytes: &[u8]) -> Option<usize> {
    let end = bytes.iter().take(10).position(|b| b & 0x80 == 0)?;
    Some(end + 1)
}

impl EncodedRecord<'_> {
    /// The hash this record links to: the 32 bytes before its own hash.
    pub fn prev_hash(&self) -> Option<[u8; 32]> {
        let end = self.bytes.len().checked_sub(32)?;
        let start = end.checked_sub(32)?;
        <[u8; 32]>::try_from(&self.bytes[start..end]).ok()
    }

    /// The tenant and agent ids, borrowed; None if the bytes do not parse.
    pub fn ids(&self) -> Option<(Option<&str>, Option<&str>)> {
        let (ids, _) = postcard::take_from_bytes::<Ids<'_>>(self.bytes).ok()?;
        Some((ids.tenant, ids.agent))
    }

    pub fn decode(&self) -> Result<AuditRecord, postcard::Error> {
        postcard::from_bytes(self.bytes)
    }
}
