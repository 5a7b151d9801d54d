//! `/metrics` after load through a real three-node cluster: every family described, the
//! tenant gauges equal to what `GetUsage` reports, denials counted by the denying limit, and
//! every metric the Grafana dashboard and the alert rules query present in the scrape; and
//! the tenant gauges bounded to the top N, a tenant that drops out leaving the scrape.
//!
//! The HTTP listener and the recorder are process-wide, so this binary has one cluster test.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{tenant_with_budget, TestCluster, LEADER_WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_client::{Amounts, Client, Error, Reservation, ReserveRequest};

/// How long the samplers (every one to five seconds) get to show a state.
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

const TENANT: &str = "metered";
const BUDGET_TOKENS: u64 = 1_000;
/// `--metrics-tenants-max` of the test's nodes.
const TENANTS_SAMPLED: usize = 4;

/// One scrape: HELP and TYPE per family, and every sample with its labels.
#[derive(Default)]
struct Scrape {
    help: BTreeSet<String>,
    types: HashMap<String, String>,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("#"), Some("HELP"), Some(name)) => {
                    scrape.help.insert(name.to_owned());
                }
                (Some("#"), Some("TYPE"), Some(name)) => {
                    let kind = words.next().unwrap_or_default().to_owned();
                    scrape.types.insert(name.to_owned(), kind);
                }
                _ => scrape.samples.push(parse_sample(line)),
            }
        }
        scrape
    }

    /// The family a sample or query name belongs to: itself, or a histogram's or summary's
    /// family for its `_bucket`, `_sum` and `_count` series. None if there is no such family.
    fn family(&self, name: &str) -> Option<String> {
        if self.types.contains_key(name) {
            return Some(name.to_owned());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            let kind = self.types.get(base)?;
            (kind == "histogram" || kind == "summary").then(|| base.to_owned())
        })
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.samples.iter().filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        });
        let (_, _, value) = matching.next()?;
        assert!(matching.next().is_none(), "{name} {labels:?} is ambiguous");
        Some(*value)
    }
}

/// `name{k="v",...} value` (label values here hold no quotes or commas).
fn parse_sample(line: &str) -> (String, HashMap<String, String>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = value.parse().expect("a sample's value is a number");
    let Some((name, labels)) = series.split_once('{') else {
        return (series.to_owned(), HashMap::new(), value);
    };
    let labels = labels
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
        .collect();
    (name.to_owned(), labels, value)
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Scrape::parse(body)
}

/// Metric names an expression queries: `tollgate_*` and `process_*` identifiers.
fn queried_names(expr: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = ["tollgate_", "process_"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let preceded = rest[..start].chars().next_back().is_some_and(is_word);
        let end = rest[start..]
            .find(|c| !is_word(c))
            .map_or(rest.len(), |e| start + e);
        if !preceded {
            names.insert(rest[start..end].to_owned());
        }
        rest = &rest[end..];
    }
    names
}

#[test]
fn queried_names_are_metric_identifiers_only() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "histogram_quantile(0.99, sum by (le) (rate(tollgate_raft_log_sync_seconds_bucket[5m])))",
            &["tollgate_raft_log_sync_seconds_bucket"],
        ),
        (
            "process_open_fds / process_max_fds > 0.8",
            &["process_max_fds", "process_open_fds"],
        ),
        ("my_tollgate_x + tollgate_a{x=\"tollgate_b\"}", &["tollgate_a", "tollgate_b"]),
        ("sum(up)", &[]),
    ];
    for (expr, expected) in cases {
        let names: Vec<String> = queried_names(expr).into_iter().collect();
        assert_eq!(names, expected, "{expr}");
    }
}

/// Every `expr` of the dashboard (any depth of the JSON) and of the alert rules.
fn deploy_exprs() -> Vec<String> {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let dashboard =
        std::fs::read_to_string(format!("{deploy}/grafana-dashboard.json")).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard's queries: {exprs:?}");
    let alerts = std::fs::read_to_string(format!("{deploy}/prometheus-alerts.yml"))
        .expect("the alert rules");
    let rules: Vec<String> = alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(str::to_owned)
        .collect();
    assert!(rules.len() >= 5, "the alert rules' expressions: {rules:?}");
    exprs.extend(rules);
    exprs
}

fn collect_exprs(value: &serde_json::Value, exprs: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                    _ => collect_exprs(value, exprs),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|v| collect_exprs(v, exprs)),
        _ => {}
    }
}

/// Reserves and commits (through the client's coalesced batches), one hold left open, then
/// reservations the budget cannot take. Returns how many were denied by `tokens`, and the
/// hold (kept until the test ends).
async fn load(client: &Client) -> (u64, Reservation) {
    tenant_with_budget(client, TENANT, BUDGET_TOKENS).await;
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..5 {
                let request = ReserveRequest::new(TENANT, format!("agent-{worker}"), "llm");
                let reservation = client.reserve(request.tokens(10)).await.expect("granted");
                reservation
                    .commit(Amounts::new(9, 0, 1))
                    .await
                    .expect("committed");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let held = ReserveRequest::new(TENANT, "holder", "llm").tokens(50);
    let held = client.reserve(held).await.expect("granted");
    let mut denied = 0;
    for _ in 0..3 {
        let request = ReserveRequest::new(TENANT, "greedy", "llm").tokens(BUDGET_TOKENS);
        match client.reserve(request).await {
            Err(Error::Denied { limit_id, .. }) if limit_id == "tokens" => denied += 1,
            other => panic!("expected a denial by tokens, got {other:?}"),
        }
    }
    (denied, held)
}

/// Polls the scrape until the tenant's gauges equal a fresh `GetUsage` of its budget.
async fn assert_gauges_match_usage(addr: SocketAddr, client: &Client) {
    let deadline = tokio::time::Instant::now() + SCRAPE_WAIT;
    loop {
        let usage = client.usage(TENANT, None, None).await.expect("usage");
        let row = usage
            .usage
            .iter()
            .find(|u| u.limit.as_ref().is_some_and(|l| l.id == "tokens"))
            .expect("the tokens budget is reported");
        let expected = [
            ("tollgate_tenant_limit_used", row.used as f64),
            ("tollgate_tenant_limit_held", row.held as f64),
            ("tollgate_tenant_limit_remaining", row.remaining as f64),
            ("tollgate_tenant_limit_capacity", BUDGET_TOKENS as f64),
        ];
        let labels = [("tenant", TENANT), ("limit", "tokens"), ("kind", "budget")];
        let scrape = scrape(addr).await;
        let seen: Vec<_> = expected
            .iter()
            .map(|(name, _)| scrape.value(name, &labels))
            .collect();
        if expected.iter().zip(&seen).all(|((_, e), s)| *s == Some(*e)) {
            assert!(row.used > 0 && row.held > 0, "the load shows: {row:?}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tenant gauges {seen:?} never matched GetUsage {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tenants that each take a larger share of a limit than [`TENANT`] does.
async fn tenants_nearer_their_limits(client: &Client, count: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for i in 0..count {
        let name = format!("nearly-spent-{i:02}");
        tenant_with_budget(client, &name, 10).await;
        client
            .record(&name, "bot", "llm", Amounts::new(9, 0, 1))
            .await
            .expect("recorded");
        names.insert(name);
    }
    names
}

/// The tenants that have tenant gauges in a scrape.
fn tenants_in(scrape: &Scrape) -> BTreeSet<String> {
    scrape
        .samples
        .iter()
        .filter(|(name, _, _)| name == "tollgate_tenant_limit_used")
        .filter_map(|(_, labels, _)| labels.get("tenant").cloned())
        .collect()
}

/// Polls until the gauges cover exactly `expected`: the top N, every other series gone.
async fn assert_tenants_become(addr: SocketAddr, expected: &BTreeSet<String>) {
    // The idle timeout, then a sampling pass and an upkeep round.
    let deadline =
        tokio::time::Instant::now() + tollgate_server::metrics::GAUGE_IDLE_TIMEOUT + SCRAPE_WAIT;
    loop {
        let seen = tenants_in(&scrape(addr).await);
        if &seen == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tenant gauges cover {seen:?}, not the top {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls the scrape until every name the deploy files query is there, then returns it.
async fn scrape_with_every_queried_name(addr: SocketAddr) -> Scrape {
    let queried: BTreeSet<String> = deploy_exprs()
        .iter()
        .flat_map(|e| queried_names(e))
        .collect();
    let deadline = tokio::time::Instant::now() + SCRAPE_WAIT;
    loop {
        let scrape = scrape(addr).await;
        // The exporter writes a family's TYPE only with its samples.
        let missing: Vec<&String> = queried
            .iter()
            .filter(|name| scrape.family(name).is_none())
            .collect();
        if missing.is_empty() {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard or alert rules query metrics the node does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The process's HTTP listener, as `tollgate dev` starts it for its nodes.
async fn spawn_http(test: &TestCluster) -> std::net::SocketAddr {
    let first = test.cluster.ids()[0];
    let node = test.cluster.node(first).expect("node");
    let config = tollgate_server::http::HttpConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        authenticator: node.authenticator(),
        endpoints: test.cluster.endpoints(),
    };
    tollgate_server::http::spawn(config)
        .await
        .expect("the HTTP listener starts")
}

fn assert_every_family_described(scrape: &Scrape) {
    for (name, _, _) in &scrape.samples {
        let family = scrape
            .family(name)
            .unwrap_or_else(|| panic!("{name} has no TYPE"));
        assert!(scrape.help.contains(&family), "{family} has no HELP");
    }
    for family in scrape.types.keys() {
        assert!(scrape.help.contains(family), "{family} has no HELP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_every_family_match_usage_and_cover_the_deploy_files() {
    let test = TestCluster::start(3).await;
    let addr = spawn_http(&test).await;
    for id in test.cluster.ids() {
        let node = test.cluster.node(id).expect("node").clone();
        tollgate_server::metrics::spawn_raft_gauges(node.clone());
        tollgate_server::metrics::tenants::spawn_tenant_gauges(node, TENANTS_SAMPLED);
    }
    test.cluster.leader(LEADER_WAIT).await.expect("a leader");
    let (denied, _held) = load(&test.client).await;

    assert_gauges_match_usage(addr, &test.client).await;
    let scrape = scrape_with_every_queried_name(addr).await;
    assert_every_family_described(&scrape);
    let counted = scrape
        .value(
            "tollgate_denials_total",
            &[("limit", "tokens"), ("reason", "limit")],
        )
        .expect("denials by the tokens limit are counted");
    // At least: a retried attempt answered from the ledger's memory is counted again.
    assert!(
        counted >= denied as f64 && denied == 3,
        "{counted} counted, {denied} denied"
    );
    let leaders = scrape
        .samples
        .iter()
        .filter(|s| s.0 == "tollgate_raft_is_leader");
    assert_eq!(
        leaders.map(|s| s.2).sum::<f64>(),
        1.0,
        "one leader among three nodes"
    );

    // Tenants nearer their limits push TENANT out of the top N, and its series leave.
    let nearer = tenants_nearer_their_limits(&test.client, TENANTS_SAMPLED).await;
    assert_tenants_become(addr, &nearer).await;
}
