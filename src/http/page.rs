//! The live page served at `/` (`page.html`): plain HTML and JavaScript, no
//! build step and nothing from other origins. The owner pastes a key (kept in
//! the tab's session storage) or opens a `/#ticket=…` link; the page then
//! uses only the public API: `POST /api/v1/mesh/tickets` and the event
//! WebSocket for live daemons, tasks and output, `GET /daemons`,
//! `GET /tasks/{id}` and `GET /tasks/{id}/outputs` to (re-)read state.
//!
//! The response carries a Content-Security-Policy that allows exactly the
//! page's own inline script and style (by hash) and connections to this host.

use std::sync::OnceLock;

use base64::Engine;
use poem::{handler, http::header, web::Html, IntoResponse, Request};
use sha2::{Digest, Sha256};

/// The page, compiled in.
const PAGE: &str = include_str!("page.html");

/// The page.
#[handler]
pub fn index(req: &Request) -> impl IntoResponse {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    Html(PAGE)
        .with_header(header::CONTENT_SECURITY_POLICY, policy(host))
        .with_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .with_header(header::REFERRER_POLICY, "no-referrer")
        .with_header(header::CACHE_CONTROL, "no-cache")
}

/// The Content-Security-Policy for a request to `host`. `'self'` covers the
/// event WebSocket in current browsers; older ones need `ws:`/`wss:` spelled
/// out, which is only done for a host header that is plainly a host.
fn policy(host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(host) = host.filter(|h| plain_host(h)) {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!("{}; connect-src {connect}", static_policy())
}

fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Everything of the policy but `connect-src`.
fn static_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            inline_hash("script"),
            inline_hash("style"),
        )
    })
}

/// `sha256-…` of the text of the page's one `<tag>` element.
fn inline_hash(tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = PAGE.find(&open).map(|i| i + open.len());
    let end = PAGE.find(&close);
    let body = match (start, end) {
        (Some(s), Some(e)) if s <= e => &PAGE[s..e],
        _ => "",
    };
    let digest = Sha256::digest(body.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_inline_script_and_style_both_hashed() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("</script>").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        let body = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(body, _)| body)
            .unwrap();
        assert!(body.contains("new WebSocket"));
        assert_ne!(inline_hash("script"), inline_hash("style"));
        assert!(static_policy().contains(&inline_hash("script")));
    }

    #[test]
    fn nothing_from_elsewhere_and_no_markup_from_data() {
        for banned in [
            "http://",
            "https://",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "style=\"",
        ] {
            assert!(!PAGE.contains(banned), "page contains {banned}");
        }
    }

    #[test]
    fn connect_src_names_only_plain_hosts() {
        assert!(policy(Some("mesh.example.com:8443")).ends_with(
            "connect-src 'self' ws://mesh.example.com:8443 wss://mesh.example.com:8443"
        ));
        assert!(policy(Some("[::1]:80")).ends_with("ws://[::1]:80 wss://[::1]:80"));
        assert!(policy(Some("evil; script-src *")).ends_with("connect-src 'self'"));
        assert!(policy(None).ends_with("connect-src 'self'"));
    }
}
