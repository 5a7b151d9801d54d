//! The audit archive: sealed segment files that outlive the records the cluster keeps in
//! memory, verifiable offline end to end.
//!
//! # Format
//!
//! A directory of segments, each two files:
//!
//! - `audit-<first seq>-<last seq>.jsonl.zst` (both seqs zero-padded to 20 digits, so names
//!   sort by sequence): zstd-compressed JSON lines, exactly the lines `audit export` writes.
//! - `audit-<first seq>-<last seq>.json`, its manifest: `format`, `segment` (the file name),
//!   `first_seq`, `last_seq`, `records`, `first_prev_hash` (the first record's `prev_hash`),
//!   `last_hash` (the last record's `hash`), `bytes` and `sha256` of the compressed file.
//!
//! A segment is sealed when its manifest exists: both are written under temporary names,
//! synced, the segment renamed, then the manifest, then the directory synced, so a crash
//! leaves at most a segment without a manifest, which verification ignores and the next
//! `audit archive` removes.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_ledger::{verify_chain, AuditRecord, ChainHead, GENESIS_PREV_HASH};

/// The manifest's `format`.
pub const SEGMENT_FORMAT: &str = "tollgate-audit-segment-1";
/// Records per segment unless `--segment-records` says otherwise.
pub const SEGMENT_RECORDS_DEFAULT: u64 = 100_000;
/// Most segments one archive may hold (a directory listing is read whole).
const SEGMENTS_MAX: usize = 1_000_000;
/// Longest JSON line read back; an audit record is a few hundred bytes.
const LINE_BYTES_MAX: u64 = 1 << 20;
/// Records verified at once; chunks overlap by one record so every link is checked.
const CHAIN_CHUNK_RECORDS: usize = 10_000;
/// zstd's level: the default, a good ratio at hundreds of MB/s.
const ZSTD_LEVEL: i32 = 3;
/// A manifest is a few hundred bytes; a larger file is not one.
const MANIFEST_BYTES_MAX: u64 = 64 * 1024;

/// A segment's manifest (the sidecar `.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub segment: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub first_prev_hash: String,
    pub last_hash: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The base name of the segment holding `first..=last`, without extension.
pub fn segment_stem(first: u64, last: u64) -> String {
    format!("audit-{first:020}-{last:020}")
}

/// A head given as `SEQ:HASH`, HASH the full 64 hex digits or a prefix of at least 12 (as
/// `tollgate status` prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectHead {
    pub seq: u64,
    pub hash_prefix: String,
}

pub fn parse_expect_head(text: &str) -> Result<ExpectHead, String> {
    let (seq, hash) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not SEQ:HASH (as `tollgate status` shows it)"))?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| format!("{seq:?} is not a sequence number"))?;
    let hash = hash.to_ascii_lowercase();
    let hex_digits = hash.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_digits || !(super::render::HASH_HEX_SHORT..=64).contains(&hash.len()) {
        return Err(format!(
            "{hash:?} is not a hash: 12 to 64 hex digits (status shows 12)"
        ));
    }
    Ok(ExpectHead {
        seq,
        hash_prefix: hash,
    })
}

/// Walks a chain record by record in bounded memory: verified in overlapping chunks with
/// the ledger's `verify_chain`, and watched for an expected head.
#[derive(Default)]
pub struct ChainWalker {
    chunk: Vec<AuditRecord>,
    pub records: u64,
    pub first_seq: Option<u64>,
    expect: Option<ExpectHead>,
    expect_seen: Option<[u8; 32]>,
}

impl ChainWalker {
    pub fn new(expect: Option<ExpectHead>) -> Self {
        Self {
            expect,
            ..Self::default()
        }
    }

    /// The last record taken (verified once `finish` or the next chunk ran).
    pub fn last(&self) -> Option<&AuditRecord> {
        self.chunk.last()
    }

    pub fn push(&mut self, record: AuditRecord) -> anyhow::Result<()> {
        if let Some(expect) = &self.expect {
            if expect.seq == record.seq {
                self.expect_seen = Some(record.hash);
            }
        }
        self.first_seq.get_or_insert(record.seq);
        self.records += 1;
        self.chunk.push(record);
        if self.chunk.len() >= CHAIN_CHUNK_RECORDS {
            self.verify_chunk()?;
        }
        Ok(())
    }

    /// Verifies the records taken so far.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.verify_chunk().map(|_| ())
    }

    fn verify_chunk(&mut self) -> anyhow::Result<ChainHead> {
        let head = verify_chain(&self.chunk).map_err(|e| anyhow!("audit chain broken: {e}"))?;
        // Keep the last record: the next one must link to it.
        let keep_from = self.chunk.len().saturating_sub(1);
        self.chunk.drain(..keep_from);
        Ok(head)
    }

    /// Verifies what is left and checks the expected head; the chain's head.
    pub fn finish(&mut self) -> anyhow::Result<ChainHead> {
        let head = self.verify_chunk()?;
        if let Some(expect) = &self.expect {
            check_expected(expect, self.expect_seen, self.first_seq, head)?;
        }
        Ok(head)
    }
}

pub(super) fn check_expected(
    expect: &ExpectHead,
    seen: Option<[u8; 32]>,
    first_seq: Option<u64>,
    head: ChainHead,
) -> anyhow::Result<()> {
    let wanted = format!("{}:{}", expect.seq, expect.hash_prefix);
    match seen.map(hex::encode) {
        Some(hash) if hash.starts_with(&expect.hash_prefix) => Ok(()),
        Some(hash) => bail!(
            "expected head {wanted}, but the verified chain has {}:{hash}",
            expect.seq
        ),
        None => bail!(
            "expected head {wanted}, but seq {} is not in the verified chain ({}..={})",
            expect.seq,
            first_seq.unwrap_or_default(),
            head.seq
        ),
    }
}

/// Reads one line of at most [`LINE_BYTES_MAX`] bytes; None at the end.
fn read_line_bounded(reader: &mut impl BufRead, line: &mut String) -> anyhow::Result<bool> {
    line.clear();
    let read = reader.by_ref().take(LINE_BYTES_MAX + 1).read_line(line)?;
    if read as u64 > LINE_BYTES_MAX {
        bail!("a line longer than {LINE_BYTES_MAX} bytes is not an audit record");
    }
    Ok(read > 0)
}

/// Parses a JSON line into an audit record, as `audit export` writes it.
pub fn parse_record(line: &str) -> anyhow::Result<AuditRecord> {
    serde_json::from_str(line).context("not an audit record as `audit export` writes it")
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes = self.bytes.saturating_add(written as u64);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A segment being written: lines compressed into a temporary file.
pub struct SegmentWriter {
    dir: PathBuf,
    temp: PathBuf,
    encoder: zstd::Encoder<'static, HashingWriter<File>>,
    first: Option<(u64, [u8; 32])>,
    last: Option<(u64, [u8; 32])>,
    pub records: u64,
}

impl SegmentWriter {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let temp = dir.join(format!(".audit-segment-{}.tmp", std::process::id()));
        let file =
            File::create(&temp).with_context(|| format!("could not create {}", temp.display()))?;
        let sink = HashingWriter {
            inner: file,
            hasher: Sha256::new(),
            bytes: 0,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            temp,
            encoder: zstd::Encoder::new(sink, ZSTD_LEVEL)?,
            first: None,
            last: None,
            records: 0,
        })
    }

    /// Appends `line` (the record's JSON as the server wrote it) for `record`.
    pub fn append(&mut self, record: &AuditRecord, line: &str) -> anyhow::Result<()> {
        self.first.get_or_insert((record.seq, record.prev_hash));
        self.last = Some((record.seq, record.hash));
        self.encoder.write_all(line.as_bytes())?;
        self.encoder.write_all(b"\n")?;
        self.records += 1;
        Ok(())
    }

    /// Seals the segment: compressed, synced, renamed into place with its manifest.
    pub fn seal(self) -> anyhow::Result<Manifest> {
        let (Some((first_seq, first_prev)), Some((last_seq, last_hash))) = (self.first, self.last)
        else {
            let _ = fs::remove_file(&self.temp);
            bail!("an empty segment is never sealed");
        };
        let sink = self.encoder.finish()?;
        sink.inner.sync_all()?;
        let stem = segment_stem(first_seq, last_seq);
        let manifest = Manifest {
            format: SEGMENT_FORMAT.into(),
            segment: format!("{stem}.jsonl.zst"),
            first_seq,
            last_seq,
            records: self.records,
            first_prev_hash: hex::encode(first_prev),
            last_hash: hex::encode(last_hash),
            bytes: sink.bytes,
            sha256: hex::encode(sink.hasher.finalize()),
        };
        let manifest_temp = self.dir.join(format!(".{stem}.json.tmp"));
        let mut file = File::create(&manifest_temp)?;
        file.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&self.temp, self.dir.join(&manifest.segment))?;
        fs::rename(&manifest_temp, self.dir.join(format!("{stem}.json")))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(manifest)
    }
}

/// The manifests of `dir`, ordered by first seq. Files that are not manifests are left
/// alone; a manifest that does not read is an error naming it.
pub fn read_manifests(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let mut manifests = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("audit-") && name.ends_with(".json")) {
            continue;
        }
        if manifests.len() >= SEGMENTS_MAX {
            bail!("{} holds more than {SEGMENTS_MAX} segments", dir.display());
        }
        let path = dir.join(name);
        let mut text = String::new();
        File::open(&path)?
            .take(MANIFEST_BYTES_MAX)
            .read_to_string(&mut text)
            .with_context(|| format!("could not read {}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a segment manifest", path.display()))?;
        if manifest.format != SEGMENT_FORMAT {
            bail!("{}: unknown format {:?}", path.display(), manifest.format);
        }
        let expected_stem = segment_stem(manifest.first_seq, manifest.last_seq);
        if name != format!("{expected_stem}.json")
            || manifest.segment != format!("{expected_stem}.jsonl.zst")
        {
            bail!(
                "{}: its name and segment do not match its seqs {}..={}",
                path.display(),
                manifest.first_seq,
                manifest.last_seq
            );
        }
        manifests.push(manifest);
    }
    manifests.sort_by_key(|m| (m.first_seq, m.last_seq));
    Ok(manifests)
}

/// Segment files without a manifest (a crash between the renames) and temporary files:
/// never sealed, removed before archiving on.
pub fn remove_unsealed(dir: &Path, manifests: &[Manifest]) -> anyhow::Result<Vec<String>> {
    let sealed: std::collections::HashSet<&str> =
        manifests.iter().map(|m| m.segment.as_str()).collect();
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let orphan = name.starts_with("audit-") && name.ends_with(".jsonl.zst");
        let temp = name.starts_with(".audit-") && name.ends_with(".tmp");
        if (orphan && !sealed.contains(name)) || temp {
            fs::remove_file(dir.join(name))?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

/// What verifying an archive found.
#[derive(Debug, PartialEq, Eq)]
pub struct ArchiveVerified {
    pub segments: u64,
    pub records: u64,
    pub first_seq: u64,
    pub head: ChainHead,
}

/// Verifies every segment of `dir` and the chain across them, streaming.
pub fn verify_archive(dir: &Path, expect: Option<ExpectHead>) -> anyhow::Result<ArchiveVerified> {
    let manifests = read_manifests(dir)?;
    let Some(first) = manifests.first() else {
        bail!("{} holds no sealed audit segments", dir.display());
    };
    let first_seq = first.first_seq;
    let mut walker = ChainWalker::new(expect);
    let mut previous: Option<&Manifest> = None;
    for manifest in &manifests {
        check_link(previous, manifest)?;
        verify_segment(dir, manifest, &mut walker)
            .with_context(|| format!("segment {} does not verify", manifest.segment))?;
        previous = Some(manifest);
    }
    let head = walker.finish()?;
    Ok(ArchiveVerified {
        segments: manifests.len() as u64,
        records: walker.records,
        first_seq,
        head,
    })
}

/// A segment continues the one before it: no gap, no overlap, linked hashes.
fn check_link(previous: Option<&Manifest>, manifest: &Manifest) -> anyhow::Result<()> {
    let Some(previous) = previous else {
        if manifest.first_seq == 1 && manifest.first_prev_hash != hex::encode(GENESIS_PREV_HASH) {
            bail!(
                "segment {}: seq 1 does not link to the genesis hash",
                manifest.segment
            );
        }
        return Ok(());
    };
    let expected = previous.last_seq.saturating_add(1);
    if manifest.first_seq > expected {
        bail!(
            "gap before segment {}: the archive has no seqs {}..={} (after {})",
            manifest.segment,
            expected,
            manifest.first_seq - 1,
            previous.segment
        );
    }
    if manifest.first_seq < expected {
        bail!(
            "segment {} overlaps {}: it starts at seq {}, the one before ends at {}",
            manifest.segment,
            previous.segment,
            manifest.first_seq,
            previous.last_seq
        );
    }
    if manifest.first_prev_hash != previous.last_hash {
        bail!(
            "segment {}: its first record (seq {}) does not link to the last of {}",
            manifest.segment,
            manifest.first_seq,
            previous.segment
        );
    }
    Ok(())
}

/// SHA-256 and length of a file, streamed.
fn file_digest(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file =
        File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut bytes: u64 = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((hex::encode(hasher.finalize()), bytes));
        }
        hasher.update(&buffer[..read]);
        bytes = bytes.saturating_add(read as u64);
    }
}

/// Checks one segment's file against its manifest and feeds its records to `walker`.
fn verify_segment(dir: &Path, manifest: &Manifest, walker: &mut ChainWalker) -> anyhow::Result<()> {
    let path = dir.join(&manifest.segment);
    let (sha256, bytes) = file_digest(&path)?;
    if sha256 != manifest.sha256 || bytes != manifest.bytes {
        bail!("the file's SHA-256 or size is not its manifest's: altered or truncated");
    }
    let decoder = zstd::Decoder::new(File::open(&path)?)?;
    let mut reader = BufReader::new(decoder);
    let mut line = String::new();
    let mut count: u64 = 0;
    let mut first: Option<(u64, [u8; 32])> = None;
    while read_line_bounded(&mut reader, &mut line)? {
        if line.trim().is_empty() {
            continue;
        }
        count += 1;
        let record =
            parse_record(&line).with_context(|| format!("record {count} of the segment"))?;
        first.get_or_insert((record.seq, record.prev_hash));
        walker
            .push(record)
            .with_context(|| format!("at record {count} of the segment"))?;
    }
    // Verified here, not only across chunks: a break is reported with its segment.
    walker.checkpoint()?;
    let last = walker.last().map(|r| (r.seq, r.hash));
    let found = (
        count,
        first.map(|(seq, hash)| (seq, hex::encode(hash))),
        last.map(|(seq, hash)| (seq, hex::encode(hash))),
    );
    let claimed = (
        manifest.records,
        Some((manifest.first_seq, manifest.first_prev_hash.clone())),
        Some((manifest.last_seq, manifest.last_hash.clone())),
    );
    if found != claimed {
        bail!("its records are not what its manifest says (count, first or last seq and hash)");
    }
    Ok(())
}

/// The first record read past an archive's `end` continues it: never a silent gap.
pub fn check_continues(end: Option<ChainHead>, record: &AuditRecord) -> anyhow::Result<()> {
    let Some(end) = end else { return Ok(()) };
    let next = end.seq.saturating_add(1);
    if record.seq > next {
        bail!(
            "gap: the archive ends at seq {}, but the cluster's oldest retained record is \
             seq {}: records {next}..={} were dropped from memory before being archived",
            end.seq,
            record.seq,
            record.seq - 1
        );
    }
    if record.seq != next || record.prev_hash != end.hash {
        bail!(
            "the cluster's record seq {} does not continue the archive (ends at {}:{}): \
             an archive of another cluster?",
            record.seq,
            end.seq,
            hex::encode(end.hash)
        );
    }
    Ok(())
}

/// Where an archive ends: the last sealed segment's last seq and hash, None when empty.
pub fn archive_end(manifests: &[Manifest]) -> anyhow::Result<Option<ChainHead>> {
    let Some(last) = manifests.last() else {
        return Ok(None);
    };
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&last.last_hash, &mut hash)
        .map_err(|e| anyhow!("{}: last_hash is not 64 hex digits: {e}", last.segment))?;
    Ok(Some(ChainHead {
        seq: last.last_seq,
        hash,
    }))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tollgate_ledger::{Amounts, AuditEvent};

    /// A valid chain of records `from..=to`, linked to `prev` (seq `from - 1`'s hash).
    pub(in crate::cli) fn chain(from: u64, to: u64, mut prev: [u8; 32]) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        for seq in from..=to {
            let mut record = AuditRecord {
                seq,
                at_ms: 1_714_564_800_000 + seq,
                tenant: None,
                agent: None,
                tool: None,
                request_id: None,
                reservation_id: None,
                event: AuditEvent::Freeze,
                amounts: Amounts::default(),
                prev_hash: prev,
                hash: [0; 32],
            };
            record.hash = record.compute_hash();
            prev = record.hash;
            records.push(record);
        }
        records
    }

    fn write_segment(dir: &Path, records: &[AuditRecord]) -> Manifest {
        let mut writer = SegmentWriter::create(dir).unwrap();
        for record in records {
            writer
                .append(record, &serde_json::to_string(record).unwrap())
                .unwrap();
        }
        writer.seal().unwrap()
    }

    /// Three segments 1..=5, 6..=9, 10..=12; returns the records.
    fn archive_of_three(dir: &Path) -> Vec<AuditRecord> {
        let records = chain(1, 12, GENESIS_PREV_HASH);
        write_segment(dir, &records[..5]);
        write_segment(dir, &records[5..9]);
        write_segment(dir, &records[9..]);
        records
    }

    #[test]
    fn an_archive_verifies_across_segments_with_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let records = archive_of_three(dir.path());
        let verified = verify_archive(dir.path(), None).unwrap();
        assert_eq!(
            verified,
            ArchiveVerified {
                segments: 3,
                records: 12,
                first_seq: 1,
                head: ChainHead {
                    seq: 12,
                    hash: records[11].hash
                },
            }
        );
        let manifests = read_manifests(dir.path()).unwrap();
        assert_eq!(
            manifests[1].segment,
            "audit-00000000000000000006-00000000000000000009.jsonl.zst"
        );
        assert_eq!(archive_end(&manifests).unwrap().unwrap(), verified.head);
    }

    #[test]
    fn an_expected_head_must_be_in_the_chain_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let records = archive_of_three(dir.path());
        let right = format!("7:{}", &hex::encode(records[6].hash)[..12]);
        verify_archive(dir.path(), Some(parse_expect_head(&right).unwrap())).unwrap();
        let wrong = format!("7:{}", hex::encode(records[5].hash));
        let error = verify_archive(dir.path(), Some(parse_expect_head(&wrong).unwrap()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&wrong) && error.contains("has 7:"),
            "{error}"
        );
        let absent = format!("13:{}", hex::encode(records[5].hash));
        let error = verify_archive(dir.path(), Some(parse_expect_head(&absent).unwrap()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("seq 13 is not in the verified chain (1..=12)"),
            "{error}"
        );
        assert!(parse_expect_head("7").is_err());
        assert!(parse_expect_head("7:abc").is_err());
        assert!(parse_expect_head("x:0123456789ab").is_err());
    }

    #[test]
    fn a_missing_middle_segment_is_a_gap_named_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        archive_of_three(dir.path());
        let stem = segment_stem(6, 9);
        fs::remove_file(dir.path().join(format!("{stem}.json"))).unwrap();
        fs::remove_file(dir.path().join(format!("{stem}.jsonl.zst"))).unwrap();
        let error = format!("{:#}", verify_archive(dir.path(), None).unwrap_err());
        assert!(
            error.contains("gap before segment audit-00000000000000000010"),
            "{error}"
        );
        assert!(error.contains("no seqs 6..=9"), "{error}");
    }

    /// Rewrites segment `stem` with `edit` applied to its decompressed text, and the
    /// manifest's hash and size fixed when `fix_manifest`.
    fn tamper(dir: &Path, stem: &str, edit: impl Fn(String) -> String, fix_manifest: bool) {
        let path = dir.join(format!("{stem}.jsonl.zst"));
        let text = String::from_utf8(zstd::decode_all(File::open(&path).unwrap()).unwrap());
        let compressed = zstd::encode_all(edit(text.unwrap()).as_bytes(), ZSTD_LEVEL).unwrap();
        fs::write(&path, &compressed).unwrap();
        if fix_manifest {
            let manifest_path = dir.join(format!("{stem}.json"));
            let mut manifest: Manifest =
                serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
            manifest.sha256 = hex::encode(Sha256::digest(&compressed));
            manifest.bytes = compressed.len() as u64;
            fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        }
    }

    #[test]
    fn a_tampered_segment_fails_naming_it_with_or_without_a_fixed_manifest() {
        for fix_manifest in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            archive_of_three(dir.path());
            let stem = segment_stem(6, 9);
            let edit = |text: String| text.replacen("\"tokens\":0", "\"tokens\":1", 1);
            tamper(dir.path(), &stem, edit, fix_manifest);
            let error = format!("{:#}", verify_archive(dir.path(), None).unwrap_err());
            assert!(
                error.contains(&format!("segment {stem}.jsonl.zst")),
                "{error}"
            );
            let why = if fix_manifest {
                "seq 6: stored hash does not match"
            } else {
                "SHA-256"
            };
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn an_unsealed_segment_is_ignored_by_verify_and_removed_before_archiving() {
        let dir = tempfile::tempdir().unwrap();
        let records = archive_of_three(dir.path());
        let mut writer = SegmentWriter::create(dir.path()).unwrap();
        let next = chain(13, 13, records[11].hash);
        writer.append(&next[0], "{}").unwrap();
        drop(writer);
        let orphan = format!("{}.jsonl.zst", segment_stem(13, 13));
        fs::write(dir.path().join(&orphan), b"not sealed").unwrap();
        assert_eq!(verify_archive(dir.path(), None).unwrap().head.seq, 12);
        let manifests = read_manifests(dir.path()).unwrap();
        let mut removed = remove_unsealed(dir.path(), &manifests).unwrap();
        removed.sort();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(removed[1], orphan);
    }

    #[test]
    fn overlapping_or_unlinked_segments_do_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let records = chain(1, 6, GENESIS_PREV_HASH);
        write_segment(dir.path(), &records[..4]);
        write_segment(dir.path(), &records[3..]);
        let error = format!("{:#}", verify_archive(dir.path(), None).unwrap_err());
        assert!(error.contains("overlaps"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), &records[..3]);
        write_segment(dir.path(), &chain(4, 6, [9; 32]));
        let error = format!("{:#}", verify_archive(dir.path(), None).unwrap_err());
        assert!(error.contains("does not link to the last of"), "{error}");
    }
}
