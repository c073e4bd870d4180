//! The page and its assets, embedded in the binary, and the security headers of every
//! response.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::api::error_response;

/// Scripts, styles, connections and images from the console itself only; nothing inline, no
/// plugins, no framing, and Trusted Types required, so that assigning a string to an HTML sink
/// (`innerHTML`) throws instead of parsing what an entry carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
     trusted-types 'none'";

/// Every embedded asset: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../web/console.css"),
    ),
    ("app.js", JS, include_str!("../../web/app.js")),
    ("api.js", JS, include_str!("../../web/api.js")),
    ("dom.js", JS, include_str!("../../web/dom.js")),
    ("search.js", JS, include_str!("../../web/search.js")),
    ("tail.js", JS, include_str!("../../web/tail.js")),
    ("details.js", JS, include_str!("../../web/details.js")),
    ("integrity.js", JS, include_str!("../../web/integrity.js")),
    ("ledger.js", JS, include_str!("../../web/ledger.js")),
    ("charts.js", JS, include_str!("../../web/charts.js")),
];

const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &str = include_str!("../../web/index.html");

/// `GET /`: the page.
pub async fn index() -> Response {
    with_type("text/html; charset=utf-8", INDEX)
}

/// `GET /favicon.ico`: no icon, and no error for it in the browser's console.
pub async fn no_icon() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /assets/{name}`: a stylesheet or script module.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(asset, ..)| *asset == name) {
        Some((_, content_type, content)) => with_type(content_type, content),
        None => error_response(StatusCode::NOT_FOUND, "no such asset", &[]),
    }
}

fn with_type(content_type: &'static str, content: &'static str) -> Response {
    let mut response = content.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Adds the headers every console response carries: the CSP, no MIME sniffing, no referrer,
/// no framing, no cross-origin use, and no caching of audit data.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-resource-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
