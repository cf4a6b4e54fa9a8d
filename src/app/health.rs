//! `marketo-sync health`: asks a running daemon's `/healthz` (or `/readyz`) and turns the answer
//! into an exit code, so that a container's health check needs no curl.
//!
//! `/healthz` and `/readyz` need no authentication, so no credential is read or sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The daemon's address when neither `--url` nor `MKSYNC__HTTP__LISTEN` says otherwise (the
/// default of the `http.listen` setting).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Errors of `marketo-sync health`.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL given cannot be used.
    #[error("invalid health url {url:?}: {reason}")]
    BadUrl {
        /// The URL, without any user or password.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer (refused, timed out, not HTTP).
    #[error("{url}: no answer: {source}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The client's error (without the URL, which is already named).
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not 2xx.
    #[error("{url}: {status} {body}")]
    Unhealthy {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// What `health` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthOptions {
    /// The daemon's base URL (`http://host:port`), or a full URL with a path, used as is.
    pub url: String,
    /// Ask `/readyz` (the daemon can sync: store reachable, lease held or standby) instead of
    /// `/healthz` (the process answers).
    pub ready: bool,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

/// A 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthy {
    /// The URL asked (without user or password).
    pub url: String,
    /// The HTTP status.
    pub status: u16,
    /// The start of the body.
    pub body: String,
}

/// Returns the base URL of the daemon whose listen address is `listen` (the value of
/// `http.listen` or `MKSYNC__HTTP__LISTEN`): an unspecified address (0.0.0.0, [::]) is asked on
/// the loopback address of its family.
pub fn url_for_listen(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Returns the URL `health` asks without `--url`: from the `MKSYNC__HTTP__LISTEN` value when
/// it is given and parses, else [`DEFAULT_URL`].
pub fn default_url(listen_env: Option<&str>) -> String {
    listen_env
        .and_then(|value| value.trim().parse::<SocketAddr>().ok())
        .map_or_else(|| DEFAULT_URL.to_owned(), url_for_listen)
}

/// Returns the URL to ask: `/healthz` or `/readyz` appended to a base URL; a URL with another
/// path is used as is. User and password are removed.
///
/// # Errors
///
/// [`HealthError::BadUrl`] for a URL that does not parse or is not http(s).
pub fn target_url(options: &HealthOptions) -> Result<url::Url, HealthError> {
    let mut url = url::Url::parse(options.url.trim()).map_err(|error| HealthError::BadUrl {
        url: redact(&options.url),
        reason: error.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HealthError::BadUrl {
            url: redact(&options.url),
            reason: format!("the scheme is {:?}; expected http or https", url.scheme()),
        });
    }
    // Best effort: a URL that cannot have a user has none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(if options.ready { "/readyz" } else { "/healthz" });
    }
    Ok(url)
}

/// Asks the daemon and returns its 2xx answer.
///
/// # Errors
///
/// [`HealthError::BadUrl`], [`HealthError::Unreachable`] when nothing answers within the
/// timeout, [`HealthError::Unhealthy`] for any other status.
pub async fn check(options: &HealthOptions) -> Result<Healthy, HealthError> {
    let url = target_url(options)?;
    let shown = url.to_string();
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| HealthError::Unreachable {
            url: shown.clone(),
            source: error.without_url(),
        })?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|error| HealthError::Unreachable {
            url: shown.clone(),
            source: error.without_url(),
        })?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(200).collect();
    if (200..300).contains(&status) {
        Ok(Healthy {
            url: shown,
            status,
            body,
        })
    } else {
        Err(HealthError::Unhealthy {
            url: shown,
            status,
            body,
        })
    }
}

/// Returns the text of a URL without its user and password (or a placeholder when it does not
/// parse, since it might hold one).
fn redact(text: &str) -> String {
    match url::Url::parse(text.trim()) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "(unparsable url)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str, ready: bool) -> HealthOptions {
        HealthOptions {
            url: url.to_owned(),
            ready,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_base_url_gets_the_probe_path_and_loses_its_credentials() {
        let url = target_url(&options("http://ops:hunter2@127.0.0.1:8080", false)).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/healthz");
        let url = target_url(&options("http://127.0.0.1:8080/", true)).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/readyz");
        let url = target_url(&options("http://127.0.0.1:9/custom/healthz", true)).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/custom/healthz");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_a_password() {
        let error = target_url(&options("ftp://ops:hunter2@host/", false)).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("expected http or https"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let error = target_url(&options("not a url hunter2", false)).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn the_default_follows_the_listen_variable_on_loopback() {
        assert_eq!(default_url(None), DEFAULT_URL);
        assert_eq!(default_url(Some("0.0.0.0:9000")), "http://127.0.0.1:9000");
        assert_eq!(default_url(Some("[::]:9000")), "http://[::1]:9000");
        assert_eq!(default_url(Some("10.0.0.5:81")), "http://10.0.0.5:81");
        assert_eq!(default_url(Some("garbage")), DEFAULT_URL);
    }
}
