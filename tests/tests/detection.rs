//! Runaway detection as a worker meets it over gRPC, with a tenant's default policy: a loop
//! trips its agent at the fifth repeat, and velocity counts what an agent is charged
//! (overruns at commit and records, not only estimates) against a floor for a new agent,
//! and shape velocity trips a loop that changes an argument on every call, while the
//! tenant's other agents are still served.

mod common;

use common::TestCluster;
use tollgate_client::{
    fingerprint, fingerprint_ignoring, fingerprint_shape, v1, Amounts, Client, Error,
    ReserveRequest,
};
use tollgate_ledger::{
    REPEAT_MAX_DEFAULT, SHAPE_FLOOR_DEFAULT, VELOCITY_FLOOR_DEFAULT, VELOCITY_WINDOW_MS_DEFAULT,
};

const TENANT: &str = "acme";
const DOLLAR: u64 = 1_000_000;

/// A tenant with the server's default policy and no limits.
async fn default_tenant(client: &Client) {
    client.put_tenant(TENANT, None).await.expect("put tenant");
}

fn call(agent: &str, cost_micros: u64) -> ReserveRequest {
    ReserveRequest::new(TENANT, agent, "llm:gpt-x").cost_micros(cost_micros)
}

/// The cause of a trip, or what the reserve came to instead.
async fn trip_cause(client: &Client, request: ReserveRequest) -> Result<String, String> {
    match client.reserve(request).await {
        Err(Error::Tripped { cause, .. }) => Ok(cause),
        Err(other) => Err(format!("refused otherwise: {other}")),
        Ok(reservation) => {
            reservation.release().await.expect("release");
            Err("granted".into())
        }
    }
}

/// Whether every audit record of `agent` falls in one velocity window: only then does its
/// spend count as one window's.
async fn in_one_velocity_window(client: &Client, agent: &str) -> bool {
    let records = client
        .query_audit(v1::AuditQueryRequest {
            tenant: TENANT.into(),
            agent: agent.into(),
            ..Default::default()
        })
        .await
        .expect("audit query");
    let windows: Vec<u64> = records
        .iter()
        .map(|r| r.at_ms / VELOCITY_WINDOW_MS_DEFAULT)
        .collect();
    !windows.is_empty() && windows.iter().all(|w| *w == windows[0])
}

/// Runs `attempt` with fresh agents until one ran within a single velocity window, and
/// returns its trip cause. Windows are aligned to the leader's clock, which a test does not
/// control; an attempt takes far less than a window, so two in a row never both straddle a
/// boundary.
async fn velocity_trip_in_one_window<F, Fut>(client: &Client, name: &str, attempt: F) -> String
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    for n in 0..2 {
        let agent = format!("{name}-{n}");
        let outcome = attempt(agent.clone()).await;
        if in_one_velocity_window(client, &agent).await {
            return outcome.unwrap_or_else(|e| panic!("{agent} was not tripped: {e}"));
        }
    }
    panic!("two attempts in a row straddled a velocity window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_loop_is_tripped_at_its_fifth_repeat_and_others_are_served() {
    let test = TestCluster::start(3).await;
    let client = &test.client;
    default_tenant(client).await;
    // A page counter changes on every call; the worker's fingerprint ignores it.
    for page in 1..REPEAT_MAX_DEFAULT {
        let args = serde_json::json!({"query": "latest news", "page": page});
        let fingerprint = fingerprint_ignoring("search", &args, &["page"]).expect("fingerprint");
        let request = call("researcher", 1_000).fingerprint(fingerprint);
        let reservation = client
            .reserve(request)
            .await
            .expect("the first repeats granted");
        reservation
            .commit(Amounts::new(0, 1_000, 1))
            .await
            .expect("commit");
    }
    let args = serde_json::json!({"query": "latest news", "page": REPEAT_MAX_DEFAULT});
    let fingerprint = fingerprint_ignoring("search", &args, &["page"]).expect("fingerprint");
    let cause = trip_cause(client, call("researcher", 1_000).fingerprint(fingerprint)).await;
    let cause = cause.expect("the fifth repeat trips the agent");
    assert!(
        cause.contains(&format!("seen {REPEAT_MAX_DEFAULT} times")),
        "{cause}"
    );
    // Tripped for good, whatever it calls next; the tenant's other agent is served.
    assert!(trip_cause(client, call("researcher", 1)).await.is_ok());
    let other = client
        .reserve(call("support-bot", 1_000))
        .await
        .expect("served");
    other
        .commit(Amounts::new(0, 1_000, 1))
        .await
        .expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_velocity_counts_overruns_and_records_against_a_new_agents_floor() {
    let test = TestCluster::start(3).await;
    let client = &test.client;
    default_tenant(client).await;
    let policy = client.get_tenant(TENANT).await.expect("get tenant").policy;
    let policy = policy.expect("the tenant's policy");
    assert!(policy.velocity_factor > 0, "velocity is on by default");
    assert_eq!(policy.velocity_floor, VELOCITY_FLOOR_DEFAULT);
    // Estimated at $1, committed at the floor and $1 more: the overrun is spend.
    let cause = velocity_trip_in_one_window(client, "overrun", |agent| async move {
        let reservation = client.reserve(call(&agent, DOLLAR)).await.expect("granted");
        let actual = Amounts::new(0, VELOCITY_FLOOR_DEFAULT + DOLLAR, 1);
        reservation.commit(actual).await.expect("commit");
        trip_cause(client, call(&agent, 1)).await
    })
    .await;
    assert!(cause.starts_with("velocity"), "{cause}");
    // Spend recorded without a reservation counts too.
    let cause = velocity_trip_in_one_window(client, "recorder", |agent| async move {
        let actual = Amounts::new(0, VELOCITY_FLOOR_DEFAULT + DOLLAR, 1);
        client
            .record(TENANT, &agent, "llm:gpt-x", actual)
            .await
            .expect("record");
        trip_cause(client, call(&agent, 1)).await
    })
    .await;
    assert!(cause.starts_with("velocity"), "{cause}");
    // A new agent spending under the floor, and the tenant's other agents, are served.
    let steady = client
        .reserve(call("steady", VELOCITY_FLOOR_DEFAULT / 2))
        .await;
    let steady = steady.expect("under the floor");
    steady
        .commit(Amounts::new(0, VELOCITY_FLOOR_DEFAULT / 2, 1))
        .await
        .expect("commit");
    let again = client.reserve(call("steady", DOLLAR)).await;
    again
        .expect("still under the floor")
        .release()
        .await
        .expect("release");
}

/// A search for `page` as a worker sends it: its fingerprint (each page its own) and shape.
fn search_page(agent: &str, page: u64) -> ReserveRequest {
    let args = serde_json::json!({"query": "latest news", "page": page});
    let request = ReserveRequest::new(TENANT, agent, "search").cost_micros(1_000);
    request
        .fingerprint(fingerprint("search", &args).expect("fingerprint"))
        .shape(fingerprint_shape("search", &args).expect("shape"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_loop_that_changes_a_page_every_call_is_tripped_by_its_shape() {
    let test = TestCluster::start(3).await;
    let client = &test.client;
    default_tenant(client).await;
    let policy = client.get_tenant(TENANT).await.expect("get tenant").policy;
    assert_eq!(policy.expect("policy").shape_floor, SHAPE_FLOOR_DEFAULT);
    // No fingerprint repeats, and the spend is far under the velocity floor: only the
    // shape, called more than the floor in one window, gives the loop away.
    let cause = velocity_trip_in_one_window(client, "pager", |agent| async move {
        for page in 0..SHAPE_FLOOR_DEFAULT {
            match client.reserve(search_page(&agent, page)).await {
                Ok(reservation) => {
                    reservation.release().await.expect("release");
                }
                Err(error) => return Err(format!("page {page} refused: {error}")),
            }
        }
        trip_cause(client, search_page(&agent, SHAPE_FLOOR_DEFAULT)).await
    })
    .await;
    let shape = fingerprint_shape("search", &serde_json::json!({"query": "", "page": 0}));
    assert!(cause.starts_with("shape velocity"), "{cause}");
    assert!(cause.contains(&shape.expect("shape")), "{cause}");
    assert!(
        cause.contains(&format!("called {} times", SHAPE_FLOOR_DEFAULT + 1)),
        "{cause}"
    );
    // The audit trail names the cause.
    let records = client
        .query_audit(v1::AuditQueryRequest {
            tenant: TENANT.into(),
            ..Default::default()
        })
        .await
        .expect("audit query");
    assert!(
        records
            .iter()
            .any(|r| r.event_json.contains("shape_velocity")),
        "no shape_velocity trip in the audit trail"
    );
    // A well-behaved agent of the same tenant, paging slowly through the same tool, is served.
    for page in 0..3 {
        let reservation = client
            .reserve(search_page("reader", page))
            .await
            .expect("served");
        reservation.release().await.expect("release");
    }
}
