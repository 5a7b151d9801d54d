//! The audit archive with a real cluster: `tollgate audit archive` seals what the cluster
//! retains into segments and resumes where it ended, `audit verify --archive` checks them
//! offline up to the cluster's own chain head, and tampering or a missing segment is named.

mod common;

use std::path::Path;

use clap::Parser;
use common::{
    converged_statuses, create_key, tenant_with_budget, TestCluster, ADMIN_KEY, LEADER_WAIT,
};
use tollgate_client::{v1, Amounts, Client, ReserveRequest};
use tollgate_server::archive::archive_step;
use tollgate_server::cli::archive::{read_manifests, segment_stem, verify_archive};
use tollgate_server::cli::{self, AuditCommand, OpsCommand, Target};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    target: Target,
}

/// `tollgate --cluster ADDR --api-key-file KEY`, the key written under `dir`.
fn target(addr: &str, dir: &Path, key: &str) -> Target {
    let key_file = dir.join(format!("key-{}", &key[..12]));
    std::fs::write(&key_file, key).expect("key file");
    let key_file = key_file.to_str().expect("a UTF-8 path").to_owned();
    Cli::try_parse_from(["tollgate", "--cluster", addr, "--api-key-file", &key_file])
        .expect("flags parse")
        .target
}

/// `calls` reservations committed, by tool `tool`: two audit records each.
async fn traffic(client: &Client, tool: &str, calls: u64) {
    for call in 0..calls {
        let request = ReserveRequest::new("acme", format!("agent-{}", call % 3), tool).tokens(5);
        let reservation = client.reserve(request).await.expect("granted");
        reservation
            .commit(Amounts::new(5, 0, 1))
            .await
            .expect("committed");
    }
}

fn archive(to: &Path, segment_records: u64) -> OpsCommand {
    OpsCommand::Audit(AuditCommand::Archive {
        to: to.to_path_buf(),
        segment_records,
    })
}

fn verify(archive: &Path, expect_head: Option<&str>) -> OpsCommand {
    let mut args = vec!["audit", "verify", "--archive", archive.to_str().unwrap()];
    if let Some(head) = expect_head {
        args.extend(["--expect-head", head]);
    }
    #[derive(Parser)]
    struct Verify {
        #[command(subcommand)]
        audit: AuditCommand,
    }
    let parsed =
        Verify::try_parse_from(std::iter::once("tollgate").chain(args.into_iter().skip(1)))
            .expect("verify flags parse");
    OpsCommand::Audit(parsed.audit)
}

/// The leader's chain head as `tollgate status` shows it (`SEQ:` and 12 hex digits) and
/// in full.
async fn chain_head(test: &TestCluster, addr: &str) -> (String, u64, String) {
    let status = test.client.status(addr).await.expect("status");
    let hash = hex::encode(&status.chain_head_hash);
    (
        format!("{}:{}", status.chain_head_seq, &hash[..12]),
        status.chain_head_seq,
        hash,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_resumes_verifies_to_the_cluster_head_and_names_what_is_wrong() {
    let test = TestCluster::with_auth(1).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let addr = test.cluster.addr(leader).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("archive");
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    traffic(&test.client, "llm", 5).await;

    cli::run(
        target(&addr, work.path(), ADMIN_KEY),
        archive(&dir, 100_000),
    )
    .await
    .expect("first archive run");
    let first = read_manifests(&dir).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let (_, seq, _) = chain_head(&test, &addr).await;
    assert_eq!((first[0].first_seq, first[0].last_seq), (1, seq));

    // More traffic; the second run continues from the first's end, in segments of 4.
    traffic(&test.client, "search", 6).await;
    cli::run(target(&addr, work.path(), ADMIN_KEY), archive(&dir, 4))
        .await
        .expect("second archive run");
    let manifests = read_manifests(&dir).unwrap();
    assert!(manifests.len() >= 4, "{manifests:?}");
    assert_eq!(manifests[1].first_seq, first[0].last_seq + 1);

    let (short, seq, hash) = chain_head(&test, &addr).await;
    let verified = verify_archive(&dir, None).expect("the archive verifies");
    assert_eq!(
        (verified.head.seq, hex::encode(verified.head.hash)),
        (seq, hash.clone())
    );
    assert_eq!(verified.records, seq);
    let offline = target("127.0.0.1:1", work.path(), "no-cluster-is-needed-for-this");
    cli::run(offline, verify(&dir, Some(&short)))
        .await
        .expect("the status head is in the archive");
    let wrong = format!("{seq}:{}", "0".repeat(64));
    let offline = target("127.0.0.1:1", work.path(), "no-cluster-is-needed-for-this");
    let error = cli::run(offline, verify(&dir, Some(&wrong)))
        .await
        .expect_err("a wrong head fails");
    assert!(format!("{error:#}").contains(&hash), "{error:#}");

    // Nothing new: a third run seals nothing and leaves the archive as it was.
    cli::run(target(&addr, work.path(), ADMIN_KEY), archive(&dir, 4))
        .await
        .expect("an archive run with nothing new");
    assert_eq!(read_manifests(&dir).unwrap(), manifests);

    // A missing middle segment is a gap, named.
    let middle = &manifests[1];
    let stem = segment_stem(middle.first_seq, middle.last_seq);
    std::fs::remove_file(dir.join(format!("{stem}.json"))).unwrap();
    let error = format!("{:#}", verify_archive(&dir, None).unwrap_err());
    assert!(error.contains("gap before segment"), "{error}");
    assert!(
        error.contains(&format!(
            "no seqs {}..={}",
            middle.first_seq, middle.last_seq
        )),
        "{error}"
    );
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_segment_fails_naming_it() {
    let test = TestCluster::with_auth(1).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let addr = test.cluster.addr(leader).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("archive");
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    traffic(&test.client, "llm", 4).await;
    cli::run(target(&addr, work.path(), ADMIN_KEY), archive(&dir, 3))
        .await
        .expect("archive");
    let manifests = read_manifests(&dir).unwrap();
    let victim = &manifests[1];
    // One byte of one record changed (a token count), re-compressed; the manifest as it was.
    let path = dir.join(&victim.segment);
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(&path).unwrap()).unwrap()).unwrap();
    let altered = text.replacen("\"tokens\":5", "\"tokens\":6", 1);
    assert_ne!(altered, text, "the segment holds a record to alter");
    std::fs::write(&path, zstd::encode_all(altered.as_bytes(), 3).unwrap()).unwrap();
    let error = format!("{:#}", verify_archive(&dir, None).unwrap_err());
    assert!(error.contains(&victim.segment), "{error}");
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_filter_by_tool_and_only_an_admin_archives_the_trail() {
    let test = TestCluster::with_auth(1).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let addr = test.cluster.addr(leader).unwrap();
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    traffic(&test.client, "llm", 2).await;
    traffic(&test.client, "search", 3).await;
    let query = |tool: &str| v1::AuditQueryRequest {
        tool: tool.into(),
        ..Default::default()
    };
    let search = test.client.query_audit(query("search")).await.unwrap();
    assert_eq!(search.len(), 6, "3 grants and 3 commits: {search:?}");
    assert!(search.iter().all(|r| r.tool == "search"), "{search:?}");

    // A tenant admin reads its own tenant's trail by tool, but may not archive the whole.
    let (_, secret) = create_key(&test.client, Some("acme"), v1::KeyRole::TenantAdmin, &[]).await;
    let tenant = common::client_for(&test.cluster, Some(&secret));
    let own = tenant.query_audit(query("llm")).await.unwrap();
    assert_eq!(own.len(), 4, "{own:?}");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("archive");
    let error = cli::run(target(&addr, work.path(), &secret), archive(&dir, 10))
        .await
        .expect_err("a tenant admin cannot archive the whole trail");
    assert!(format!("{error:#}").contains("denied"), "{error:#}");
    assert!(read_manifests(&dir).unwrap().is_empty());
    test.cluster.shutdown().await;
}

/// Waits until `node`'s trail on disk holds the records through `seq`: a step archives
/// what the disk holds, and the trail's writer runs a little behind the apply.
async fn stored_through(node: &tollgate_server::node::Node, seq: u64) {
    let stored = node.trail.written_through(seq, LEADER_WAIT).await;
    assert!(stored, "the trail on disk never held seq {seq}");
}

/// Every node archives the chain it applied: identical copies, each verifying to the
/// cluster's head, and a later step resumes where the last ended. With
/// `--audit-archive-dir` (here `audit_archive_dir`) each node archives into its own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_archives_an_identical_copy_of_the_chain() {
    let work = tempfile::tempdir().unwrap();
    let continuous = work.path().join("continuous");
    let option = continuous.clone();
    let test = TestCluster::start_with(3, |options| options.audit_archive_dir = Some(option)).await;
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    traffic(&test.client, "llm", 4).await;
    let statuses = converged_statuses(&test.cluster, &test.client).await;
    let head = (
        statuses[0].chain_head_seq,
        statuses[0].chain_head_hash.clone(),
    );
    for id in test.cluster.ids() {
        let node = test.cluster.node(id).expect("running");
        stored_through(node, head.0).await;
        let dir = work.path().join(format!("step-{id}"));
        assert_eq!(archive_step(node, &dir, 5).expect("archived"), head.0);
        let verified = verify_archive(&dir, None).expect("verifies");
        assert_eq!((verified.head.seq, verified.head.hash.to_vec()), head);
    }

    traffic(&test.client, "llm", 3).await;
    let statuses = converged_statuses(&test.cluster, &test.client).await;
    let node = test.cluster.node(test.cluster.ids()[0]).expect("running");
    let dir = work.path().join(format!("step-{}", test.cluster.ids()[0]));
    stored_through(node, statuses[0].chain_head_seq).await;
    let archived = archive_step(node, &dir, 5).expect("resumed");
    assert_eq!(archived, statuses[0].chain_head_seq - head.0);
    let verified = verify_archive(&dir, None).expect("verifies");
    assert_eq!(verified.head.seq, statuses[0].chain_head_seq);

    // The option's task ran its first step at start: each node has its own directory.
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    for id in test.cluster.ids() {
        let own = continuous.join(format!("node-{id}"));
        while !own.is_dir() {
            assert!(tokio::time::Instant::now() < deadline, "{own:?} never made");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    test.cluster.shutdown().await;
}
