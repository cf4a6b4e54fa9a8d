//! The estimate of `marketo-sync bootstrap --dry-run`: export jobs, megabytes, Marketo calls and
//! time, from the export windows and a cheap sample of the leads (no export is created).
//!
//! How the leads are counted: Marketo lead ids are assigned in sequence, so the highest lead id
//! bounds the number of leads. It is found with Get Leads by id over blocks of 300 ids (one call
//! per block): blocks at doubling offsets until one is empty, then a binary search between the
//! last full and the first empty block (about 2 × log2(leads / 300) calls: 24 for a million
//! leads). Up to [`SAMPLE_BLOCKS`] blocks spread over the id range are read with the export's
//! fields and `createdAt`; the share of sampled leads created inside the bootstrap range gives
//! the leads to export, and their average CSV row the bytes per lead.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value as Json;

use super::EngineError;
use crate::marketo::{Client, Record};

/// Ids per Get Leads call.
pub const BLOCK: i64 = 300;
/// Blocks read for the sample (at most, besides the probes).
pub const SAMPLE_BLOCKS: i64 = 8;
/// The assumed processing time of one export job in Marketo's queue (Adobe: minutes to hours;
/// exports run one after the other here).
pub const EXPORT_PROCESSING: Duration = Duration::from_secs(5 * 60);
/// The assumed size of one activity row in an activity export (`marketoGUID`, `leadId`,
/// `activityDate`, `activityTypeId`, `campaignId`, `primaryAttributeValueId`,
/// `primaryAttributeValue`, `attributes`).
pub const ACTIVITY_ROW_BYTES: u64 = 160;
/// Calls of one export besides its status polls: create, enqueue, the final status, the download.
pub const CALLS_PER_EXPORT: u64 = 4;
/// Records per REST write-back call.
pub const WRITE_BACK_BATCH: u64 = 300;

/// The inputs of an estimate that are not read from Marketo.
#[derive(Debug, Clone)]
pub struct Assumptions {
    /// Processing time of one export job.
    pub export_processing: Duration,
    /// Time between status polls of an export.
    pub poll_interval: Duration,
    /// The client's rate: calls per 20 seconds (Marketo allows 100).
    pub calls_per_20s: u32,
    /// The daily bulk-export budget in bytes.
    pub bulk_budget_bytes: u64,
}

/// The estimate of one bootstrap phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseEstimate {
    /// The phase.
    pub name: String,
    /// Export jobs (one per window still to run).
    pub exports: u64,
    /// Rows expected in its exports (`None`: Marketo offers no cheap count for them).
    pub rows: Option<u64>,
    /// Bytes expected in its export files.
    pub bytes: u64,
    /// Marketo calls: the exports' and the write-backs'.
    pub calls: u64,
}

/// The estimate of a whole bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Per phase.
    pub phases: Vec<PhaseEstimate>,
    /// Export jobs in all.
    pub exports: u64,
    /// Export bytes in all.
    pub bytes: u64,
    /// Marketo calls in all (the sample's included).
    pub marketo_calls: u64,
    /// Calls this estimate used to count and sample the leads.
    pub sample_calls: u64,
    /// The highest lead id found (an upper bound of the leads, deleted ones included).
    pub highest_lead_id: i64,
    /// Leads sampled.
    pub sampled_leads: u64,
    /// Leads created inside the bootstrap range (from the sample).
    pub leads: u64,
    /// Average bytes of one lead row in the export file (from the sample).
    pub bytes_per_lead: u64,
    /// Working time: export processing plus the calls at the rate limit.
    pub seconds: u64,
    /// Marketo days the bulk budget spreads the exports over (the run pauses at the budget and
    /// resumes after the day turns).
    pub marketo_days: u64,
    /// What the figures assume, for the operator to judge.
    pub assumptions: Vec<String>,
}

/// The leads of the instance as sampled.
#[derive(Debug, Clone, Default)]
pub struct LeadSample {
    /// The highest lead id.
    pub highest_id: i64,
    /// Leads read.
    pub sampled: u64,
    /// Sampled leads created at or after the low watermark.
    pub in_range: u64,
    /// Total CSV bytes of the sampled in-range leads' rows.
    pub in_range_bytes: u64,
    /// Calls made.
    pub calls: u64,
}

impl LeadSample {
    /// Returns the estimated leads created in the range (the sampled share of the id range).
    pub fn leads(&self) -> u64 {
        if self.sampled == 0 {
            return 0;
        }
        let share = self.in_range as f64 / self.sampled as f64;
        (share * self.highest_id.max(0) as f64).round() as u64
    }

    /// Returns the average CSV row bytes of an in-range lead.
    pub fn bytes_per_lead(&self) -> u64 {
        self.in_range_bytes.checked_div(self.in_range).unwrap_or(0)
    }
}

struct Sampler<'a> {
    client: &'a Client,
    fields: Vec<String>,
    blocks: BTreeMap<i64, Vec<Record>>,
    calls: u64,
}

impl Sampler<'_> {
    /// Returns the leads with ids `start..start + BLOCK` (one call, cached).
    async fn block(&mut self, start: i64) -> Result<&Vec<Record>, EngineError> {
        if !self.blocks.contains_key(&start) {
            let ids: Vec<String> = (start..start + BLOCK).map(|i| i.to_string()).collect();
            let page = self
                .client
                .get_leads("id", &ids, &self.fields, None)
                .await?;
            self.calls += 1;
            self.blocks.insert(start, page.records);
        }
        Ok(&self.blocks[&start])
    }
}

fn id_of(r: &Record) -> Option<i64> {
    r.get("id").and_then(Json::as_i64)
}

/// Returns the length of one CSV cell (quoted when it holds a comma, a quote or a newline).
fn csv_len(value: Option<&Json>) -> u64 {
    let text = match value {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let quoted = text.contains([',', '"', '\n', '\r']);
    let len = text.len() + text.matches('"').count();
    (len + if quoted { 2 } else { 0 }) as u64
}

/// Counts and samples the leads: the highest lead id, then up to [`SAMPLE_BLOCKS`] blocks
/// spread over the ids, read with `fields` (the export's) and `createdAt`.
///
/// # Errors
///
/// A Marketo call failure.
pub async fn sample_leads(
    client: &Client,
    export_fields: &[String],
    low: DateTime<Utc>,
) -> Result<LeadSample, EngineError> {
    let mut fields: Vec<String> = export_fields.to_vec();
    for f in ["id", "createdAt"] {
        if !fields.iter().any(|x| x == f) {
            fields.push(f.to_owned());
        }
    }
    let mut s = Sampler {
        client,
        fields,
        blocks: BTreeMap::new(),
        calls: 0,
    };
    // Doubling probes: the last block with leads and the first without.
    let mut full: Option<i64> = None;
    let mut start = 1;
    let empty = loop {
        if s.block(start).await?.is_empty() {
            break start;
        }
        full = Some(start);
        start = if start == 1 {
            1 + BLOCK
        } else {
            1 + (start - 1) * 2
        };
    };
    let Some(mut lo) = full else {
        return Ok(LeadSample {
            calls: s.calls,
            ..LeadSample::default()
        });
    };
    let mut hi = empty;
    while hi - lo > BLOCK {
        let mid = lo + ((hi - lo) / 2 / BLOCK).max(1) * BLOCK;
        if s.block(mid).await?.is_empty() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let highest_id = s
        .block(lo)
        .await?
        .iter()
        .filter_map(id_of)
        .max()
        .unwrap_or(lo);
    // The sample: blocks spread evenly over 1..=highest_id.
    let total_blocks = (highest_id + BLOCK - 1) / BLOCK;
    let starts: Vec<i64> = if total_blocks <= SAMPLE_BLOCKS {
        (0..total_blocks).map(|b| 1 + b * BLOCK).collect()
    } else {
        (0..SAMPLE_BLOCKS)
            .map(|i| 1 + (i * (total_blocks - 1) / (SAMPLE_BLOCKS - 1)) * BLOCK)
            .collect()
    };
    let mut sample = LeadSample {
        highest_id,
        ..LeadSample::default()
    };
    let export_fields = export_fields.to_vec();
    for start in starts {
        let block = s.block(start).await?.clone();
        for r in block {
            sample.sampled += 1;
            let created = r
                .get("createdAt")
                .and_then(Json::as_str)
                .and_then(|t| t.parse::<DateTime<Utc>>().ok());
            if created.is_some_and(|c| c >= low) {
                sample.in_range += 1;
                let cells: u64 = export_fields.iter().map(|f| csv_len(r.get(f))).sum();
                sample.in_range_bytes += cells + export_fields.len() as u64;
            }
        }
    }
    sample.calls = s.calls;
    Ok(sample)
}

/// The phases' inputs: name, windows to run, and whether its rows are leads or New Lead
/// activities (one per lead) or not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseRows {
    /// One row per lead created in the range.
    Leads,
    /// One activity row per lead created in the range.
    NewLeadActivities,
    /// Not counted (Add to Opportunity activities).
    Unknown,
}

/// Returns the estimate of the phases `(name, windows to run, rows)` from the lead sample.
pub fn estimate(
    phases: &[(String, u64, PhaseRows)],
    sample: &LeadSample,
    assume: &Assumptions,
) -> Estimate {
    let leads = sample.leads();
    let per_lead = sample.bytes_per_lead();
    let polls = assume
        .export_processing
        .as_secs()
        .div_ceil(assume.poll_interval.as_secs().max(1));
    let per_export = CALLS_PER_EXPORT + polls;
    let mut out = Estimate {
        highest_lead_id: sample.highest_id,
        sampled_leads: sample.sampled,
        leads,
        bytes_per_lead: per_lead,
        sample_calls: sample.calls,
        ..Estimate::default()
    };
    for (name, windows, rows) in phases {
        let (rows, bytes, write_back) = match rows {
            PhaseRows::Leads if *windows > 0 => (
                Some(leads),
                leads * per_lead,
                leads.div_ceil(WRITE_BACK_BATCH),
            ),
            PhaseRows::NewLeadActivities if *windows > 0 => {
                (Some(leads), leads * ACTIVITY_ROW_BYTES, 0)
            }
            PhaseRows::Leads | PhaseRows::NewLeadActivities => (Some(0), 0, 0),
            PhaseRows::Unknown => (None, 0, 0),
        };
        let p = PhaseEstimate {
            name: name.clone(),
            exports: *windows,
            rows,
            bytes,
            calls: windows * per_export + write_back,
        };
        out.exports += p.exports;
        out.bytes += p.bytes;
        out.marketo_calls += p.calls;
        out.phases.push(p);
    }
    out.marketo_calls += sample.calls;
    let rate = u64::from(assume.calls_per_20s.max(1));
    let call_secs = (out.marketo_calls * 20).div_ceil(rate);
    out.seconds = out.exports * assume.export_processing.as_secs() + call_secs;
    out.marketo_days = if assume.bulk_budget_bytes == 0 {
        1
    } else {
        out.bytes.div_ceil(assume.bulk_budget_bytes).max(1)
    };
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    out.assumptions = vec![
        format!(
            "leads: {} sampled of ids 1..={} ({} calls of Get Leads by id); lead ids are \
             sequential, so deleted leads count too (an upper bound)",
            sample.sampled, sample.highest_id, sample.calls
        ),
        format!(
            "{per_lead} bytes per lead row (the sampled leads' export fields as CSV); \
             {ACTIVITY_ROW_BYTES} bytes per activity row"
        ),
        format!(
            "each export job takes {} min in Marketo's queue and is polled every {} s: \
             {per_export} calls per export (create, enqueue, {polls} polls, status, download)",
            assume.export_processing.as_secs() / 60,
            assume.poll_interval.as_secs()
        ),
        format!(
            "CRM keys go back to Marketo by REST, {WRITE_BACK_BATCH} leads a call (Bulk Import \
             above 3,000 a window uses fewer calls)"
        ),
        format!(
            "the client makes at most {} calls per 20 s (Marketo's limit is 100 per 20 s)",
            assume.calls_per_20s
        ),
        format!(
            "the daily bulk budget is {:.0} MB (marketo.bulk_mb_budget): a bootstrap larger than \
             the budget pauses and resumes after the Marketo day turns",
            mb(assume.bulk_budget_bytes)
        ),
        "Add to Opportunity activities are not counted (Marketo has no cheap count): their \
         exports are, their megabytes are not"
            .to_owned(),
        "CRM write time and download time are not included".to_owned(),
    ];
    out
}

impl Estimate {
    /// Returns the estimate as text for a terminal.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mb = |b: u64| format!("{:.1} MB", b as f64 / (1024.0 * 1024.0));
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
            .set_header(vec!["Phase", "Exports", "Rows", "Size", "Marketo calls"]);
        for p in &self.phases {
            t.add_row(vec![
                p.name.clone(),
                p.exports.to_string(),
                p.rows
                    .map_or_else(|| "not counted".to_owned(), |r| r.to_string()),
                mb(p.bytes),
                p.calls.to_string(),
            ]);
        }
        t.add_row(vec![
            "total (with the sample)".to_owned(),
            self.exports.to_string(),
            String::new(),
            mb(self.bytes),
            self.marketo_calls.to_string(),
        ]);
        let mut out = String::new();
        let _ = writeln!(out, "Bootstrap estimate (nothing was exported or written):");
        let _ = writeln!(out, "{t}");
        let h = self.seconds / 3600;
        let m = (self.seconds % 3600).div_ceil(60);
        let _ = writeln!(
            out,
            "About {h} h {m} min of work, over {} Marketo day(s) of bulk budget.",
            self.marketo_days
        );
        let _ = writeln!(out, "Assumptions:");
        for a in &self.assumptions {
            let _ = writeln!(out, "  - {a}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_sample_and_the_assumptions() {
        let sample = LeadSample {
            highest_id: 1_000,
            sampled: 100,
            in_range: 50,
            in_range_bytes: 50 * 200,
            calls: 10,
        };
        let assume = Assumptions {
            export_processing: Duration::from_secs(300),
            poll_interval: Duration::from_secs(60),
            calls_per_20s: 100,
            bulk_budget_bytes: 60_000,
        };
        let e = estimate(
            &[
                (
                    "new_lead_activities".into(),
                    2,
                    PhaseRows::NewLeadActivities,
                ),
                ("leads".into(), 2, PhaseRows::Leads),
                (
                    "opportunities_from_activities".into(),
                    2,
                    PhaseRows::Unknown,
                ),
            ],
            &sample,
            &assume,
        );
        assert_eq!(e.leads, 500);
        assert_eq!(e.bytes_per_lead, 200);
        assert_eq!(e.exports, 6);
        assert_eq!(e.bytes, 500 * 160 + 500 * 200);
        // 9 calls per export (4 + 5 polls), 2 write-back calls, 10 sample calls.
        assert_eq!(e.marketo_calls, 6 * 9 + 2 + 10);
        assert_eq!(e.seconds, 6 * 300 + (66 * 20_u64).div_ceil(100));
        assert_eq!(e.marketo_days, 3);
        assert_eq!(e.phases[2].rows, None);
    }

    #[test]
    fn csv_cells_count_their_quotes() {
        assert_eq!(csv_len(Some(&Json::String("a,b".into()))), 5);
        assert_eq!(csv_len(Some(&Json::String("say \"hi\"".into()))), 12);
        assert_eq!(csv_len(Some(&Json::from(12))), 2);
        assert_eq!(csv_len(None), 0);
    }
}
