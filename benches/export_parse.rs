//! Parses a generated Bulk Lead Extract and prints rows per second and peak memory.
//!
//! `cargo bench --bench export_parse -- 500000` or `EXPORT_ROWS=500000 cargo bench --bench
//! export_parse` (100 000 rows by default). The file is written to a temporary directory first,
//! so the timing covers parsing only, as in the service (download to disk, then parse).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use marketo_sync::marketo::csv::{ExportReader, FileFormat};

const DEFAULT_ROWS: u64 = 100_000;

const COLUMNS: [&str; 30] = [
    "id",
    "email",
    "firstName",
    "lastName",
    "company",
    "title",
    "phone",
    "mobilePhone",
    "address",
    "city",
    "state",
    "postalCode",
    "country",
    "website",
    "industry",
    "annualRevenue",
    "numberOfEmployees",
    "leadScore",
    "leadStatus",
    "leadSource",
    "unsubscribed",
    "doNotCall",
    "emailInvalid",
    "createdAt",
    "updatedAt",
    "dateOfBirth",
    "mktoPersonNotes",
    "leadPartitionId",
    "acquisitionProgramId",
    "marketoTimeZone",
];

fn rows_wanted() -> u64 {
    let from_args = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse::<u64>().ok());
    let from_env = std::env::var("EXPORT_ROWS")
        .ok()
        .and_then(|v| v.replace('_', "").parse::<u64>().ok());
    from_args.or(from_env).unwrap_or(DEFAULT_ROWS)
}

fn write_export(file: File, rows: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::new(file);
    writeln!(out, "{}", COLUMNS.join(","))?;
    for i in 0..rows {
        let notes = match i % 5 {
            0 => "null".to_owned(),
            1 => format!("\"called on {i}, said \"\"call back\"\"\nnext week\""),
            2 => "\"株式会社\u{2028}東京\"".to_owned(),
            _ => format!("plain note {i}"),
        };
        writeln!(
            out,
            "{i},lead{i}@example.com,First{i},Last{i},\"Acme, Inc. {c}\",Engineer,+1 555 {p:04},null,\
             {i} Main St,Springfield,IL,62701,USA,https://example.com/{i},Software,{rev}.50,{emp},\
             {score},Open,Web,false,{dnc},false,2024-01-02T03:04:05Z,2024-06-07T08:09:10Z,\
             1980-05-06,{notes},1,1001,America/Chicago",
            c = i % 100,
            p = i % 10_000,
            rev = i * 10,
            emp = i % 5000,
            score = i % 100,
            dnc = i % 2 == 0,
        )?;
    }
    out.flush()?;
    Ok(out.get_ref().metadata()?.len())
}

/// Returns the peak resident set size in kB (VmHWM), where /proc is available.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let rows = rows_wanted();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("lead_export.csv");
    let size =
        write_export(File::create(&path).expect("create export"), rows).expect("write export");
    let rss_before = peak_rss_kb();

    let start = Instant::now();
    let mut reader = ExportReader::new(File::open(&path).expect("open export"), FileFormat::Csv)
        .expect("export header");
    let mut cells = 0usize;
    let mut errors = 0u64;
    for item in reader.by_ref() {
        match item {
            Ok(row) => cells += row.fields.len(),
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = reader.stats();

    assert_eq!(stats.rows, rows, "every generated row must parse");
    assert_eq!(errors, 0);
    println!(
        "export_parse: {rows} rows x {} columns, {size} bytes",
        COLUMNS.len()
    );
    println!(
        "export_parse: {:.3} s, {:.0} rows/s, {:.1} MB/s, {cells} cells",
        elapsed,
        rows as f64 / elapsed,
        size as f64 / elapsed / 1e6
    );
    match (rss_before, peak_rss_kb()) {
        (Some(before), Some(after)) => {
            println!("export_parse: peak RSS {after} kB (before parsing {before} kB)")
        }
        _ => println!("export_parse: peak RSS not available (no /proc/self/status)"),
    }
}
