//! The isolation matrix: every RPC of the Tollgate, Admin and Cluster services, called with
//! every kind of credential on tenant A's resources and on tenant B's, answers the code
//! its role allows, and a refused call changes nothing. Then: a revoked key is refused by
//! every node, and no secret is ever listed or audited.

mod common;

use std::time::Duration;

use common::{create_key, tenant_with_budget, TestCluster, ADMIN_KEY, LEADER_WAIT};
use tollgate_client::v1;
use tollgate_client::v1::admin_client::AdminClient;
use tollgate_client::v1::cluster_client::ClusterClient;
use tollgate_client::v1::tollgate_client::TollgateClient;
use tollgate_client::Client;
use tonic::transport::Channel;
use tonic::Code;

const A: &str = "acme";
const B: &str = "globex";
/// The agent the limited worker key may act as, and one it may not.
const X: &str = "agent-x";
const Y: &str = "agent-y";
const TTL_MS: u64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cred {
    None,
    Wrong,
    Revoked,
    WorkerA,
    WorkerAx,
    TenantAdminA,
    Admin,
}

/// What an RPC needs of its caller, for the tenant it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// A worker key of the tenant (the limited one acts as X here), or the admin.
    Spend,
    /// Any key of the tenant (the limited one names X), or the admin.
    Read,
    /// A tenant-admin key of the tenant, or the admin.
    TenantAdmin,
    /// The admin; the request is valid, so the admin gets OK.
    Admin,
    /// The admin; the request is malformed on purpose (membership is not changed), so the
    /// admin gets INVALID_ARGUMENT: past authentication and authorisation.
    AdminInvalid,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Reserve,
    Commit,
    Release,
    Record,
    GetUsage,
    ListReservations,
    Batch,
    PutTenant,
    GetTenant,
    ListTenants,
    PutLimit,
    DeleteLimit,
    ListLimits,
    Freeze,
    Unfreeze,
    ResetTrip,
    PutPrice,
    DeletePrice,
    ListPrices,
    QueryAudit,
    ExportAudit,
    VerifyAudit,
    CreateKey,
    ListKeys,
    RotateKey,
    RevokeKey,
    Status,
    AddLearner,
    ChangeMembership,
}

/// The matrix's rows: each RPC and what it needs.
const RPCS: [(Rpc, Needs); 29] = [
    (Rpc::Reserve, Needs::Spend),
    (Rpc::Commit, Needs::Spend),
    (Rpc::Release, Needs::Spend),
    (Rpc::Record, Needs::Spend),
    (Rpc::Batch, Needs::Spend),
    (Rpc::GetUsage, Needs::Read),
    (Rpc::ListReservations, Needs::Read),
    (Rpc::ListLimits, Needs::Read),
    (Rpc::ListPrices, Needs::Read),
    (Rpc::GetTenant, Needs::TenantAdmin),
    (Rpc::PutLimit, Needs::TenantAdmin),
    (Rpc::DeleteLimit, Needs::TenantAdmin),
    (Rpc::Freeze, Needs::TenantAdmin),
    (Rpc::Unfreeze, Needs::TenantAdmin),
    (Rpc::ResetTrip, Needs::TenantAdmin),
    (Rpc::PutPrice, Needs::TenantAdmin),
    (Rpc::DeletePrice, Needs::TenantAdmin),
    (Rpc::QueryAudit, Needs::TenantAdmin),
    (Rpc::ExportAudit, Needs::TenantAdmin),
    (Rpc::CreateKey, Needs::TenantAdmin),
    (Rpc::ListKeys, Needs::TenantAdmin),
    (Rpc::RotateKey, Needs::TenantAdmin),
    (Rpc::RevokeKey, Needs::TenantAdmin),
    (Rpc::PutTenant, Needs::Admin),
    (Rpc::ListTenants, Needs::Admin),
    (Rpc::VerifyAudit, Needs::Admin),
    (Rpc::Status, Needs::Admin),
    (Rpc::AddLearner, Needs::AdminInvalid),
    (Rpc::ChangeMembership, Needs::AdminInvalid),
];

/// The code a credential gets for an RPC that needs `needs`, on `tenant`'s resources.
fn expected(cred: Cred, needs: Needs, tenant: &str) -> Code {
    let own = tenant == A;
    match (cred, needs) {
        (Cred::None | Cred::Wrong | Cred::Revoked, _) => Code::Unauthenticated,
        (Cred::Admin, Needs::AdminInvalid) => Code::InvalidArgument,
        (Cred::Admin, _) => Code::Ok,
        (Cred::WorkerA | Cred::WorkerAx, Needs::Spend | Needs::Read) if own => Code::Ok,
        (Cred::TenantAdminA, Needs::Read | Needs::TenantAdmin) if own => Code::Ok,
        _ => Code::PermissionDenied,
    }
}

struct Fixture {
    admin: Client,
    channel: Channel,
    keys: Vec<(Cred, Option<String>)>,
    /// Every secret handed out, to look for where none may appear.
    secrets: Vec<String>,
}

fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().expect("an ASCII header");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn amounts(tokens: u64) -> Option<v1::Amounts> {
    Some(v1::Amounts {
        tokens,
        cost_micros: 0,
        calls: Some(1),
    })
}

fn request_id() -> String {
    format!("iso-{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn reserve_request(tenant: &str, agent: &str) -> v1::ReserveRequest {
    v1::ReserveRequest {
        request_id: request_id(),
        tenant: tenant.into(),
        agent: agent.into(),
        tool: "llm".into(),
        estimate: amounts(1),
        ttl_ms: TTL_MS,
        fingerprint: String::new(),
        usage: None,
        session: String::new(),
        shape: String::new(),
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

impl Fixture {
    async fn setup(test: &TestCluster) -> Self {
        let admin = test.client.clone();
        for tenant in [A, B] {
            tenant_with_budget(&admin, tenant, 1_000_000).await;
            // The agents exist (ResetTrip names X; Freeze and Unfreeze name Z).
            admin.freeze(tenant, Some("agent-z")).await.expect("freeze");
            let granted = admin
                .reserve(tollgate_client::ReserveRequest::new(tenant, X, "llm").tokens(1))
                .await
                .expect("reserve");
            granted.release().await.expect("release");
        }
        let mut secrets = Vec::new();
        let key = |role, agents: &'static [&'static str]| {
            let admin = admin.clone();
            async move { create_key(&admin, Some(A), role, agents).await }
        };
        let (revoked_id, revoked) = key(v1::KeyRole::Worker, &[]).await;
        admin.revoke_key(&revoked_id).await.expect("revoke");
        let (_, worker) = key(v1::KeyRole::Worker, &[]).await;
        let (_, worker_x) = key(v1::KeyRole::Worker, &[X]).await;
        let (_, tenant_admin) = key(v1::KeyRole::TenantAdmin, &[]).await;
        secrets.extend([
            revoked.clone(),
            worker.clone(),
            worker_x.clone(),
            tenant_admin.clone(),
        ]);
        let wrong = format!("tg_{}_{}", "0".repeat(16), "a".repeat(64));
        let leader = test.cluster.leader(LEADER_WAIT).await.expect("leader");
        let addr = test.cluster.addr(leader).expect("address");
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Fixture {
            admin,
            channel,
            keys: vec![
                (Cred::None, None),
                (Cred::Wrong, Some(wrong)),
                (Cred::Revoked, Some(revoked)),
                (Cred::WorkerA, Some(worker)),
                (Cred::WorkerAx, Some(worker_x)),
                (Cred::TenantAdminA, Some(tenant_admin)),
                (Cred::Admin, Some(ADMIN_KEY.to_owned())),
            ],
            secrets,
        }
    }

    fn tollgate(&self) -> TollgateClient<Channel> {
        TollgateClient::new(self.channel.clone())
    }

    fn admin_rpc(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// A reservation of `tenant`'s agent `agent`, made by the admin.
    async fn reservation(&self, tenant: &str, agent: &str) -> u64 {
        let response = self
            .tollgate()
            .reserve(with_key(reserve_request(tenant, agent), Some(ADMIN_KEY)))
            .await
            .expect("the admin reserves");
        match response.into_inner().decision {
            Some(v1::reserve_response::Decision::Granted(granted)) => granted.reservation_id,
            other => panic!("not granted: {other:?}"),
        }
    }

    /// A fresh worker key of `tenant`, made by the admin: what rotate and revoke act on.
    async fn key_of(&self, tenant: &str) -> String {
        create_key(&self.admin, Some(tenant), v1::KeyRole::Worker, &[])
            .await
            .0
    }

    /// What the matrix compares before and after a refused call.
    async fn state(&self) -> String {
        let usage_a = self.admin.usage(A, None, None).await.expect("usage");
        let usage_b = self.admin.usage(B, None, None).await.expect("usage");
        let keys = self.admin.list_keys(None).await.expect("keys");
        let limits_a = self.admin.get_tenant(A).await.expect("tenant");
        let limits_b = self.admin.get_tenant(B).await.expect("tenant");
        let in_flight = (
            self.admin
                .reservations(A, None, 0)
                .await
                .expect("reservations"),
            self.admin
                .reservations(B, None, 0)
                .await
                .expect("reservations"),
        );
        let head = self.admin.verify_audit().await.expect("verify");
        format!("{usage_a:?}{usage_b:?}{keys:?}{limits_a:?}{limits_b:?}{in_flight:?}{head:?}")
    }
}

impl Fixture {
    /// Calls `rpc` on `tenant`'s resources with `key` and returns the code it answered. A
    /// batch answers with its one operation's code; an export with its stream's.
    async fn call(&self, rpc: Rpc, tenant: &str, key: Option<&str>) -> Code {
        let mut tollgate = self.tollgate();
        let mut admin = self.admin_rpc();
        macro_rules! req {
            ($message:expr) => {
                with_key($message, key)
            };
        }
        match rpc {
            Rpc::Reserve => code(tollgate.reserve(req!(reserve_request(tenant, X))).await),
            Rpc::Commit | Rpc::Release => {
                let id = self.reservation(tenant, X).await;
                self.end(rpc, tenant, id, key).await
            }
            Rpc::Record => {
                let record = v1::RecordRequest {
                    request_id: request_id(),
                    tenant: tenant.into(),
                    agent: X.into(),
                    tool: "llm".into(),
                    actual: amounts(1),
                    usage: None,
                    offline: false,
                    session: String::new(),
                };
                code(tollgate.record(req!(record)).await)
            }
            Rpc::Batch => {
                let op = v1::BatchOp {
                    op: Some(v1::batch_op::Op::Reserve(reserve_request(tenant, X))),
                };
                let batch = v1::BatchRequest { ops: vec![op] };
                match tollgate.batch(req!(batch)).await {
                    Err(status) => status.code(),
                    Ok(response) => match response.into_inner().results[0].result {
                        Some(v1::batch_result::Result::Error(ref e)) => Code::from(e.code),
                        _ => Code::Ok,
                    },
                }
            }
            Rpc::GetUsage => {
                let usage = v1::UsageRequest {
                    tenant: tenant.into(),
                    agent: X.into(),
                    tool: String::new(),
                    session: String::new(),
                };
                code(tollgate.get_usage(req!(usage)).await)
            }
            Rpc::ListReservations => {
                let list = v1::ListReservationsRequest {
                    tenant: tenant.into(),
                    agent: X.into(),
                    limit: 0,
                };
                code(tollgate.list_reservations(req!(list)).await)
            }
            _ => self.call_admin(rpc, tenant, key, &mut admin).await,
        }
    }

    async fn end(&self, rpc: Rpc, tenant: &str, id: u64, key: Option<&str>) -> Code {
        let mut tollgate = self.tollgate();
        if let Rpc::Commit = rpc {
            let commit = v1::CommitRequest {
                request_id: request_id(),
                tenant: tenant.into(),
                reservation_id: id,
                actual: amounts(1),
                abandoned: false,
                usage: None,
            };
            return code(tollgate.commit(with_key(commit, key)).await);
        }
        let release = v1::ReleaseRequest {
            request_id: request_id(),
            tenant: tenant.into(),
            reservation_id: id,
        };
        code(tollgate.release(with_key(release, key)).await)
    }

    async fn call_admin(
        &self,
        rpc: Rpc,
        tenant: &str,
        key: Option<&str>,
        admin: &mut AdminClient<Channel>,
    ) -> Code {
        macro_rules! req {
            ($message:expr) => {
                with_key($message, key)
            };
        }
        let t = tenant.to_owned();
        let freeze = || v1::FreezeRequest {
            request_id: request_id(),
            tenant: t.clone(),
            agent: "agent-z".into(),
        };
        match rpc {
            Rpc::PutTenant => code(
                admin
                    .put_tenant(req!(v1::PutTenantRequest {
                        request_id: request_id(),
                        tenant: t.clone(),
                        policy: None,
                    }))
                    .await,
            ),
            Rpc::GetTenant => code(
                admin
                    .get_tenant(req!(v1::GetTenantRequest { tenant: t }))
                    .await,
            ),
            Rpc::ListTenants => code(admin.list_tenants(req!(v1::ListTenantsRequest {})).await),
            Rpc::PutLimit => code(
                admin
                    .put_limit(req!(v1::PutLimitRequest {
                        request_id: request_id(),
                        tenant: t,
                        limit: Some(common::tokens_budget("extra", 5_000_000)),
                    }))
                    .await,
            ),
            Rpc::DeleteLimit => {
                let limit = common::tokens_budget("doomed", 5_000_000);
                self.admin
                    .put_limit(tenant, limit)
                    .await
                    .expect("put limit");
                let delete = v1::DeleteLimitRequest {
                    request_id: request_id(),
                    tenant: t,
                    limit_id: "doomed".into(),
                };
                let answer = code(admin.delete_limit(req!(delete)).await);
                // Leave no limit behind a refusal: the state check compares from here.
                let _ = self.admin.delete_limit(tenant, "doomed").await;
                answer
            }
            Rpc::ListLimits => code(
                admin
                    .list_limits(req!(v1::ListLimitsRequest { tenant: t }))
                    .await,
            ),
            Rpc::Freeze => code(admin.freeze(req!(freeze())).await),
            Rpc::Unfreeze => code(admin.unfreeze(req!(freeze())).await),
            Rpc::ResetTrip => code(
                admin
                    .reset_trip(req!(v1::ResetTripRequest {
                        request_id: request_id(),
                        tenant: t,
                        agent: X.into(),
                    }))
                    .await,
            ),
            _ => self.call_prices(rpc, tenant, key, admin).await,
        }
    }

    async fn call_prices(
        &self,
        rpc: Rpc,
        tenant: &str,
        key: Option<&str>,
        admin: &mut AdminClient<Channel>,
    ) -> Code {
        let price = |model: &str| v1::Price {
            model: model.into(),
            input_micros: 1,
            output_micros: 2,
            ..Default::default()
        };
        match rpc {
            Rpc::PutPrice => {
                let put = v1::PutPriceRequest {
                    request_id: request_id(),
                    tenant: tenant.into(),
                    price: Some(price("extra")),
                };
                code(admin.put_price(with_key(put, key)).await)
            }
            Rpc::DeletePrice => {
                self.admin
                    .put_price(tenant, price("doomed"))
                    .await
                    .expect("put price");
                let delete = v1::DeletePriceRequest {
                    request_id: request_id(),
                    tenant: tenant.into(),
                    model: "doomed".into(),
                };
                let answer = code(admin.delete_price(with_key(delete, key)).await);
                // Leave no price behind a refusal: the state check compares from here.
                let _ = self.admin.delete_price(tenant, "doomed").await;
                answer
            }
            Rpc::ListPrices => {
                let list = v1::ListPricesRequest {
                    tenant: tenant.into(),
                };
                code(admin.list_prices(with_key(list, key)).await)
            }
            _ => self.call_audit_or_keys(rpc, tenant, key, admin).await,
        }
    }

    async fn call_audit_or_keys(
        &self,
        rpc: Rpc,
        tenant: &str,
        key: Option<&str>,
        admin: &mut AdminClient<Channel>,
    ) -> Code {
        macro_rules! req {
            ($message:expr) => {
                with_key($message, key)
            };
        }
        let query = v1::AuditQueryRequest {
            tenant: tenant.into(),
            limit: 10,
            ..Default::default()
        };
        match rpc {
            Rpc::QueryAudit => code(admin.query_audit(req!(query)).await),
            Rpc::ExportAudit => match admin.export_audit(req!(query)).await {
                Err(status) => status.code(),
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => continue,
                            Ok(None) => break Code::Ok,
                            Err(status) => break status.code(),
                        }
                    }
                }
            },
            Rpc::VerifyAudit => code(admin.verify_audit(req!(v1::AuditVerifyRequest {})).await),
            Rpc::CreateKey => {
                let create = v1::CreateKeyRequest {
                    request_id: request_id(),
                    tenant: tenant.into(),
                    role: v1::KeyRole::Worker.into(),
                    agents: Vec::new(),
                    name: "matrix".into(),
                };
                code(admin.create_key(req!(create)).await)
            }
            Rpc::ListKeys => code(
                admin
                    .list_keys(req!(v1::ListKeysRequest {
                        tenant: tenant.into(),
                    }))
                    .await,
            ),
            Rpc::RotateKey | Rpc::RevokeKey => {
                let key_id = self.key_of(tenant).await;
                self.change_key(rpc, key_id, key).await
            }
            _ => self.call_cluster(rpc, key).await,
        }
    }

    async fn change_key(&self, rpc: Rpc, key_id: String, key: Option<&str>) -> Code {
        let mut admin = self.admin_rpc();
        let request_id = request_id();
        if let Rpc::RotateKey = rpc {
            let rotate = v1::RotateKeyRequest { request_id, key_id };
            return code(admin.rotate_key(with_key(rotate, key)).await);
        }
        let revoke = v1::RevokeKeyRequest { request_id, key_id };
        code(admin.revoke_key(with_key(revoke, key)).await)
    }

    async fn call_cluster(&self, rpc: Rpc, key: Option<&str>) -> Code {
        let mut cluster = ClusterClient::new(self.channel.clone());
        macro_rules! req {
            ($message:expr) => {
                with_key($message, key)
            };
        }
        match rpc {
            Rpc::Status => code(cluster.status(req!(v1::StatusRequest {})).await),
            Rpc::AddLearner => code(
                cluster
                    .add_learner(req!(v1::AddLearnerRequest {
                        node_id: 9,
                        addr: "no port".into(),
                        peer_addr: "no port".into(),
                    }))
                    .await,
            ),
            Rpc::ChangeMembership => code(
                cluster
                    .change_membership(req!(v1::ChangeMembershipRequest { voters: vec![] }))
                    .await,
            ),
            other => panic!("{other:?} is not a cluster RPC"),
        }
    }
}

/// Fresh keys and reservations made for a cell are set up before the "before" state is
/// taken, so a refused call is compared with the state just before it: these RPCs make
/// their own fixtures and compare inside.
fn makes_fixtures(rpc: Rpc) -> bool {
    matches!(
        rpc,
        Rpc::Commit
            | Rpc::Release
            | Rpc::DeleteLimit
            | Rpc::DeletePrice
            | Rpc::RotateKey
            | Rpc::RevokeKey
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_credential_as_its_role_allows_and_refusals_change_nothing() {
    let test = TestCluster::with_auth(1).await;
    let fixture = Fixture::setup(&test).await;
    let mut failures = Vec::new();
    for (rpc, needs) in RPCS {
        for (cred, key) in &fixture.keys {
            for tenant in [A, B] {
                let want = expected(*cred, needs, tenant);
                let before = if want == Code::Ok || makes_fixtures(rpc) {
                    None
                } else {
                    Some(fixture.state().await)
                };
                let got = fixture.call(rpc, tenant, key.as_deref()).await;
                if got != want {
                    failures.push(format!(
                        "{rpc:?} by {cred:?} on {tenant}: {got:?}, want {want:?}"
                    ));
                }
                if let Some(before) = before {
                    if fixture.state().await != before {
                        failures.push(format!("{rpc:?} by {cred:?} on {tenant} changed the state"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    test.cluster.shutdown().await;
}

/// The key limited to agent X: acting as Y, ending Y's reservation or reading without
/// naming X is refused and changes nothing; the same for X goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_limited_key_acts_only_as_its_agents() {
    let test = TestCluster::with_auth(1).await;
    let fixture = Fixture::setup(&test).await;
    let key = fixture.keys[4].1.clone();
    assert_eq!(fixture.keys[4].0, Cred::WorkerAx);
    let key = key.as_deref();
    let mut tollgate = fixture.tollgate();
    let ys = fixture.reservation(A, Y).await;
    let before = fixture.state().await;
    let as_y = tollgate.reserve(with_key(reserve_request(A, Y), key)).await;
    assert_eq!(code(as_y), Code::PermissionDenied);
    for rpc in [Rpc::Commit, Rpc::Release] {
        assert_eq!(
            fixture.end(rpc, A, ys, key).await,
            Code::PermissionDenied,
            "{rpc:?}"
        );
    }
    let usage = v1::UsageRequest {
        tenant: A.into(),
        ..Default::default()
    };
    let unnamed = tollgate.get_usage(with_key(usage, key)).await;
    assert_eq!(code(unnamed), Code::PermissionDenied);
    assert_eq!(fixture.state().await, before);
    let xs = fixture.reservation(A, X).await;
    assert_eq!(fixture.end(Rpc::Commit, A, xs, key).await, Code::Ok);
    test.cluster.shutdown().await;
}

/// Once RevokeKey has returned, the leader refuses the key at once, and no node ever
/// answers it; every node refuses it as unknown once it has applied the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_node() {
    let test = TestCluster::with_auth(3).await;
    tenant_with_budget(&test.client, A, 1_000).await;
    let (key_id, key) = create_key(&test.client, Some(A), v1::KeyRole::Worker, &[]).await;
    let worker = common::client_for(&test.cluster, Some(&key));
    worker.usage(A, None, None).await.expect("a live key reads");
    test.client.revoke_key(&key_id).await.expect("revoke");

    let leader = test.cluster.leader(LEADER_WAIT).await.expect("leader");
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    for id in test.cluster.running_ids() {
        let addr = test.cluster.addr(id).expect("address");
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut tollgate = TollgateClient::new(channel);
        loop {
            let reserve = tollgate
                .reserve(with_key(reserve_request(A, X), Some(&key)))
                .await;
            let usage = v1::UsageRequest {
                tenant: A.into(),
                ..Default::default()
            };
            let read = tollgate.get_usage(with_key(usage, Some(&key))).await;
            let codes = (code(reserve), code(read));
            assert!(
                codes.0 != Code::Ok && codes.1 != Code::Ok,
                "node {id}: {codes:?}"
            );
            if codes == (Code::Unauthenticated, Code::Unauthenticated) {
                break;
            }
            assert_ne!(id, leader, "the leader refuses at once: {codes:?}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id}: {codes:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (used, held) = common::used_tokens(&test.client, A).await;
    assert_eq!(
        (used, held),
        (0, 0),
        "nothing was spent with the revoked key"
    );
    test.cluster.shutdown().await;
}

/// Secrets are shown once: never in ListKeys or the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_listed_audited_or_printed() {
    let test = TestCluster::with_auth(1).await;
    let fixture = Fixture::setup(&test).await;
    let rotated = fixture
        .admin
        .rotate_key(&fixture.key_of(A).await)
        .await
        .expect("rotate");
    let mut secrets = fixture.secrets.clone();
    secrets.push(rotated.api_key.clone());
    let listed = format!("{:?}", fixture.admin.list_keys(None).await.expect("keys"));
    let mut export = fixture
        .admin
        .export_audit(v1::AuditQueryRequest::default())
        .await
        .expect("export");
    let mut audit = String::new();
    while let Some(record) = export.next().await.expect("record") {
        audit.push_str(&record.json);
    }
    assert!(
        audit.contains("key_create")
            && audit.contains("key_revoke")
            && audit.contains("key_rotate")
    );
    for secret in &secrets {
        let tail = secret.rsplit('_').next().expect("a secret part");
        assert!(!listed.contains(tail), "ListKeys shows a secret");
        assert!(!audit.contains(tail), "the audit shows a secret");
    }
    test.cluster.shutdown().await;
}

/// Credentials are checked on the headers, before the body is read: a body too large to
/// decode is refused UNAUTHENTICATED without a key, and only with a valid key does the
/// node get as far as refusing its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_checked_before_the_body_is_decoded() {
    let test = TestCluster::with_auth(1).await;
    let fixture = Fixture::setup(&test).await;
    let oversized = || v1::PutTenantRequest {
        request_id: request_id(),
        tenant: "t".repeat(200 * 1024),
        policy: None,
    };
    let mut admin = fixture.admin_rpc();
    for (cred, key) in &fixture.keys[..3] {
        let answer = admin
            .put_tenant(with_key(oversized(), key.as_deref()))
            .await;
        assert_eq!(code(answer), Code::Unauthenticated, "{cred:?}");
    }
    let answer = admin
        .put_tenant(with_key(oversized(), Some(ADMIN_KEY)))
        .await;
    let decoded = code(answer);
    assert!(
        matches!(decoded, Code::OutOfRange | Code::ResourceExhausted),
        "{decoded:?}"
    );
    test.cluster.shutdown().await;
}
