//! The console's handlers without a cluster: who a key is (401 before anything else), what a
//! tenant key is shown, and the input checks. What the cluster answers is the browser test's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use tollgate_ledger::{Command, KeySpec, Ledger, Outcome, RequestId, Role, TenantId};

use super::api;
use super::view::{event_kind, set_lag, short_event, NodeView, Whoami};
use super::{ApiError, Console};
use crate::auth::{new_bootstrap_key, new_key, Auth, Authenticator, KeyIndex};
use crate::http::HttpConfig;

const T0: u64 = 1_700_000_000_000;

/// A console whose node has authentication on, the tenant `acme` and one tenant-admin key
/// of it. Its client points at a port nothing listens on: these tests never reach it.
struct Fixture {
    console: Console,
    admin_key: String,
    tenant_key: String,
}

fn fixture() -> Fixture {
    let admin_key = new_bootstrap_key();
    let mut ledger = Ledger::new();
    let acme = TenantId::new("acme").unwrap();
    let put = Command::PutTenant {
        request_id: RequestId::new("put-acme").unwrap(),
        tenant: acme.clone(),
        policy: Default::default(),
    };
    assert_eq!(ledger.apply(T0, &put), Outcome::Done);
    let key = new_key(None).unwrap();
    let create = Command::CreateKey {
        request_id: RequestId::new("key-acme").unwrap(),
        tenant: Some(acme),
        key: KeySpec {
            id: key.id.clone(),
            digest: key.digest,
            role: Role::TenantAdmin,
            agents: Vec::new(),
            name: "console".into(),
        },
    };
    assert!(!matches!(ledger.apply(T0, &create), Outcome::Rejected(_)));
    let keys = Arc::new(KeyIndex::default());
    keys.rebuild(&ledger);
    let config = HttpConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        authenticator: Authenticator {
            auth: Auth::with_bootstrap_key(&admin_key).unwrap(),
            keys,
        },
        endpoints: vec!["127.0.0.1:1".into()],
    };
    Fixture {
        console: Console::new(&config).unwrap(),
        admin_key,
        tenant_key: key.api_key,
    }
}

fn headers(key: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

async fn whoami(console: &Console, key: Option<&str>) -> Result<Whoami, ApiError> {
    let uri = Uri::from_static("/ui/api/whoami");
    api::whoami(State(console.clone()), headers(key), uri)
        .await
        .map(|json| json.0)
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_a_401_that_says_why() {
    let f = fixture();
    let wrong = format!("tg_{}_{}", "0123456789abcdef", "0".repeat(64));
    let cases = [
        (None, "missing `authorization: Bearer <api key>`"),
        (
            Some(wrong.as_str()),
            "unknown, revoked or malformed API key",
        ),
        (Some("not-a-key"), "unknown, revoked or malformed API key"),
    ];
    for (key, why) in cases {
        let refused = whoami(&f.console, key).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert!(
            refused.message.contains(why),
            "{key:?}: {}",
            refused.message
        );
    }
}

#[tokio::test]
async fn the_admin_key_is_an_admin_and_a_tenant_key_is_its_tenants() {
    let f = fixture();
    let admin = whoami(&f.console, Some(&f.admin_key)).await.unwrap();
    assert_eq!(
        admin,
        Whoami {
            auth: true,
            admin: true,
            tenant: None
        }
    );
    let tenant = whoami(&f.console, Some(&f.tenant_key)).await.unwrap();
    assert_eq!(
        tenant,
        Whoami {
            auth: true,
            admin: false,
            tenant: Some("acme".into())
        }
    );
}

#[tokio::test]
async fn a_tenant_key_is_offered_only_its_own_tenant() {
    let f = fixture();
    let uri = Uri::from_static("/ui/api/tenants");
    let tenants = api::tenants(State(f.console.clone()), headers(Some(&f.tenant_key)), uri)
        .await
        .unwrap();
    assert_eq!(tenants.0, ["acme"]);
}

#[tokio::test]
async fn an_overlong_request_target_is_a_400() {
    let f = fixture();
    let target = format!("/ui/api/whoami?pad={}", "x".repeat(super::URI_BYTES_MAX));
    let uri: Uri = target.parse().unwrap();
    let refused = api::whoami(State(f.console), headers(Some(&f.admin_key)), uri)
        .await
        .unwrap_err();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.message.contains("URI_BYTES_MAX"),
        "{}",
        refused.message
    );
}

#[test]
fn names_from_the_page_are_checked() {
    let long = "a".repeat(api::ID_BYTES_MAX + 1);
    let cases: [(&str, Option<&str>); 4] = [
        ("acme", None),
        ("", Some("1 to 128")),
        (long.as_str(), Some("ID_BYTES_MAX")),
        ("ac\nme", Some("control character")),
    ];
    for (name, refused) in cases {
        match (api::check_name("tenant", name), refused) {
            (Ok(_), None) => {}
            (Err(e), Some(why)) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST);
                assert!(e.message.contains(why), "{name:?}: {}", e.message);
            }
            (answer, _) => panic!("{name:?}: {answer:?}"),
        }
    }
}

#[test]
fn audit_events_are_told_apart_by_their_variant() {
    let cases = [
        (r#""grant""#, "grant"),
        (r#"{"deny":{"frozen":{"agent":"bot"}}}"#, "deny"),
        (r#"{"Commit":{"overrun":true}}"#, "commit"),
        ("not json", ""),
    ];
    for (event, kind) in cases {
        assert_eq!(event_kind(event), kind, "{event}");
    }
}

#[test]
fn lag_is_counted_from_the_highest_commit_and_skips_the_unreachable() {
    let node = |commit_index, applied_index, error: Option<&str>| NodeView {
        commit_index,
        applied_index,
        error: error.map(Into::into),
        ..NodeView::default()
    };
    let mut nodes = [
        node(10, 10, None),
        node(8, 7, None),
        node(0, 0, Some("down")),
    ];
    set_lag(&mut nodes);
    let lags: Vec<u64> = nodes.iter().map(|n| n.lag).collect();
    assert_eq!(lags, [0, 3, 0]);
}

#[test]
fn audit_events_are_shown_without_the_fields_that_say_nothing() {
    let cases = [
        (
            r#"{"commit":{"abandoned":false,"late":false,"overrun":true,"price":null}}"#,
            "commit(overrun=true)",
        ),
        (
            r#"{"commit":{"abandoned":false,"late":false,"overrun":false,"price":null}}"#,
            "commit",
        ),
        (r#""grant""#, "grant"),
        (
            r#"{"deny":{"frozen":{"agent":"bot"}}}"#,
            "deny(frozen(agent(bot)))",
        ),
        ("not json", "not json"),
    ];
    for (event, shown) in cases {
        assert_eq!(short_event(event), shown, "{event}");
    }
}
