//! Widely used open-source Marketo clients, unmodified, against `marketo-sync simulate`.
//!
//! Each script under `tests/third_party/` authenticates, describes leads, syncs leads, pages
//! through leads by filter, runs a lead export and an activity export to completion and reads
//! the files, then prints `RESULT ok ...`. The clients are installed by `scripts/test`; without
//! them the tests are skipped with a notice, or fail when `CI` or `MKSYNC_REQUIRE_ALL=1` is set.
//! `MKSYNC_SKIP_THIRD_PARTY=1` skips them.

#[path = "support/prereq.rs"]
mod prereq;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `marketo-sync simulate`, killed on drop.
struct Simulate {
    child: Child,
    base_url: String,
    client_id: String,
    client_secret: String,
}

impl Simulate {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
            .args([
                "simulate",
                "--listen",
                "127.0.0.1:0",
                "--export-delay",
                "0",
                "--leads",
                "200",
                "--client-id",
                "third-party",
            ])
            .env("MKSYNC_SIM_CLIENT_SECRET", "third-party-secret")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn marketo-sync simulate");
        let stdout = child.stdout.take().expect("simulate stdout");
        let mut base_url = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("read simulate stdout");
            if let Some(url) = line.trim().strip_prefix("base url:") {
                base_url = Some(url.trim().to_string());
            }
            if line.trim().starts_with("client secret:") {
                break;
            }
        }
        // Keep draining stdout so the simulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            base_url: base_url.expect("simulate printed no base url"),
            client_id: "third-party".into(),
            client_secret: "third-party-secret".into(),
        }
    }
}

impl Drop for Simulate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn third_party_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/third_party")
}

/// Runs a client script against a fresh simulator and returns its `RESULT` line.
fn run_script(program: &str, script: &str) -> String {
    let sim = Simulate::start();
    let output = Command::new(program)
        .arg(third_party_dir().join(script))
        .args([&sim.base_url, &sim.client_id, &sim.client_secret])
        .current_dir(third_party_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("{script} printed no RESULT line:\n{stdout}\n{stderr}"))
        .to_string()
}

/// Parses `key=value` pairs of a result line into numbers.
fn counts(line: &str) -> std::collections::BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn check_result(client: &str, line: &str) {
    assert!(line.starts_with("RESULT ok "), "{client}: {line}");
    let n = counts(line);
    assert!(n["described"] >= 40, "{client}: {line}");
    assert_eq!(n["synced"], 5, "{client}: {line}");
    assert_eq!(n["paged"], 5, "{client}: {line}");
    assert!(n["lead_rows"] >= 5, "{client}: {line}");
    // 5 New Lead activities and 1 Change Data Value at least.
    assert!(n["activity_rows"] >= 6, "{client}: {line}");
}

#[test]
fn marketorestpython_works_unmodified_against_simulate() {
    if !prereq::third_party(
        "marketorestpython",
        "python3 with the marketorestpython package",
        prereq::has_python_client,
    ) {
        return;
    }
    let line = run_script("python3", "marketorestpython_client.py");
    check_result("marketorestpython", &line);
}

#[test]
fn node_marketo_rest_works_unmodified_against_simulate() {
    if !prereq::third_party(
        "node-marketo-rest",
        "node with node-marketo-rest in tests/third_party/node_modules",
        prereq::has_node_client,
    ) {
        return;
    }
    let line = run_script("node", "node_marketo_rest_client.js");
    check_result("node-marketo-rest", &line);
    assert!(counts(&line)["pages"] >= 3, "node-marketo-rest: {line}");
}
