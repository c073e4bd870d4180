//! The web console: a page for people (search, live tail, entry details, integrity and
//! charts) and the JSON API it uses, served on a listener of its own (`--web-listen`).
//!
//! - Who may look: every request, page and API alike, needs the `read` permission under the
//!   same policy and refusal budget as Query ([`auth`]). Nothing in the console writes (every
//!   route is `GET`; other methods get 405), so there is no state for a cross-site request to
//!   change: no CSRF surface. Cross-origin pages cannot read the answers (no CORS headers,
//!   `Cross-Origin-Resource-Policy: same-origin`).
//! - What reaches the page: entries as proto3 JSON, which the page's scripts turn into DOM text
//!   (`textContent`), never into HTML; a strict Content-Security-Policy (scripts and styles
//!   from the console itself only, nothing inline, Trusted Types required for HTML sinks) makes
//!   an accidental HTML sink fail loudly instead of running what an entry carries.
//! - Assets are hand-written HTML, CSS and ES modules under `server/web/`, embedded in the
//!   binary: no build step, nothing loaded from the network.

mod api;
mod assets;
pub mod auth;
mod download;
mod listener;
mod params;
mod tail;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::config::{ConnectionLimits, Limits, WebConfig};
use crate::error::Error;
use crate::guard::RefusalRecorder;
use crate::hub::Hub;
use crate::store::Store;

pub use auth::Tokens;

/// The console's bound listener, ready to serve.
pub struct WebListener {
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    tokens: Arc<Tokens>,
}

impl WebListener {
    /// Binds the console's listener if the configuration asks for one, loading its TLS
    /// certificate and token file; fails with what is wrong with either.
    pub fn bind(config: &WebConfig) -> Result<Option<Self>, Error> {
        let Some(address) = config.web_listen else {
            return Ok(None);
        };
        let tls = match (&config.web_tls_cert, &config.web_tls_key) {
            (Some(cert), Some(key)) => Some(listener::acceptor(
                cert,
                key,
                config.web_tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        let tokens = match &config.web_token_file {
            Some(path) => Tokens::load(path)?,
            None => Tokens::default(),
        };
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Error::Config(format!("cannot listen on {address} (--web-listen): {e}"))
            })?;
        Ok(Some(Self {
            listener,
            tls,
            tokens: Arc::new(tokens),
        }))
    }

    /// What it listens on, as printed at start: `web http://127.0.0.1:8080`.
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let address = self
            .listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        format!("web {scheme}://{address}")
    }

    /// Serves the console over `store` until `stop` is cancelled; then finishes the requests in
    /// progress within the shutdown grace period.
    pub async fn serve<S: Store + Clone>(
        self,
        console: Console<S>,
        connections: ConnectionLimits,
        stop: CancellationToken,
    ) {
        let Self {
            listener,
            tls,
            tokens,
        } = self;
        let console = Arc::new(Console { tokens, ..console });
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot serve the web console");
                return;
            }
        };
        listener::serve(listener, tls, routes(console), connections, stop).await;
    }
}

/// What the console's handlers share.
pub struct Console<S> {
    store: S,
    hub: Hub<S>,
    limits: Arc<Limits>,
    access: Arc<Access>,
    refusals: RefusalRecorder<S>,
    tokens: Arc<Tokens>,
}

impl<S: Store + Clone> Console<S> {
    /// The console over `store`, tailing through `hub`, guarded by `access`.
    pub fn new(store: S, hub: Hub<S>, limits: Arc<Limits>, access: Arc<Access>) -> Self {
        Self {
            refusals: RefusalRecorder::new(store.clone(), limits.clone()),
            store,
            hub,
            limits,
            access,
            tokens: Arc::default(),
        }
    }
}

/// Every route of the console: the page, its assets and the JSON API, behind the guard.
pub fn routes<S: Store + Clone>(console: Arc<Console<S>>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{name}", get(assets::asset))
        .route("/favicon.ico", get(assets::no_icon))
        .route("/api/entries", get(api::entries::<S>))
        .route("/api/entries/{sequence}", get(api::entry::<S>))
        .route("/api/tail", get(tail::tail::<S>))
        .route("/api/checkpoint", get(api::checkpoint::<S>))
        .route("/api/proof/{sequence}", get(api::proof::<S>))
        .route("/api/stats", get(api::stats::<S>))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::guard::<S>,
        ))
        .layer(axum::middleware::map_response(assets::security_headers))
        .with_state(console)
}
