//! The node's HTTP listener: `/metrics` for Prometheus. One listener per process (the dev
//! cluster's three nodes share one).

use std::net::SocketAddr;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The exposition format Prometheus scrapes.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` (so a taken port fails the start, not a background task) and serves until
/// the process ends.
pub async fn spawn(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    crate::metrics::install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP listener (/metrics) on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = router();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP listener stopped");
        }
    });
    Ok(bound)
}

fn router() -> Router {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        crate::metrics::render(),
    )
}
