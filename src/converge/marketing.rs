//! The marketing objects of [`super::Schedule::Marketing`]: programs (`programs.toml`, to the
//! CRM's `campaigns`), program members (`program_members.toml`, `campaign_members`) and static
//! list membership (`static_lists.toml`, `list_members`), with the user edits of both sides and
//! the checks that both sides agree on them afterwards.
//!
//! Marketo's user (through [`crate::sim::SimHandle`], as a marketer in the Marketo UI): sets a
//! lead's status in a program (Change Status in Progression, 104, logged as Marketo does), adds
//! a lead to a configured static list or removes one (Add to List 24, Remove from List 25), and
//! creates a program (the programs step's browse picks it up; the schedule browses every cycle;
//! in process only, as the child process's clock is behind the simulator's).
//! The CRM's user (raw SQL on the demo CRM): changes a campaign member's status, adds a
//! campaign member row for a contact not yet in the campaign, and adds a list membership row or
//! flips its `is_member` flag.
//!
//! The edits are drawn from a generator of their own, seeded from the schedule's seed, so the
//! other steps of a seed are the same as in [`super::Schedule::Full`].

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{ConvergeError, Rig, quote};
use crate::mapping::programs::StatusMap;
use crate::model::Side;
use crate::store::{ErrorStatus, Link, SyncError};

/// The mapping files of the marketing objects and their `sync.objects` names.
pub(super) const MAPPING_FILES: &[(&str, &str)] = &[
    ("programs.toml", "programs"),
    ("program_members.toml", "program_members"),
    ("static_lists.toml", "static_lists"),
];

/// The Marketo statuses a marketer sets (those of the demo status map: a status the map does
/// not know is refused to the ledger until it changes again, which the checks would report).
const MARKETO_STATUSES: &[&str] = &["Invited", "Member", "Registered", "Attended", "Influenced"];
/// The CRM statuses a CRM user sets on any campaign member (`Responded` only on a Webinar
/// channel program, where the status map has it).
const CRM_STATUSES: &[&str] = &["Invited", "Member", "Registered", "Attended", "Influenced"];
/// The channels of the programs a marketer creates.
const CHANNELS: &[&str] = &["Webinar", "Nurture", "Online Advertising"];

/// Returns the generator of a schedule's marketing edits.
pub(super) fn marketing_rng(seed: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_726b_6574_696e)
}

/// A CRM campaign member row: (id, campaign row id, contact id, status).
type MemberRow = (String, String, String, String);
/// A CRM list membership row: (id, contact id, list name, is member).
type ListRow = (String, String, String, bool);

impl Rig {
    async fn user_rows(
        &self,
        operation: &str,
        sql: String,
    ) -> Result<Vec<Vec<Option<String>>>, ConvergeError> {
        self.user
            .fetch("marketing read", sql, &[])
            .await
            .map_err(|source| ConvergeError::CrmUser {
                seed: self.seed,
                operation: operation.to_owned(),
                source,
            })
    }

    /// Returns the live lead links whose lead exists in Marketo and whose contact is live, as
    /// (lead id, contact id).
    async fn linked_pairs(&self) -> Result<Vec<(i64, String)>, ConvergeError> {
        let live_leads: BTreeSet<i64> = self
            .run
            .sim
            .leads()
            .iter()
            .filter_map(|l| l["id"].as_i64())
            .collect();
        let live_contacts: BTreeSet<String> = self
            .live_contacts()
            .await?
            .into_iter()
            .filter_map(|c| c.into_iter().next().flatten())
            .collect();
        let links: Vec<Link> = self.all_links(crate::engine::leads::LINK_OBJECT).await?;
        Ok(links
            .into_iter()
            .filter(|l| l.tombstone.is_none() && live_contacts.contains(&l.crm_key))
            .filter_map(|l| Some((l.marketo_key.parse::<i64>().ok()?, l.crm_key)))
            .filter(|(lead, _)| live_leads.contains(lead))
            .collect())
    }

    /// Returns the names of the static lists the mapping syncs.
    fn list_names(&self) -> Vec<String> {
        self.mappings
            .iter()
            .find(|m| m.object == "static_lists")
            .and_then(|m| m.file.lists.as_ref())
            .map(|l| l.names.clone())
            .unwrap_or_default()
    }

    /// Returns the live campaign rows: (id, Marketo program id, channel).
    async fn campaigns(&self) -> Result<Vec<(String, String, String)>, ConvergeError> {
        let rows = self
            .user_rows(
                "read campaigns",
                "SELECT CAST(id AS TEXT), marketo_id, channel FROM campaigns WHERE deleted = FALSE \
                 ORDER BY id"
                    .into(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (col(0), col(1), col(2))
            })
            .collect())
    }

    /// Returns the live campaign member rows.
    async fn member_rows(&self) -> Result<Vec<MemberRow>, ConvergeError> {
        let rows = self
            .user_rows(
                "read campaign members",
                "SELECT CAST(id AS TEXT), campaign_id, contact_id, status FROM campaign_members \
                 WHERE deleted = FALSE ORDER BY id"
                    .into(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (col(0), col(1), col(2), col(3))
            })
            .collect())
    }

    /// Returns the live list membership rows: (id, contact id, list name, is member).
    async fn list_rows(&self) -> Result<Vec<ListRow>, ConvergeError> {
        let rows = self
            .user_rows(
                "read list members",
                "SELECT CAST(id AS TEXT), contact_id, list_name, \
                 CASE WHEN is_member THEN '1' ELSE '0' END FROM list_members \
                 WHERE deleted = FALSE ORDER BY id"
                    .into(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (col(0), col(1), col(2), col(3) == "1")
            })
            .collect())
    }

    /// Plays one marketing edit (drawn from `rng`) on either side; returns what it did (empty
    /// when its records are missing).
    pub(super) async fn marketing_edit(
        &self,
        rng: &mut ChaCha8Rng,
        serial: u32,
        now: &str,
    ) -> Result<String, ConvergeError> {
        let roll = rng.random_range(0..100u32);
        let sim = &self.run.sim;
        let pairs = self.linked_pairs().await?;
        match roll {
            // Marketo: a marketer sets a lead's program status.
            0..=29 => {
                let leads = sim.leads();
                let programs = sim.programs();
                if leads.is_empty() || programs.is_empty() {
                    return Ok(String::new());
                }
                // Mostly leads the CRM holds, so that the change has somewhere to go.
                let lead = if !pairs.is_empty() && rng.random_bool(0.8) {
                    pairs[rng.random_range(0..pairs.len())].0
                } else {
                    leads[rng.random_range(0..leads.len())]["id"]
                        .as_i64()
                        .unwrap_or_default()
                };
                let (program, name, _, _) = &programs[rng.random_range(0..programs.len())];
                let status = MARKETO_STATUSES[rng.random_range(0..MARKETO_STATUSES.len())];
                match sim.set_program_status(*program, lead, status) {
                    Ok(()) => Ok(format!(
                        "marketo status of lead {lead} in program {program} ({name}) set to {status}"
                    )),
                    Err(_) => Ok(String::new()),
                }
            }
            // Marketo: a marketer adds a lead to a list, or removes one from it.
            30..=54 => {
                let lists: Vec<(i64, String, Vec<i64>)> = sim
                    .static_lists()
                    .into_iter()
                    .filter(|(_, n, _)| self.list_names().contains(n))
                    .collect();
                if lists.is_empty() {
                    return Ok(String::new());
                }
                let (list, name, members) = &lists[rng.random_range(0..lists.len())];
                let remove = roll >= 45 && !members.is_empty();
                let lead = if remove {
                    members[rng.random_range(0..members.len())]
                } else if !pairs.is_empty() && rng.random_bool(0.8) {
                    pairs[rng.random_range(0..pairs.len())].0
                } else {
                    let leads = sim.leads();
                    if leads.is_empty() {
                        return Ok(String::new());
                    }
                    leads[rng.random_range(0..leads.len())]["id"]
                        .as_i64()
                        .unwrap_or_default()
                };
                if !sim.set_list_membership(*list, lead, !remove) {
                    return Ok(String::new());
                }
                Ok(format!(
                    "marketo {} lead {lead} {} list {list} ({name})",
                    if remove { "removes" } else { "adds" },
                    if remove { "from" } else { "to" }
                ))
            }
            // Marketo: a marketer creates a program.
            55..=59 => {
                let channel = CHANNELS[rng.random_range(0..CHANNELS.len())];
                // Not with the engine as a child process: its clock is the real one, behind
                // the simulator's by the ticks of the cycles so far (see the module
                // documentation of `converge`), and the programs step browses the programs
                // updated up to its own now; a program stamped by the simulator's clock would
                // only fall in a browse window once real time caught up (see the report of
                // seed 2, `--engine process --marketing`).
                if matches!(self.run.driver, super::runner::Driver::Process(_)) {
                    return Ok(String::new());
                }
                let name = format!("Program {serial} S{}", self.seed);
                match sim.create_program(&name, channel) {
                    Some(id) => Ok(format!("marketo creates program {id} {name:?} ({channel})")),
                    None => Ok(String::new()),
                }
            }
            // CRM: a campaign member's status changed.
            60..=79 => {
                let members = self.member_rows().await?;
                let live: BTreeSet<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
                let members: Vec<&MemberRow> = members
                    .iter()
                    .filter(|m| live.contains(m.2.as_str()))
                    .collect();
                if members.is_empty() {
                    return Ok(String::new());
                }
                let (id, campaign, _, old) = members[rng.random_range(0..members.len())];
                let webinar = self
                    .campaigns()
                    .await?
                    .iter()
                    .any(|(c, _, ch)| c == campaign && ch == "Webinar");
                let mut choices: Vec<&str> = CRM_STATUSES.to_vec();
                if webinar {
                    choices.push("Responded");
                }
                let status = choices[rng.random_range(0..choices.len())];
                if status == old.as_str() {
                    return Ok(String::new());
                }
                let what = format!("crm campaign member {id} status {old} -> {status}");
                self.sql(
                    &what,
                    format!(
                        "UPDATE campaign_members SET status = '{}', updated_at = {now} WHERE id = {id}",
                        quote(status)
                    ),
                )
                .await?;
                Ok(what)
            }
            // CRM: a contact added to a campaign it has no row in.
            80..=86 => {
                let campaigns = self.campaigns().await?;
                if campaigns.is_empty() || pairs.is_empty() {
                    return Ok(String::new());
                }
                let (campaign, program, channel) = &campaigns[rng.random_range(0..campaigns.len())];
                let (_, contact) = &pairs[rng.random_range(0..pairs.len())];
                let taken = self
                    .member_rows()
                    .await?
                    .iter()
                    .any(|m| &m.1 == campaign && &m.2 == contact);
                if taken {
                    return Ok(String::new());
                }
                let mut choices: Vec<&str> = CRM_STATUSES.to_vec();
                if channel == "Webinar" {
                    choices.push("Responded");
                }
                let status = choices[rng.random_range(0..choices.len())];
                let what = format!(
                    "crm adds contact {contact} to campaign {campaign} (program {program}) as {status}"
                );
                self.sql(
                    &what,
                    format!(
                        "INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at) \
                         VALUES ('{}', '{}', '{}', {now})",
                        quote(campaign),
                        quote(contact),
                        quote(status)
                    ),
                )
                .await?;
                Ok(what)
            }
            // CRM: a list membership row added, or its flag flipped.
            _ => {
                let names = self.list_names();
                if names.is_empty() || pairs.is_empty() {
                    return Ok(String::new());
                }
                let name = &names[rng.random_range(0..names.len())];
                let (_, contact) = &pairs[rng.random_range(0..pairs.len())];
                let rows = self.list_rows().await?;
                let row = rows.iter().find(|r| &r.1 == contact && &r.2 == name);
                let (what, sql) = match row {
                    Some((id, _, _, member)) => (
                        format!(
                            "crm list row {id} (contact {contact}, {name}) is_member {member} -> {}",
                            !member
                        ),
                        format!(
                            "UPDATE list_members SET is_member = {}, updated_at = {now} WHERE id = {id}",
                            if *member { "FALSE" } else { "TRUE" }
                        ),
                    ),
                    None => (
                        format!("crm adds contact {contact} to list {name}"),
                        format!(
                            "INSERT INTO list_members (contact_id, list_name, is_member, updated_at) \
                             VALUES ('{}', '{}', TRUE, {now})",
                            quote(contact),
                            quote(name)
                        ),
                    ),
                };
                self.sql(&what, sql).await?;
                Ok(what)
            }
        }
    }

    /// Checks that both sides agree on the marketing objects and returns the number of
    /// memberships checked:
    ///
    /// - every Marketo program is one live campaign row (by its Marketo id) with its name;
    /// - for every program and every lead linked to a live contact, the lead's Marketo status
    ///   and the contact's campaign member row agree through the status map (the CRM status
    ///   translated to Marketo's is Marketo's), a member has exactly one live row and a lead
    ///   that is no member has none;
    /// - for every configured list and every such pair, the lead is in the Marketo list exactly
    ///   when the contact has a row of the list with `is_member` true, and the contact has at
    ///   most one live row of the list.
    ///
    /// A disagreement is reported with the open ledger entries of its CRM rows or member key.
    pub(super) async fn check_marketing(
        &self,
        violations: &mut Vec<String>,
    ) -> Result<usize, ConvergeError> {
        if !self.mappings.iter().any(|m| m.object == "program_members") {
            return Ok(0);
        }
        let open: Vec<SyncError> = self
            .run
            .store
            .list_errors(&crate::store::ErrorFilter {
                status: Some(ErrorStatus::Open),
                limit: 10_000,
                ..crate::store::ErrorFilter::default()
            })
            .await
            .map_err(|source| ConvergeError::Store {
                seed: self.seed,
                source,
            })?;
        let ledger = |object: &str, keys: &[&str]| {
            let found: Vec<String> = open
                .iter()
                .filter(|e| e.object == object && keys.contains(&e.record_key.as_str()))
                .map(|e| {
                    format!(
                        "{} {}: {} {}",
                        e.direction.as_str(),
                        e.record_key,
                        e.code,
                        e.message
                    )
                })
                .collect();
            if found.is_empty() {
                String::new()
            } else {
                format!("; in the error ledger: {}", found.join("; "))
            }
        };
        let pairs = self.linked_pairs().await?;
        let mut checked = 0;

        // Programs and their members.
        let statuses = self
            .mappings
            .iter()
            .find(|m| m.object == "program_members")
            .map(|m| m.file.statuses.clone())
            .unwrap_or_default();
        let campaigns = self.campaigns().await?;
        let mut campaign_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, program, _) in &campaigns {
            campaign_of.entry(program.as_str()).or_default().push(id);
        }
        let names: BTreeMap<String, Option<String>> = self
            .user_rows(
                "read campaign names",
                "SELECT CAST(id AS TEXT), name FROM campaigns WHERE deleted = FALSE".into(),
            )
            .await?
            .into_iter()
            .filter_map(|r| Some((r.first().cloned().flatten()?, r.get(1).cloned().flatten())))
            .collect();
        let rows = self.member_rows().await?;
        let mut rows_of: BTreeMap<(&str, &str), Vec<&MemberRow>> = BTreeMap::new();
        for r in &rows {
            rows_of
                .entry((r.1.as_str(), r.2.as_str()))
                .or_default()
                .push(r);
        }
        for (program, name, channel, members) in self.run.sim.programs() {
            let key = program.to_string();
            let campaign = match campaign_of.get(key.as_str()).map(Vec::as_slice) {
                Some([one]) => *one,
                found => {
                    violations.push(format!(
                        "Marketo program {program} ({name}) has {} live campaign rows{}",
                        found.map_or(0, <[&str]>::len),
                        ledger("programs", &[&key])
                    ));
                    continue;
                }
            };
            if names.get(campaign).cloned().flatten().as_deref() != Some(name.as_str()) {
                violations.push(format!(
                    "campaign row {campaign} of program {program} is named {:?}, not {name:?}",
                    names.get(campaign)
                ));
            }
            let map = StatusMap::of(&statuses, &name, Some(channel.as_str()));
            let members: BTreeMap<i64, String> = members.into_iter().collect();
            for (lead, contact) in &pairs {
                let member = members.get(lead);
                let found = rows_of
                    .get(&(campaign, contact.as_str()))
                    .cloned()
                    .unwrap_or_default();
                let member_key = format!("{program}:{lead}");
                let row_ids: Vec<&str> = found.iter().map(|r| r.0.as_str()).collect();
                let mut keys = row_ids.clone();
                keys.push(&member_key);
                if found.len() > 1 {
                    violations.push(format!(
                        "lead {lead} in program {program} has {} CRM campaign member rows of \
                         contact {contact}: {row_ids:?}",
                        found.len()
                    ));
                    continue;
                }
                match (member, found.first()) {
                    (Some(status), Some(row)) => {
                        checked += 1;
                        let crm = map.translate(Side::Marketo, &row.3, &name);
                        if crm.as_deref().ok() != Some(status.as_str()) {
                            violations.push(format!(
                                "lead {lead} and contact {contact} disagree on their status in \
                                 program {program} ({name}, {channel}): Marketo {status:?}, CRM \
                                 row {} {:?}{}",
                                row.0,
                                row.3,
                                ledger("program_members", &keys)
                            ));
                        }
                    }
                    (Some(status), None) => violations.push(format!(
                        "lead {lead} is {status:?} in program {program} ({name}), but contact \
                         {contact} has no campaign member row{}",
                        ledger("program_members", &keys)
                    )),
                    (None, Some(row)) => violations.push(format!(
                        "contact {contact} has campaign member row {} ({:?}) in program \
                         {program} ({name}), but lead {lead} is no member{}",
                        row.0,
                        row.3,
                        ledger("program_members", &keys)
                    )),
                    (None, None) => {}
                }
            }
        }

        // Static lists.
        let list_rows = self.list_rows().await?;
        let mut list_rows_of: BTreeMap<(&str, &str), Vec<&ListRow>> = BTreeMap::new();
        for r in &list_rows {
            list_rows_of
                .entry((r.1.as_str(), r.2.as_str()))
                .or_default()
                .push(r);
        }
        let names = self.list_names();
        for (list, name, members) in self.run.sim.static_lists() {
            if !names.contains(&name) {
                continue;
            }
            let members: BTreeSet<i64> = members.into_iter().collect();
            for (lead, contact) in &pairs {
                let found = list_rows_of
                    .get(&(contact.as_str(), name.as_str()))
                    .cloned()
                    .unwrap_or_default();
                let member_key = format!("{list}:{lead}");
                let row_ids: Vec<&str> = found.iter().map(|r| r.0.as_str()).collect();
                let mut keys = row_ids.clone();
                keys.push(&member_key);
                if found.len() > 1 {
                    violations.push(format!(
                        "contact {contact} has {} live rows of list {name}: {row_ids:?}",
                        found.len()
                    ));
                    continue;
                }
                let in_crm = found.first().is_some_and(|r| r.3);
                let in_marketo = members.contains(lead);
                if in_crm || in_marketo {
                    checked += 1;
                }
                if in_crm != in_marketo {
                    violations.push(format!(
                        "lead {lead} is {}in list {list} ({name}) in Marketo, but contact \
                         {contact} {}{}",
                        if in_marketo { "" } else { "not " },
                        match found.first() {
                            Some(r) => format!("has row {} with is_member {}", r.0, r.3),
                            None => "has no row".to_owned(),
                        },
                        ledger("static_lists", &keys)
                    ));
                }
            }
        }
        Ok(checked)
    }

    /// Returns whether an open ledger entry of the marketing objects waits for a record that
    /// cannot come: a CRM row whose contact has no live lead link, or a Marketo membership
    /// whose lead has no live contact. `None` when the entry is of another object.
    pub(super) async fn marketing_orphan(
        &self,
        e: &SyncError,
        linked_contacts: &BTreeSet<String>,
        linked_leads: &BTreeSet<String>,
    ) -> Option<bool> {
        let table = match e.object.as_str() {
            "program_members" => "campaign_members",
            "static_lists" => "list_members",
            _ => return None,
        };
        if e.direction == crate::store::Direction::MarketoToCrm {
            let lead = e.record_key.split_once(':').map(|(_, l)| l.to_owned());
            return Some(lead.is_none_or(|l| !linked_leads.contains(&l)));
        }
        let Ok(id) = e.record_key.parse::<i64>() else {
            return Some(false);
        };
        let contact = self
            .user
            .fetch(
                "the row's contact",
                format!("SELECT contact_id FROM {table} WHERE id = {id}"),
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
            .and_then(|r| r.into_iter().next().flatten());
        Some(contact.is_none_or(|c| !linked_contacts.contains(&c)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::runner::Watch;
    use super::super::{ConvergeOptions, Schedule, check_invariants};
    use super::*;
    use std::path::Path;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checks_catch_unsynced_and_duplicated_memberships() {
        let options = ConvergeOptions {
            schedule: Schedule::Marketing,
            ..ConvergeOptions::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
        };
        let mut rig = Rig::start(9, &options).await.unwrap();
        let now = rig.crm_now();
        rig.sql(
            "insert",
            format!(
                "INSERT INTO contacts (email, first_name, updated_at) VALUES ('m@example.com', 'M', {now})"
            ),
        )
        .await
        .unwrap();
        for _ in 0..2 {
            let c = rig.cycle(Watch::Nothing).await.unwrap();
            assert!(c.ran.is_ok(), "{}", c.ran);
        }
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        let (lead, contact) = rig.linked_pairs().await.unwrap()[0].clone();

        // Marketo changes no cycle has carried yet.
        rig.run
            .sim
            .set_program_status(1107, lead, "Attended")
            .unwrap();
        assert!(rig.run.sim.set_list_membership(1001, lead, true));
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        let all = violations.join("\n");
        assert!(
            all.contains(&format!(
                "lead {lead} is \"Attended\" in program 1107 (Spring Webinar), but contact {contact} has no campaign member row"
            )),
            "{all}"
        );
        assert!(
            all.contains(&format!("lead {lead} is in list 1001 (Newsletter) in Marketo, but contact {contact} has no row")),
            "{all}"
        );

        // Carried: Attended is the CRM's Responded on a Webinar program, which agrees.
        for _ in 0..2 {
            let c = rig.cycle(Watch::Nothing).await.unwrap();
            assert!(c.ran.is_ok(), "{}", c.ran);
        }
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");

        // A second CRM row of one membership, and a status the other side does not have.
        let now = rig.crm_now();
        rig.sql(
            "duplicate",
            format!(
                "INSERT INTO list_members (contact_id, list_name, is_member, updated_at) \
                 VALUES ('{contact}', 'Newsletter', TRUE, {now}); \
                 UPDATE campaign_members SET status = 'Invited', updated_at = {now}"
            ),
        )
        .await
        .unwrap();
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        let all = violations.join("\n");
        assert!(
            all.contains(&format!(
                "contact {contact} has 2 live rows of list Newsletter"
            )),
            "{all}"
        );
        assert!(
            all.contains(&format!(
                "lead {lead} and contact {contact} disagree on their status in program 1107"
            )) && all.contains("Marketo \"Attended\""),
            "{all}"
        );
        rig.finish().await;
    }
}
