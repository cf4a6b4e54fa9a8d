//! What the test suite needs outside cargo, how to tell whether it is there, and what a test does
//! when it is not: it is skipped with a one-line notice, unless `CI` or `MKSYNC_REQUIRE_ALL=1` is
//! set, in which case a missing prerequisite fails the test. `scripts/test` installs or starts
//! all of them and sets `MKSYNC_REQUIRE_ALL=1`.
//!
//! Include it with `#[path = "support/prereq.rs"] mod prereq;`. The library's first unit test
//! (`app::demo::tests::a_notice_of_missing_test_prerequisites`) prints [`notice`] at the top of
//! `cargo test`.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The command that sets everything up and runs the whole suite.
pub const FIX: &str = "scripts/test";

/// Whether a missing prerequisite fails instead of skipping: `MKSYNC_REQUIRE_ALL=1`, or `CI`
/// set to anything but `false`/`0`.
pub fn require_all() -> bool {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("MKSYNC_REQUIRE_ALL") || set("CI")
}

/// Writes one line to standard error, past the test harness's output capture, so that a skip is
/// seen in a passing run.
pub fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Skips (returns `None` after a notice) or fails the calling test for a missing prerequisite.
///
/// # Panics
///
/// When [`require_all`] is true.
pub fn missing<T>(test: &str, what: &str) -> Option<T> {
    if require_all() {
        panic!(
            "{test}: {what} is missing (required because CI or MKSYNC_REQUIRE_ALL is set); run {FIX} to set it up"
        );
    }
    announce(&format!(
        "SKIPPED {test}: {what} is missing; run {FIX} to set it up (MKSYNC_REQUIRE_ALL=1 makes this a failure)"
    ));
    None
}

/// Returns the Chromium binary, if installed.
pub fn find_chromium() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Returns the Chromium binary, or `None` (with a notice) when the test is to be skipped.
/// `MKSYNC_SKIP_BROWSER_TESTS=1` skips even when Chromium is installed.
pub fn chromium(test: &str) -> Option<PathBuf> {
    if std::env::var("MKSYNC_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
        announce(&format!("SKIPPED {test}: MKSYNC_SKIP_BROWSER_TESTS=1"));
        return None;
    }
    match find_chromium() {
        Some(path) => Some(path),
        None => missing(
            test,
            "Chromium (looked for /usr/bin/chromium, chromium and chromium-browser on PATH)",
        ),
    }
}

/// The directory of the third-party client scripts.
pub fn third_party_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/third_party")
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .current_dir(third_party_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether python3 can import marketorestpython.
pub fn has_python_client() -> bool {
    succeeds("python3", &["-c", "import marketorestpython.client"])
}

/// Whether node can resolve node-marketo-rest from tests/third_party.
pub fn has_node_client() -> bool {
    succeeds("node", &["-e", "require.resolve('node-marketo-rest')"])
}

/// Returns whether a third-party client test should run: `false` (with a notice) when
/// `MKSYNC_SKIP_THIRD_PARTY=1` or the client is missing and not required.
pub fn third_party(test: &str, client: &str, present: fn() -> bool) -> bool {
    if std::env::var("MKSYNC_SKIP_THIRD_PARTY").is_ok_and(|v| v == "1") {
        announce(&format!("SKIPPED {test}: MKSYNC_SKIP_THIRD_PARTY=1"));
        return false;
    }
    if present() {
        return true;
    }
    missing::<()>(test, client).is_some()
}

/// The PostgreSQL server the tests use (`PG_TEST_URL`).
pub fn postgres_url() -> String {
    std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The MariaDB server the tests use (`MYSQL_TEST_URL`).
pub fn mariadb_url() -> String {
    std::env::var("MYSQL_TEST_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// Returns `host:port` of a server URL when something accepts connections there.
fn reachable(url: &str, default_port: u16) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid url: {e}"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .collect();
    for addr in &addrs {
        if TcpStream::connect_timeout(addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
    }
    Err(format!("nothing answers at {host}:{port}"))
}

/// Everything the suite needs that is missing here, one short item each.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if let Err(why) = reachable(&postgres_url(), 5432) {
        missing.push(format!("PostgreSQL (PG_TEST_URL: {why})"));
    }
    if let Err(why) = reachable(&mariadb_url(), 3306) {
        missing.push(format!("MariaDB (MYSQL_TEST_URL: {why})"));
    }
    if std::env::var("MKSYNC_SKIP_BROWSER_TESTS").as_deref() != Ok("1") && find_chromium().is_none()
    {
        missing.push("Chromium".to_owned());
    }
    if std::env::var("MKSYNC_SKIP_THIRD_PARTY").as_deref() != Ok("1") {
        if !has_python_client() {
            missing.push("python3 with marketorestpython".to_owned());
        }
        if !has_node_client() {
            missing.push("node with node-marketo-rest in tests/third_party".to_owned());
        }
    }
    missing
}

/// The one-line notice of what is missing, or `None` when everything is there.
pub fn notice() -> Option<String> {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return None;
    }
    let servers = missing
        .iter()
        .any(|m| m.starts_with("PostgreSQL") || m.starts_with("MariaDB"));
    let outcome = match (require_all(), servers) {
        (true, _) => "their tests fail (CI or MKSYNC_REQUIRE_ALL is set)",
        (false, true) => "the database tests fail, the others are skipped",
        (false, false) => "their tests are skipped",
    };
    Some(format!(
        "NOTE: test prerequisites missing: {}; {outcome}. Run {FIX} to install or start them and run everything.",
        missing.join(", ")
    ))
}
