//! The audit trail from the operator's side: query it, export it as JSON lines, and verify
//! its hash chain, on the cluster or in an exported file (offline, with the ledger's own
//! `verify_chain`, so the file is checked by the same code that built the chain).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tollgate_client::{v1, AuditExport};

use super::archive::{
    self as segments, parse_expect_head, ChainWalker, ExpectHead, SegmentWriter,
    SEGMENT_RECORDS_DEFAULT,
};
use super::money::decimal_micros;
use super::ops::{out, out_json, Ops, ROWS_DEFAULT};
use super::parse::{parse_query_limit, parse_time_ms};
use super::render;
use tollgate_ledger::{verify_chain, AuditError, AuditRecord, ChainHead};

/// Which audit records: by tenant, agent and time (RFC 3339, a date, or unix ms).
#[derive(Debug, Default, Args)]
pub struct AuditFilterArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub agent: Option<String>,
    /// From this time on (inclusive): 2024-05-01T12:00:00Z, 2024-05-01, or unix ms.
    #[arg(long = "from", value_name = "TIME", value_parser = parse_time_ms)]
    pub from_ms: Option<u64>,
    /// Up to this time.
    #[arg(long = "to", value_name = "TIME", value_parser = parse_time_ms)]
    pub to_ms: Option<u64>,
    /// Only records of this event, named as in the export: threshold_crossed, commit,
    /// deny, trip, ...
    #[arg(long, value_name = "NAME")]
    pub event: Option<String>,
    /// Only records of this tool.
    #[arg(long)]
    pub tool: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit records as a table, oldest first.
    Query {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Only records after this sequence number (to page on).
        #[arg(long, value_name = "SEQ")]
        after_seq: Option<u64>,
        /// Most records to show (at most 10000; page on with --after-seq).
        #[arg(long, value_name = "N", default_value_t = ROWS_DEFAULT, value_parser = parse_query_limit)]
        limit: u32,
    },
    /// Every retained record as JSON lines, oldest first. Verify with `audit verify
    /// --file` only an export without --tenant/--agent: a filtered one does not chain.
    Export {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Write to this file (complete or not at all) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Check the hash chain: the cluster's (on the leader), an exported file's or an
    /// archive's (offline).
    Verify {
        /// A JSON-lines file written by `audit export` (unfiltered by tenant and agent).
        #[arg(long, value_name = "FILE", conflicts_with = "archive")]
        file: Option<std::path::PathBuf>,
        /// A directory written by `audit archive`: every segment and the chain across them.
        #[arg(long, value_name = "DIR")]
        archive: Option<std::path::PathBuf>,
        /// With --file or --archive: the chain must hold this record, SEQ:HASH as
        /// `tollgate status` shows the chain head (HASH: 12 to 64 hex digits).
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_expect_head)]
        expect_head: Option<ExpectHead>,
    },
    /// Append the cluster's retained records to sealed segment files in DIR, from where
    /// the archive ends (the first run: the oldest retained record). Admin key only.
    Archive {
        /// The archive directory (created if missing).
        #[arg(long, value_name = "DIR")]
        to: std::path::PathBuf,
        /// Records per segment file.
        #[arg(long, value_name = "N", default_value_t = SEGMENT_RECORDS_DEFAULT,
              value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        segment_records: u64,
    },
}

/// Records verified at once when checking a file: memory stays bounded however long the
/// export. Consecutive chunks overlap by one record, so every link is checked.
const VERIFY_CHUNK_RECORDS: usize = 10_000;

pub async fn audit(ops: &Ops, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Query {
            filter,
            after_seq,
            limit,
        } => query(ops, filter, after_seq, limit).await,
        AuditCommand::Export { filter, out } => export(ops, filter, out.as_deref()).await,
        AuditCommand::Verify {
            file: None,
            archive: None,
            expect_head: None,
        } => verify_cluster(ops).await,
        AuditCommand::Verify {
            file,
            archive,
            expect_head,
        } => verify_offline(ops.json, file.as_deref(), archive.as_deref(), expect_head),
        AuditCommand::Archive {
            to,
            segment_records,
        } => archive_to(ops, &to, segment_records).await,
    }
}

fn wire_query(
    filter: AuditFilterArgs,
    after_seq: Option<u64>,
    limit: u32,
) -> v1::AuditQueryRequest {
    v1::AuditQueryRequest {
        tenant: filter.tenant.unwrap_or_default(),
        agent: filter.agent.unwrap_or_default(),
        from_ms: filter.from_ms,
        to_ms: filter.to_ms,
        after_seq,
        limit,
        event: filter.event.unwrap_or_default(),
        tool: filter.tool.unwrap_or_default(),
    }
}

async fn query(
    ops: &Ops,
    filter: AuditFilterArgs,
    after_seq: Option<u64>,
    limit: u32,
) -> anyhow::Result<()> {
    let records = ops
        .client
        .query_audit(wire_query(filter, after_seq, limit))
        .await
        .map_err(|e| ops.failed("could not query the audit trail", e))?;
    if ops.json {
        let values = records
            .iter()
            .map(record_json)
            .collect::<anyhow::Result<Vec<Value>>>()?;
        return out_json(&Value::Array(values));
    }
    if records.is_empty() {
        return out("no audit records match\n");
    }
    let mut text = render::audit_table(&records).render();
    if let Some(last) = records
        .last()
        .filter(|_| limit > 0 && records.len() >= limit as usize)
    {
        text.push_str(&format!(
            "(first {} matching records; for the next page: --after-seq {})\n",
            records.len(),
            last.seq
        ));
    }
    out(&text)
}

/// A record as the server wrote it (its `json` field: the ledger's record, hashes in hex),
/// with `cost_usd` beside `amounts.cost_micros`. Only query adds it: an export keeps the
/// server's bytes, so its chain verifies.
fn record_json(record: &v1::AuditRecord) -> anyhow::Result<Value> {
    let mut value: Value = serde_json::from_str(&record.json)
        .with_context(|| format!("audit record seq {} came with unreadable JSON", record.seq))?;
    if let Some(amounts) = value.get_mut("amounts").and_then(Value::as_object_mut) {
        if let Some(micros) = amounts.get("cost_micros").and_then(Value::as_u64) {
            amounts.insert("cost_usd".into(), Value::String(decimal_micros(micros)));
        }
    }
    Ok(value)
}

async fn export(ops: &Ops, filter: AuditFilterArgs, path: Option<&Path>) -> anyhow::Result<()> {
    // A file is written under a temporary name and renamed when complete, so a file with
    // the asked-for name is never a silently truncated export.
    let partial = path.map(partial_path);
    let sink: Box<dyn Write> = match &partial {
        Some(partial) => Box::new(
            File::create(partial)
                .with_context(|| format!("could not create {}", partial.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut sink = BufWriter::new(sink);
    let mut stream = match ops.client.export_audit(wire_query(filter, None, 0)).await {
        Ok(stream) => stream,
        Err(error) => {
            if let Some(partial) = &partial {
                // Nothing was written: leave no empty file behind.
                let _ = std::fs::remove_file(partial);
            }
            return Err(ops.failed("could not start the audit export", error));
        }
    };
    let mut records_written: u64 = 0;
    let result = copy_records(ops, &mut stream, &mut sink, &mut records_written).await;
    drop(sink);
    finish_export(result, path, partial, records_written)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes every record of `stream` as one JSON line, counting them in `records_written`
/// (kept by the caller, so a failure can say how far it got).
async fn copy_records(
    ops: &Ops,
    stream: &mut AuditExport,
    sink: &mut impl Write,
    records_written: &mut u64,
) -> anyhow::Result<()> {
    while let Some(record) = stream.next().await.map_err(|e| {
        ops.failed(
            format!("audit export interrupted after {records_written} records"),
            e,
        )
    })? {
        if record.json.is_empty() {
            bail!("audit record seq {} came without its JSON", record.seq);
        }
        sink.write_all(record.json.as_bytes())?;
        sink.write_all(b"\n")?;
        *records_written += 1;
    }
    sink.flush()?;
    Ok(())
}

/// Renames a complete file export into place, or says where the incomplete one is.
fn finish_export(
    result: anyhow::Result<()>,
    path: Option<&Path>,
    partial: Option<PathBuf>,
    records_written: u64,
) -> anyhow::Result<()> {
    match (result, path, partial) {
        (Ok(()), Some(path), Some(partial)) => {
            std::fs::rename(&partial, path).with_context(|| {
                format!(
                    "could not rename {} to {}",
                    partial.display(),
                    path.display()
                )
            })?;
            eprintln!(
                "exported {records_written} audit records to {}",
                path.display()
            );
            Ok(())
        }
        (Ok(()), _, _) => Ok(()),
        // A reader that went away (`| head`) is not a failure of the export.
        (Err(error), None, _) if is_broken_pipe(&error) => Ok(()),
        (Err(error), _, partial) => {
            let kept = partial
                .map(|partial| format!("; the incomplete export is in {}", partial.display()))
                .unwrap_or_default();
            Err(error.context(format!("audit export failed{kept}")))
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn verify_cluster(ops: &Ops) -> anyhow::Result<()> {
    let response = ops
        .client
        .verify_audit()
        .await
        .map_err(|e| ops.failed("could not verify the audit trail", e))?;
    let hash = hex::encode(&response.head_hash);
    if ops.json {
        out_json(&json!({
            "ok": response.ok,
            "error": Some(&response.error).filter(|e| !e.is_empty()),
            "records_checked": response.records_checked,
            "first_seq": response.first_seq,
            "anchor": hex::encode(&response.anchor),
            "head_seq": response.head_seq,
            "head_hash": hash,
        }))?;
    }
    if !response.ok {
        bail!(
            "the cluster's audit chain does not verify: {}",
            response.error
        );
    }
    if !ops.json {
        out(&render::render_fields(&[
            (
                "audit chain",
                "intact from its anchor (verified on the leader's disk)".into(),
            ),
            ("records checked", response.records_checked.to_string()),
            ("first seq", response.first_seq.to_string()),
            ("anchor", hex::encode(&response.anchor)),
            ("head seq", response.head_seq.to_string()),
            ("head hash", hash),
        ]))?;
    }
    Ok(())
}

/// `audit verify --file` or `--archive`: offline, no cluster needed.
pub fn verify_offline(
    json: bool,
    file: Option<&Path>,
    archive: Option<&Path>,
    expect: Option<ExpectHead>,
) -> anyhow::Result<()> {
    match (file, archive) {
        (Some(file), _) => verify_file(json, file, expect),
        (None, Some(dir)) => verify_archive_dir(json, dir, expect),
        (None, None) => Err(super::UsageError(
            "--expect-head needs --file or --archive (the chain it checks)".into(),
        )
        .into()),
    }
}

fn verify_archive_dir(json: bool, dir: &Path, expect: Option<ExpectHead>) -> anyhow::Result<()> {
    let verified = match segments::verify_archive(dir, expect) {
        Ok(verified) => verified,
        Err(error) => {
            if json {
                out_json(&json!({ "ok": false, "error": format!("{error:#}") }))?;
            }
            bail!(
                "{}: audit archive does not verify: {error:#}",
                dir.display()
            );
        }
    };
    let hash = hex::encode(verified.head.hash);
    if json {
        return out_json(&json!({
            "ok": true,
            "segments": verified.segments,
            "records_checked": verified.records,
            "first_seq": verified.first_seq,
            "head_seq": verified.head.seq,
            "head_hash": hash,
        }));
    }
    out(&render::render_fields(&[
        ("audit archive", format!("intact ({})", dir.display())),
        ("segments", verified.segments.to_string()),
        ("records checked", verified.records.to_string()),
        (
            "seq range",
            format!("{}..={}", verified.first_seq, verified.head.seq),
        ),
        ("head", format!("{}:{hash}", verified.head.seq)),
    ]))
}

/// `audit archive --to DIR`: appends what the cluster retains past the archive's end.
async fn archive_to(ops: &Ops, dir: &Path, segment_records: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let manifests = segments::read_manifests(dir)?;
    for name in segments::remove_unsealed(dir, &manifests)? {
        eprintln!("removed {name}: never sealed (an interrupted archive run)");
    }
    let end = segments::archive_end(&manifests)?;
    let head = cluster_head(ops).await?;
    let after = end.map_or(0, |end| end.seq);
    if head < after {
        bail!(
            "the archive in {} ends at seq {after}, past the cluster's chain head {head}: \
             an archive of another cluster?",
            dir.display()
        );
    }
    let query = v1::AuditQueryRequest {
        after_seq: end.map(|end| end.seq),
        // The export stops at the head read above, though the log grows meanwhile.
        limit: u32::try_from(head - after).unwrap_or(u32::MAX),
        ..v1::AuditQueryRequest::default()
    };
    if head == after {
        return report_archived(ops, dir, &[], end);
    }
    let mut stream = ops
        .client
        .export_audit(query)
        .await
        .map_err(|e| ops.failed("could not start the audit export", e))?;
    let mut archiver = Archiver::new(dir, segment_records, end);
    let result = archiver.copy(ops, &mut stream, head).await;
    let sealed = archiver.finish(result)?;
    report_archived(ops, dir, &sealed, end)
}

/// The chain head of the first node of --cluster that answers: where this archive run
/// stops (the export is at least as new, since it starts after this).
async fn cluster_head(ops: &Ops) -> anyhow::Result<u64> {
    let mut last_error = None;
    for addr in &ops.client.config().endpoints {
        match ops.client.status(addr).await {
            Ok(status) => return Ok(status.chain_head_seq),
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) => Err(ops.failed("could not read the cluster's chain head", error)),
        None => bail!("no cluster node to ask (--cluster is empty)"),
    }
}

/// Copies the export into segments, checking every record's hash and link on the way.
struct Archiver<'a> {
    dir: &'a Path,
    segment_records: u64,
    walker: ChainWalker,
    /// Where the archive ends: the first record must continue it.
    end: Option<ChainHead>,
    segment: Option<SegmentWriter>,
    sealed: Vec<segments::Manifest>,
}

impl<'a> Archiver<'a> {
    fn new(dir: &'a Path, segment_records: u64, end: Option<ChainHead>) -> Self {
        Self {
            dir,
            segment_records,
            walker: ChainWalker::new(None),
            end,
            segment: None,
            sealed: Vec::new(),
        }
    }

    async fn copy(&mut self, ops: &Ops, stream: &mut AuditExport, head: u64) -> anyhow::Result<()> {
        while let Some(wire) = stream
            .next()
            .await
            .map_err(|e| ops.failed("audit export interrupted", e))?
        {
            let record = segments::parse_record(&wire.json)
                .with_context(|| format!("audit record seq {}", wire.seq))?;
            if self.walker.records == 0 {
                self.check_continues(&record)?;
            }
            let seq = record.seq;
            self.walker.push(record.clone())?;
            if self.segment.is_none() {
                self.segment = Some(SegmentWriter::create(self.dir)?);
            }
            if let Some(segment) = self.segment.as_mut() {
                segment.append(&record, &wire.json)?;
                if segment.records >= self.segment_records {
                    self.seal()?;
                }
            }
            if seq >= head {
                break;
            }
        }
        Ok(())
    }

    /// The first exported record continues the archive: never a silent gap.
    fn check_continues(&self, record: &AuditRecord) -> anyhow::Result<()> {
        segments::check_continues(self.end, record)
    }

    fn seal(&mut self) -> anyhow::Result<()> {
        if let Some(segment) = self.segment.take() {
            // Verified before sealing: a sealed segment never holds a broken chain.
            self.walker.finish()?;
            self.sealed.push(segment.seal()?);
        }
        Ok(())
    }

    /// Seals what was copied (also after a failure: what was read verifies), then reports.
    fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<Vec<segments::Manifest>> {
        let sealed = if self.walker.records > 0 {
            self.seal()
        } else {
            Ok(())
        };
        result.and(sealed)?;
        Ok(self.sealed)
    }
}

fn report_archived(
    ops: &Ops,
    dir: &Path,
    sealed: &[segments::Manifest],
    before: Option<ChainHead>,
) -> anyhow::Result<()> {
    let records: u64 = sealed.iter().map(|m| m.records).sum();
    let head = sealed
        .last()
        .map(|m| format!("{}:{}", m.last_seq, m.last_hash))
        .or(before.map(|h| format!("{}:{}", h.seq, hex::encode(h.hash))))
        .unwrap_or_else(|| "-".into());
    if ops.json {
        return out_json(&json!({
            "ok": true,
            "dir": dir.display().to_string(),
            "segments_sealed": sealed.iter().map(|m| &m.segment).collect::<Vec<_>>(),
            "records_archived": records,
            "archive_head": head,
        }));
    }
    out(&render::render_fields(&[
        ("audit archive", dir.display().to_string()),
        ("segments sealed", sealed.len().to_string()),
        ("records archived", records.to_string()),
        ("archive head", head),
    ]))
}

/// What a file verification found.
#[derive(Debug, PartialEq, Eq)]
struct FileVerified {
    records: u64,
    first_seq: u64,
    head: ChainHead,
    /// The hash of the record at the expected head's seq, if asked for and present.
    expect_seen: Option<[u8; 32]>,
}

pub fn verify_file(json: bool, path: &Path, expect: Option<ExpectHead>) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let name = path.display().to_string();
    let verified = match verify_lines(BufReader::new(file), &name, expect.as_ref()) {
        Ok(verified) => verified,
        Err(VerifyFileError::Chain(error)) => {
            let seq = broken_seq(&error);
            if json {
                out_json(&json!({ "ok": false, "error": error.to_string(), "broken_seq": seq }))?;
            }
            let hint = match error {
                AuditError::SeqGap { .. } | AuditError::BrokenLink { .. } => {
                    "\nhint: an export filtered by --tenant or --agent does not chain; verify a \
                     full, unfiltered export (tollgate audit export --out FILE)"
                }
                _ => "",
            };
            bail!("{}: audit chain broken: {error}{hint}", path.display());
        }
        Err(VerifyFileError::Input(error)) => return Err(error),
    };
    if let Some(expect) = &expect {
        segments::check_expected(
            expect,
            verified.expect_seen,
            Some(verified.first_seq),
            verified.head,
        )
        .with_context(|| format!("{name}: audit chain intact, but"))?;
    }
    let hash = hex::encode(verified.head.hash);
    if json {
        return out_json(&json!({
            "ok": true,
            "records_checked": verified.records,
            "first_seq": verified.first_seq,
            "head_seq": verified.head.seq,
            "head_hash": hash,
        }));
    }
    out(&render::render_fields(&[
        ("audit chain", format!("intact ({})", path.display())),
        ("records checked", verified.records.to_string()),
        (
            "seq range",
            format!("{}..={}", verified.first_seq, verified.head.seq),
        ),
        ("head seq", verified.head.seq.to_string()),
        ("head hash", hash),
    ]))
}

/// The seq of the record where the chain breaks.
fn broken_seq(error: &AuditError) -> u64 {
    match error {
        AuditError::HashMismatch { seq }
        | AuditError::BrokenLink { seq, .. }
        | AuditError::SeqGap { seq, .. }
        | AuditError::HeadMismatch { seq, .. } => *seq,
        AuditError::BadGenesis => 1,
    }
}

#[derive(Debug)]
enum VerifyFileError {
    /// The file could not be read or a line is not an audit record.
    Input(anyhow::Error),
    /// The records do not form an unbroken chain.
    Chain(AuditError),
}

/// Parses JSON lines (blank lines skipped) into audit records and verifies the chain in
/// overlapping chunks of [`VERIFY_CHUNK_RECORDS`].
fn verify_lines(
    reader: impl BufRead,
    name: &str,
    expect: Option<&ExpectHead>,
) -> Result<FileVerified, VerifyFileError> {
    let mut expect_seen = None;
    let mut chunk: Vec<AuditRecord> = Vec::with_capacity(VERIFY_CHUNK_RECORDS);
    let mut records: u64 = 0;
    let mut first_seq: Option<u64> = None;
    let mut head = ChainHead::default();
    for (index, line) in reader.lines().enumerate() {
        let line_number = index + 1;
        let line = line
            .with_context(|| format!("could not read {name} line {line_number}"))
            .map_err(VerifyFileError::Input)?;
        if line.trim().is_empty() {
            continue;
        }
        let record: AuditRecord = serde_json::from_str(&line)
            .with_context(|| {
                format!(
                    "{name} line {line_number} is not an audit record as `audit export` writes it"
                )
            })
            .map_err(VerifyFileError::Input)?;
        first_seq.get_or_insert(record.seq);
        if expect.is_some_and(|e| e.seq == record.seq) {
            expect_seen = Some(record.hash);
        }
        records += 1;
        chunk.push(record);
        if chunk.len() == VERIFY_CHUNK_RECORDS {
            head = verify_chain(&chunk).map_err(VerifyFileError::Chain)?;
            // Keep the last record: the next chunk must link to it.
            chunk.drain(..chunk.len() - 1);
        }
    }
    let Some(first_seq) = first_seq else {
        return Err(VerifyFileError::Input(anyhow!(
            "{name} holds no audit records"
        )));
    };
    if chunk.len() > 1 || records == 1 {
        head = verify_chain(&chunk).map_err(VerifyFileError::Chain)?;
    }
    Ok(FileVerified {
        records,
        first_seq,
        head,
        expect_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ledger::GENESIS_PREV_HASH;

    /// A valid chain of `count` records from seq 1, as `audit export` would write it.
    fn chain(count: u64) -> Vec<AuditRecord> {
        crate::cli::archive::tests::chain(1, count, GENESIS_PREV_HASH)
    }

    fn lines(records: &[AuditRecord]) -> String {
        records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn an_unaltered_export_verifies_with_its_head() {
        let records = chain(5);
        let verified = verify_lines(lines(&records).as_bytes(), "export.jsonl", None).unwrap();
        assert_eq!(
            verified,
            FileVerified {
                records: 5,
                first_seq: 1,
                head: ChainHead {
                    seq: 5,
                    hash: records[4].hash
                },
                expect_seen: None,
            }
        );
    }

    #[test]
    fn chunks_overlap_so_a_break_at_a_chunk_boundary_is_found() {
        let count = VERIFY_CHUNK_RECORDS as u64 * 2 + 1;
        let mut records = chain(count);
        let verified = verify_lines(lines(&records).as_bytes(), "f", None).unwrap();
        assert_eq!(verified.head.seq, count);
        assert_eq!(verified.records, count);
        // The first record of the second chunk no longer links to the last of the first.
        let boundary = VERIFY_CHUNK_RECORDS;
        records[boundary].prev_hash = [7; 32];
        records[boundary].hash = records[boundary].compute_hash();
        match verify_lines(lines(&records).as_bytes(), "f", None) {
            Err(VerifyFileError::Chain(error)) => {
                assert_eq!(broken_seq(&error), boundary as u64 + 1)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_altered_record_is_reported_with_its_seq() {
        let mut records = chain(4);
        records[2].amounts.cost_micros = 1;
        match verify_lines(lines(&records).as_bytes(), "f", None) {
            Err(VerifyFileError::Chain(error)) => assert_eq!(broken_seq(&error), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_filtered_export_does_not_chain() {
        let records = chain(5);
        let filtered = [records[0].clone(), records[2].clone()];
        assert!(matches!(
            verify_lines(lines(&filtered).as_bytes(), "f", None),
            Err(VerifyFileError::Chain(AuditError::SeqGap { seq: 3, .. }))
        ));
    }

    #[test]
    fn a_single_record_and_a_tail_verify_but_garbage_and_nothing_do_not() {
        let records = chain(3);
        let tail = verify_lines(lines(&records[1..]).as_bytes(), "f", None).unwrap();
        assert_eq!((tail.first_seq, tail.head.seq), (2, 3));
        let one = verify_lines(lines(&records[2..]).as_bytes(), "f", None).unwrap();
        assert_eq!(one.head.seq, 3);
        let with_blank = format!("\n{}\n", lines(&records));
        assert_eq!(
            verify_lines(with_blank.as_bytes(), "f", None)
                .unwrap()
                .records,
            3
        );
        assert!(matches!(
            verify_lines("".as_bytes(), "f", None),
            Err(VerifyFileError::Input(_))
        ));
        let garbage = verify_lines("{\"seq\": 1}\n".as_bytes(), "f.jsonl", None).unwrap_err();
        match garbage {
            VerifyFileError::Input(error) => {
                assert!(error.to_string().contains("f.jsonl line 1"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The first record an archive run reads continues the archive, or the run fails:
    /// naming the dropped seqs when the cluster no longer holds them.
    #[test]
    fn an_archive_run_never_skips_a_gap() {
        let records = chain(6);
        let end = ChainHead {
            seq: 2,
            hash: records[1].hash,
        };
        let dir = Path::new("unused");
        let archiver = Archiver::new(dir, 10, Some(end));
        archiver.check_continues(&records[2]).unwrap();
        let gap = archiver
            .check_continues(&records[4])
            .unwrap_err()
            .to_string();
        assert!(gap.contains("records 3..=4 were dropped"), "{gap}");
        let other = Archiver::new(
            dir,
            10,
            Some(ChainHead {
                seq: 2,
                hash: [1; 32],
            }),
        );
        let error = other.check_continues(&records[2]).unwrap_err().to_string();
        assert!(error.contains("does not continue the archive"), "{error}");
        Archiver::new(dir, 10, None)
            .check_continues(&records[4])
            .unwrap();
    }

    #[test]
    fn the_tool_filter_goes_on_the_wire() {
        #[derive(clap::Parser)]
        struct Query {
            #[command(flatten)]
            filter: AuditFilterArgs,
        }
        let parsed = <Query as clap::Parser>::try_parse_from(["q", "--tool", "web-search"]);
        let request = wire_query(parsed.unwrap().filter, None, 10);
        assert_eq!(request.tool, "web-search");
        assert_eq!(wire_query(AuditFilterArgs::default(), None, 10).tool, "");
    }

    #[test]
    fn audit_records_render_as_a_table() {
        let record = v1::AuditRecord {
            seq: 7,
            at_ms: 1_714_564_800_000,
            tenant: "acme".into(),
            event_json: r#"{"Commit":{"overrun":true,"late":false}}"#.into(),
            ..v1::AuditRecord::default()
        };
        let text: String = render::audit_table(&[record]).render();
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("7    2024-05-01T12:00:00.000Z  acme"),
            "{row}"
        );
        assert!(row.contains("Commit(late=false, overrun=true)"), "{row}");
    }

    #[test]
    fn queried_records_carry_cost_in_dollars_beside_micro_units() {
        let mut record = chain(1).remove(0);
        record.amounts.cost_micros = 49_040_000;
        let wire = v1::AuditRecord {
            seq: 1,
            json: serde_json::to_string(&record).unwrap(),
            ..v1::AuditRecord::default()
        };
        let value = record_json(&wire).unwrap();
        assert_eq!(value["amounts"]["cost_micros"], json!(49_040_000));
        assert_eq!(value["amounts"]["cost_usd"], json!("49.04"));
    }
}
