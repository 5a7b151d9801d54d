//! The web console at `/ui`: a static page (HTML, CSS and a small script, built into the
//! binary) and the JSON calls it polls under `/ui/api/`. The JSON handlers authenticate the
//! caller like the gRPC interceptor does, then ask the cluster through a `tollgate_client`
//! carrying the caller's own key: reads and the kill switch follow the leader, and the
//! cluster's services decide what the key may see. Nothing here reads the ledger directly.

mod api;
#[cfg(test)]
mod tests;
mod view;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tollgate_client::{Client, ClientConfig};

use crate::auth::Authenticator;
use crate::http::HttpConfig;

/// Largest JSON body the console accepts (a freeze names a tenant and an agent).
pub const BODY_BYTES_MAX: usize = 4 * 1024;
/// Longest request target (path and query) the console's JSON calls accept.
pub const URI_BYTES_MAX: usize = 2 * 1024;

/// The page runs only its own script and style, talks only to its own node, and is never
/// framed (so no other site can overlay the kill switch).
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// What the console's handlers share.
#[derive(Clone)]
pub struct Console {
    authenticator: Authenticator,
    /// Dials this process's node(s); each request uses it with the caller's key
    /// (`Client::with_token` shares its connections and remembered leader).
    client: Client,
    /// The same, for a freeze: its answer may take up to `FREEZE_LEASES_WAIT` (it waits
    /// for the leases on its scope to end), so its attempts are not cut short before.
    patient: Client,
}

impl Console {
    pub fn new(config: &HttpConfig) -> anyhow::Result<Self> {
        let mut client_config = ClientConfig::new(config.endpoints.clone());
        client_config.tls = config.tls.as_ref().map(crate::tls::NodeTls::client_config);
        let client = Client::new(client_config.clone())
            .map_err(|e| anyhow::anyhow!("the console's cluster client: {e}"))?;
        let wait = crate::grpc::FREEZE_LEASES_WAIT;
        client_config.attempt_timeout = client_config.attempt_timeout.saturating_add(wait);
        client_config.deadline = client_config.deadline.saturating_add(wait);
        let patient = Client::new(client_config)
            .map_err(|e| anyhow::anyhow!("the console's cluster client: {e}"))?;
        Ok(Self {
            authenticator: config.authenticator.clone(),
            client,
            patient,
        })
    }
}

/// `/ui`, its assets and its JSON calls.
pub fn router(console: Console) -> Router {
    let api = Router::new()
        .route("/whoami", get(api::whoami))
        .route("/cluster", get(api::cluster))
        .route("/tenants", get(api::tenants))
        .route("/tenant", get(api::tenant))
        .route("/audit", get(api::audit))
        .route("/freeze", post(api::freeze))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(console);
    Router::new()
        .route("/ui", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/ui/",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/ui/console.js",
            get(|| asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        )
        .route(
            "/ui/console.css",
            get(|| asset("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .nest("/ui/api", api)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
        .into_response()
}

/// A JSON call's failure: its status and a message for the page, as `{"error": "..."}`.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }
}

/// The one place a cluster's answer becomes an HTTP status.
impl From<tollgate_client::Error> for ApiError {
    fn from(error: tollgate_client::Error) -> Self {
        use tollgate_client::Error as E;
        let status = match &error {
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::PermissionDenied(_) => StatusCode::FORBIDDEN,
            E::FailedPrecondition(_) => StatusCode::CONFLICT,
            E::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self {
            status,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
