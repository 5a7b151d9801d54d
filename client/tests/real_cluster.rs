//! The client against a real cluster: a `tollgate dev` process (three nodes, no credentials)
//! started from the binary `TOLLGATE_BIN` names. Proves what only the server can: a dropped
//! guard is charged its estimate and audited `abandoned`, usage is priced by the tenant's
//! price table, and a stopped cluster fails fast. Ignored by default because it needs that
//! binary; run it with
//!
//! ```text
//! TOLLGATE_BIN=target/release/tollgate cargo test -p tollgate-client --test real_cluster -- --ignored
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_client::{v1, Amounts, Client, ClientConfig, Error, ReserveRequest, Usage};

/// How long the cluster may take to start, or to show a background settlement; only
/// reached if something is broken.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Ports `tollgate dev` uses above its base: three client listeners, and the peer listeners
/// 100 above them.
const DEV_PORT_OFFSETS: [u16; 6] = [0, 1, 2, 100, 101, 102];

/// A `tollgate dev` process, killed when dropped.
struct DevCluster {
    child: Child,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port whose six `tollgate dev` ports are free now.
fn dev_base_port() -> u16 {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = listener.local_addr().unwrap().port();
        drop(listener);
        let fits = base.checked_add(102).is_some();
        if fits && DEV_PORT_OFFSETS.iter().all(|offset| free(base + offset)) {
            return base;
        }
    }
    panic!("no six free ports for tollgate dev");
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl DevCluster {
    /// Starts `tollgate dev` and waits until it answers.
    async fn start() -> (DevCluster, Client) {
        let binary = PathBuf::from(std::env::var_os("TOLLGATE_BIN").expect(
            "TOLLGATE_BIN names the tollgate binary (e.g. target/release/tollgate) for this test",
        ));
        let dir = tempfile::tempdir().unwrap();
        let base = dev_base_port();
        let child = Command::new(&binary)
            .arg("dev")
            .arg("--no-demo")
            .arg("--port")
            .arg(base.to_string())
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(dir.path().join("dev"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let endpoints: Vec<String> = (0..3).map(|n| format!("127.0.0.1:{}", base + n)).collect();
        let cluster = DevCluster {
            child,
            endpoints,
            _dir: dir,
        };
        let client = Client::new(ClientConfig::new(cluster.endpoints.clone())).unwrap();
        let deadline = Instant::now() + WAIT_MAX;
        while let Err(error) = client.list_tenants().await {
            assert!(
                Instant::now() < deadline,
                "tollgate dev never answered: {error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (cluster, client)
    }
}

fn budget(id: &str, dimension: v1::Dimension, amount: u64) -> v1::Limit {
    v1::Limit {
        id: id.into(),
        scope: Some(v1::Scope {
            scope: Some(v1::scope::Scope::Tenant(v1::Empty {})),
        }),
        dimension: dimension.into(),
        kind: Some(v1::limit::Kind::Budget(v1::Budget {
            window: v1::Window::Lifetime.into(),
            amount,
        })),
    }
}

/// A tenant with a lifetime token budget and cost budget, each far above what tests spend.
async fn tenant(client: &Client, name: &str) {
    client.put_tenant(name, None).await.unwrap();
    for limit in [
        budget("tokens", v1::Dimension::Tokens, 1_000_000),
        budget("cost", v1::Dimension::Cost, 1_000_000_000),
    ] {
        client.put_limit(name, limit).await.unwrap();
    }
}

/// (used, held) of the tenant's budget `limit_id`.
async fn used_held(client: &Client, tenant: &str, limit_id: &str) -> (u64, u64) {
    let usage = client.usage(tenant, None, None).await.unwrap();
    usage
        .usage
        .iter()
        .find(|u| u.limit.as_ref().is_some_and(|l| l.id == limit_id))
        .map(|u| (u.used, u.held))
        .unwrap_or_else(|| panic!("no limit {limit_id} in {usage:?}"))
}

#[tokio::test]
#[ignore = "needs TOLLGATE_BIN, a tollgate binary to run `tollgate dev` with"]
async fn a_dropped_guard_is_charged_its_estimate_and_audited_abandoned() {
    let (_cluster, client) = DevCluster::start().await;
    tenant(&client, "dropper").await;
    let reservation = client
        .reserve(ReserveRequest::new("dropper", "bot", "llm").estimate(Amounts::new(100, 1_000, 1)))
        .await
        .unwrap();
    let reservation_id = reservation.reservation_id().unwrap();
    drop(reservation);

    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let tokens = used_held(&client, "dropper", "tokens").await;
        if tokens == (100, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tokens (used, held) stayed {tokens:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(used_held(&client, "dropper", "cost").await, (1_000, 0));

    let records = client
        .query_audit(v1::AuditQueryRequest {
            tenant: "dropper".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let settlements: Vec<&str> = records
        .iter()
        .filter(|r| r.reservation_id == Some(reservation_id))
        .map(|r| r.event_json.as_str())
        .filter(|event| event.to_ascii_lowercase().contains("\"commit\""))
        .collect();
    assert_eq!(settlements.len(), 1, "{records:?}");
    assert!(
        settlements[0].contains("\"abandoned\":true"),
        "{}",
        settlements[0]
    );
}

#[tokio::test]
#[ignore = "needs TOLLGATE_BIN, a tollgate binary to run `tollgate dev` with"]
async fn usage_is_priced_by_the_tenants_price_table() {
    let (_cluster, client) = DevCluster::start().await;
    tenant(&client, "priced").await;
    // $2.50, $10 and $1.25 per million input, output and cached input tokens.
    let price = v1::Price {
        model: "gpt-test".into(),
        input_micros: 2_500_000,
        output_micros: 10_000_000,
        cached_input_micros: Some(1_250_000),
        per_tokens: 1_000_000,
        version: 0,
    };
    let wire = v1::PutPriceRequest {
        request_id: tollgate_client::new_request_id(),
        tenant: "priced".into(),
        price: Some(price),
    };
    client
        .call(|rpc| {
            let wire = wire.clone();
            async move { rpc.admin().put_price(wire).await }
        })
        .await
        .unwrap();
    // 1001 × 2.5 + 333 × 10 + 7 × 1.25 = 5841.25 micros, rounded up: 5842.
    let used = Usage::new("gpt-test", 1_001, 333).cached_input_tokens(7);
    let cost_micros = 5_842;

    let reservation = client
        .reserve(
            ReserveRequest::new("priced", "bot", "llm:gpt-test")
                .usage(Usage::new("gpt-test", 1_001, 1_000)),
        )
        .await
        .unwrap();
    let committed = reservation.commit_usage(used.clone()).await.unwrap();
    assert_eq!(committed.cost_micros, cost_micros);
    assert_eq!(used_held(&client, "priced", "cost").await, (cost_micros, 0));
    assert_eq!(used_held(&client, "priced", "tokens").await, (1_341, 0));

    let recorded = client
        .record_usage("priced", "bot", "llm:gpt-test", used)
        .await
        .unwrap();
    assert_eq!(recorded.cost_micros, cost_micros);
    assert_eq!(
        used_held(&client, "priced", "cost").await,
        (2 * cost_micros, 0)
    );
}

#[tokio::test]
#[ignore = "needs TOLLGATE_BIN, a tollgate binary to run `tollgate dev` with"]
async fn a_stopped_cluster_fails_fast() {
    let (cluster, client) = DevCluster::start().await;
    drop(cluster);
    for n in 0..20 {
        let started = Instant::now();
        let outcome = client
            .reserve(ReserveRequest::new("acme", "bot", "llm"))
            .await;
        let elapsed = started.elapsed();
        assert!(
            matches!(outcome, Err(Error::Unavailable { .. })),
            "reserve {n}: {outcome:?}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "reserve {n} took {elapsed:?}"
        );
    }
}
