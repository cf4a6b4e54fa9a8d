//! `marketo-sync demo` as a person runs it: records flow both ways and it stops by itself.

use std::process::Command;

fn written(line: &str, direction: &str) -> u64 {
    // "cycle 2 succeeded: 3 records written Marketo -> CRM, 2 CRM -> Marketo, 12 Marketo calls"
    let (_, rest) = line.split_once(": ").expect("a cycle line");
    for part in rest.split(", ") {
        if part.contains(direction) {
            return part
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count");
        }
    }
    panic!("no `{direction}` in {line:?}");
}

#[test]
fn the_demo_shows_records_flowing_both_ways_and_stops_after_its_cycles() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args([
            "demo",
            "--cycles",
            "3",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");

    assert!(
        stdout.contains("status page:    http://127.0.0.1:"),
        "{stdout}"
    );
    let secret_line = stdout
        .lines()
        .find(|l| l.contains("webhook secret:"))
        .expect("the webhook secret is printed");
    assert!(
        secret_line
            .split_whitespace()
            .nth(2)
            .is_some_and(|s| s.len() >= 16)
    );

    let cycles: Vec<&str> = stdout.lines().filter(|l| l.starts_with("cycle ")).collect();
    assert_eq!(cycles.len(), 3, "{stdout}");
    assert!(
        cycles.iter().all(|l| l.contains(" succeeded: ")),
        "{stdout}"
    );
    // The first cycle links the sample data; the later ones carry the demo's own edits made on
    // both sides in between: at least the edited and the new record each way.
    for line in &cycles[1..] {
        assert!(written(line, "Marketo -> CRM") >= 2, "{line}");
        assert!(written(line, "CRM -> Marketo") >= 2, "{line}");
    }
    assert!(stdout.contains("demo stopped after 3 cycles"), "{stdout}");

    // The marketer's first edit and new lead reached the CRM.
    let crm = live_contacts(&state.path().join("demo-crm.db"));
    assert!(
        crm.iter().any(|(_, title)| title == "Head of Demos 1"),
        "{crm:?}"
    );
    assert!(
        crm.iter()
            .any(|(email, _)| email == "new.lead.1@demo.example"),
        "{crm:?}"
    );
}

/// Reads (email, title) of every live contact through sqlx, on a runtime of its own.
fn live_contacts(path: &std::path::Path) -> Vec<(String, String)> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", path.display());
        let pool = sqlx::sqlite::SqlitePool::connect(&url)
            .await
            .expect("open crm");
        let rows: Vec<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT email, title FROM contacts WHERE deleted = 0")
                .fetch_all(&pool)
                .await
                .expect("read contacts");
        rows.into_iter()
            .map(|(e, t)| (e.unwrap_or_default(), t.unwrap_or_default()))
            .collect()
    })
}
