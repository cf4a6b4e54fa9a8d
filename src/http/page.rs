//! `GET /`: the status page, one self-contained HTML document (inline CSS and JS, charts drawn
//! as inline SVG from `/api/status`; nothing is loaded from the network).

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("assets/status.html");
const STYLE: &str = include_str!("assets/status.css");
const SCRIPT: &str = include_str!("assets/status.js");

/// The assembled page and its Content-Security-Policy, built once.
struct Page {
    html: String,
    csp: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = TEMPLATE
        .replacen("/*STYLE*/", STYLE, 1)
        .replacen("/*SCRIPT*/", SCRIPT, 1);
    // Only this exact script and style may run; the page may fetch from its own origin only.
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        base64_sha256(SCRIPT),
        base64_sha256(STYLE),
    );
    let csp = HeaderValue::from_str(&csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    Page { html, csp }
});

fn base64_sha256(text: &str) -> String {
    data_encoding::BASE64.encode(&Sha256::digest(text.as_bytes()))
}

/// Serves the status page.
pub(super) async fn status_page() -> Response {
    let page = &*PAGE;
    let mut response = axum::response::Html(page.html.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        let html = &PAGE.html;
        assert!(html.contains(SCRIPT) && html.contains(STYLE));
        assert!(!html.contains("/*SCRIPT*/") && !html.contains("/*STYLE*/"));
        for external in ["http://", "https://", "src=", "<link"] {
            let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !outside_svg_ns.contains(external),
                "page loads something external: {external}"
            );
        }
        let csp = PAGE.csp.to_str().expect("ascii");
        assert!(csp.contains(&base64_sha256(SCRIPT)));
    }
}
