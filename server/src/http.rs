//! The node's HTTP listener: `/metrics` for Prometheus and the web console (`/ui`). One
//! listener per process (the dev cluster's three nodes share one). HTTPS with the node's own
//! certificate when the node has TLS; with authentication on, every route but the console's
//! static page needs a key, `/metrics` the admin key.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::metadata::MetadataMap;

use crate::auth::{Authenticator, Caller};
use crate::tls::{NodeTls, HANDSHAKE_TIMEOUT};

/// The exposition format Prometheus scrapes.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// TLS handshakes under way at once; a connection beyond them is closed at once, so
/// connections that never finish a handshake cannot pile up.
const HANDSHAKES_IN_FLIGHT_MAX: usize = 64;

/// What the HTTP listener serves and with which credentials.
#[derive(Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// The node's TLS: the listener then serves HTTPS with the node's certificate.
    pub tls: Option<NodeTls>,
    /// The node's authentication, exactly as its gRPC services apply it.
    pub authenticator: Authenticator,
    /// The client endpoints (`host:port`) of this process's node(s): the console reaches the
    /// cluster through them, so its reads and writes follow the leader.
    pub endpoints: Vec<String>,
}

/// Binds `config.addr` and serves until the process ends; returns the bound address.
pub async fn spawn(config: HttpConfig) -> anyhow::Result<SocketAddr> {
    crate::metrics::install_recorder()?;
    let addr = config.addr;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP listener (/metrics, /ui) on {addr}"))?;
    let bound = listener.local_addr()?;
    let console = crate::console::Console::new(&config)?;
    let app = router(config.authenticator.clone()).merge(crate::console::router(console));
    match &config.tls {
        Some(tls) => {
            let acceptor = TlsAcceptor::from(tls.https_server()?);
            let listener = TlsListener::start(listener, acceptor, bound);
            tokio::spawn(async move { report(axum::serve(listener, app).await) });
        }
        None => {
            tokio::spawn(async move { report(axum::serve(listener, app).await) });
        }
    }
    Ok(bound)
}

fn report(served: std::io::Result<()>) {
    if let Err(error) = served {
        tracing::error!(%error, "HTTP listener stopped");
    }
}

fn router(authenticator: Authenticator) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(authenticator)
}

/// The caller of an HTTP request, found by the same code as a gRPC call's: its
/// `authorization: Bearer <key>` header against the node's keys (everyone is an admin with
/// authentication off). An error is the 401 to answer, in words.
pub fn authenticate(authenticator: &Authenticator, headers: &HeaderMap) -> Result<Caller, String> {
    let mut only_authorization = HeaderMap::new();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        only_authorization.insert(header::AUTHORIZATION, value.clone());
    }
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(only_authorization),
        tonic::Extensions::default(),
        (),
    );
    let mut interceptor = authenticator.clone();
    let request = tonic::service::Interceptor::call(&mut interceptor, request)
        .map_err(|status| status.message().to_owned())?;
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| "the request was not authenticated".to_owned())
}

/// `/metrics`: the admin key when authentication is on (Prometheus sends it with
/// `authorization: { credentials_file: ... }`); the figures are cluster-wide.
async fn metrics(State(authenticator): State<Authenticator>, headers: HeaderMap) -> Response {
    match authenticate(&authenticator, &headers) {
        Ok(caller) if caller.is_admin() => (
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            crate::metrics::render(),
        )
            .into_response(),
        Ok(_) => (StatusCode::FORBIDDEN, "/metrics needs the admin key\n").into_response(),
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{why}\n"),
        )
            .into_response(),
    }
}

/// A listener of TLS connections for `axum::serve`: a task accepts TCP connections and runs
/// each handshake on its own task (bounded in number and time), so one slow client never
/// holds up the others' handshakes.
struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(listener: TcpListener, acceptor: TlsAcceptor, addr: SocketAddr) -> Self {
        let (sender, handshaken) = mpsc::channel(HANDSHAKES_IN_FLIGHT_MAX);
        tokio::spawn(accept_tls(listener, acceptor, sender));
        Self { handshaken, addr }
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accepting an HTTPS connection");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            continue; // Dropping the stream closes it: too many handshakes under way.
        };
        let (acceptor, sender) = (acceptor.clone(), sender.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            if let Ok(Ok(tls)) = handshake.await {
                let _ = sender.send((tls, peer)).await;
            }
            drop(permit);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task ended (it never does while the process runs).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{new_bootstrap_key, Auth, KeyIndex};

    async fn status_of(authenticator: &Authenticator, key: Option<&str>) -> StatusCode {
        let mut headers = HeaderMap::new();
        if let Some(key) = key {
            let value = format!("Bearer {key}").parse().unwrap();
            headers.insert(header::AUTHORIZATION, value);
        }
        metrics(State(authenticator.clone()), headers)
            .await
            .status()
    }

    #[tokio::test]
    async fn metrics_need_the_admin_key_when_authentication_is_on() {
        let admin_key = new_bootstrap_key();
        let on = Authenticator {
            auth: Auth::with_bootstrap_key(&admin_key).unwrap(),
            keys: Arc::new(KeyIndex::default()),
        };
        assert_eq!(status_of(&on, None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status_of(&on, Some("wrong")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_of(&on, Some(&admin_key)).await, StatusCode::OK);
        let off = Authenticator {
            auth: Auth::default(),
            keys: Arc::new(KeyIndex::default()),
        };
        assert_eq!(status_of(&off, None).await, StatusCode::OK);
    }
}
