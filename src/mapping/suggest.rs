//! Proposing a mapping file from both sides' schemas: known Marketo/CRM field pairs first, then
//! name and label similarity. The operator edits the result.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::compile::{COMPANY_FIELDS_ON_LEADS, default_direction, id_type, key_type_problem};
use crate::config::{Direction, FieldMapping, Keys, MappingFile, Policy};
use crate::model::{FieldDef, ObjectSchema};

/// Marketo field → CRM names commonly used for it (compared without case and punctuation).
const KNOWN_PAIRS: &[(&str, &[&str])] = &[
    (
        "email",
        &["email", "emailaddress", "email1", "emailaddr", "mail"],
    ),
    ("firstName", &["firstname", "givenname", "fname"]),
    ("lastName", &["lastname", "surname", "familyname", "lname"]),
    ("middleName", &["middlename"]),
    ("salutation", &["salutation"]),
    ("title", &["title", "jobtitle", "function"]),
    (
        "phone",
        &[
            "phone",
            "phonework",
            "workphone",
            "officephone",
            "businessphone",
        ],
    ),
    (
        "mobilePhone",
        &["mobile", "mobilephone", "phonemobile", "cellphone"],
    ),
    ("fax", &["fax", "phonefax"]),
    (
        "company",
        &[
            "company",
            "accountname",
            "companyname",
            "organization",
            "name",
        ],
    ),
    (
        "address",
        &["address", "street", "primaryaddressstreet", "addressstreet"],
    ),
    ("city", &["city", "primaryaddresscity", "addresscity"]),
    (
        "state",
        &[
            "state",
            "primaryaddressstate",
            "addressstate",
            "region",
            "province",
        ],
    ),
    (
        "postalCode",
        &["postalcode", "zip", "zipcode", "primaryaddresspostalcode"],
    ),
    (
        "country",
        &["country", "primaryaddresscountry", "addresscountry"],
    ),
    ("website", &["website", "url", "web", "domain"]),
    ("industry", &["industry"]),
    ("annualRevenue", &["annualrevenue", "revenue"]),
    (
        "numberOfEmployees",
        &[
            "numberofemployees",
            "employees",
            "employeecount",
            "headcount",
            "numemployees",
        ],
    ),
    ("leadSource", &["leadsource", "source"]),
    ("leadStatus", &["leadstatus", "status", "hsleadstatus"]),
    ("description", &["description", "notes"]),
    (
        "billingCity",
        &["billingcity", "billingaddresscity", "city"],
    ),
    (
        "billingCountry",
        &["billingcountry", "billingaddresscountry", "country"],
    ),
    ("billingStreet", &["billingstreet", "billingaddressstreet"]),
    ("billingState", &["billingstate", "billingaddressstate"]),
    (
        "billingPostalCode",
        &["billingpostalcode", "billingaddresspostalcode"],
    ),
    ("mainPhone", &["mainphone", "phoneoffice", "phone"]),
    ("amount", &["amount", "value", "dealvalue"]),
    (
        "closeDate",
        &["closedate", "dateclosed", "expectedclosedate"],
    ),
    ("stage", &["stage", "salesstage", "dealstage"]),
    ("externalSalesPersonId", &["ownerid", "hubspotownerid"]),
    ("name", &["name", "title", "dealname"]),
];

/// Marketo fields the sync manages itself or that never flow.
const SYSTEM_FIELDS: &[&str] = &["id", "createdAt", "updatedAt", "marketoGUID", "seq"];

fn norm(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .flat_map(char::to_lowercase)
        .collect()
}

fn score(m: &FieldDef, c: &FieldDef) -> Option<f64> {
    let (mn, cn) = (norm(&m.name), norm(&c.name));
    if let Some((_, names)) = KNOWN_PAIRS.iter().find(|(k, _)| *k == m.name)
        && let Some(pos) = names.iter().position(|n| *n == cn)
    {
        return Some(3.0 - pos as f64 * 0.01);
    }
    if mn == cn {
        return Some(2.0);
    }
    let labels = [m.label.as_deref().map(norm), c.label.as_deref().map(norm)];
    if labels[0].as_deref() == Some(cn.as_str())
        || labels[1].as_deref() == Some(mn.as_str())
        || (labels[0].is_some() && labels[0] == labels[1])
    {
        return Some(1.5);
    }
    let s = strsim::jaro_winkler(&mn, &cn);
    (s >= 0.9).then_some(s)
}

/// Returns a proposed mapping file from a Marketo schema and a CRM schema.
pub fn suggest(marketo: &ObjectSchema, crm: &ObjectSchema) -> MappingFile {
    let is_lead = marketo.object == "lead";
    // A key field holds the other side's id, so only a field whose type can hold it is
    // proposed (never, say, a boolean `deleted_in_marketo`): names with "marketo" and "id"
    // first, then any name with "marketo".
    let marketo_id = id_type(marketo);
    let crm_id = id_type(crm);
    let crm_marketo_id = crm
        .fields
        .iter()
        .filter(|d| {
            norm(&d.name).contains("marketo")
                && !d.read_only
                && crm.id_field.as_deref() != Some(d.name.as_str())
                && key_type_problem(&d.ty, &marketo_id).is_none()
        })
        .min_by_key(|d| !norm(&d.name).contains("id"))
        .map(|d| d.name.clone());
    let marketo_crm_key = if is_lead {
        marketo
            .fields
            .iter()
            .find(|d| {
                let n = norm(&d.name);
                n.contains("crm")
                    && n.contains("id")
                    && !d.read_only
                    && key_type_problem(&d.ty, &crm_id).is_none()
            })
            .map(|d| d.name.clone())
    } else {
        marketo.dedupe_fields.first().cloned().or_else(|| {
            marketo
                .fields
                .iter()
                .find(|d| {
                    norm(&d.name).starts_with("external")
                        && key_type_problem(&d.ty, &crm_id).is_none()
                })
                .map(|d| d.name.clone())
        })
    };
    let skip_marketo: BTreeSet<&str> = SYSTEM_FIELDS
        .iter()
        .copied()
        .chain(marketo_crm_key.as_deref())
        .chain(marketo.id_field.as_deref())
        .collect();
    let skip_crm: BTreeSet<&str> = crm
        .id_field
        .as_deref()
        .into_iter()
        .chain(crm_marketo_id.as_deref())
        .collect();

    let mut pairs = Vec::new();
    for (mi, m) in marketo.fields.iter().enumerate() {
        if skip_marketo.contains(m.name.as_str()) {
            continue;
        }
        for (ci, c) in crm.fields.iter().enumerate() {
            if skip_crm.contains(c.name.as_str()) {
                continue;
            }
            if let Some(s) = score(m, c) {
                pairs.push((s, mi, ci));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut used_m = BTreeSet::new();
    let mut used_c = BTreeSet::new();
    let mut chosen = Vec::new();
    for (_, mi, ci) in pairs {
        if used_m.contains(&mi) || used_c.contains(&ci) {
            continue;
        }
        let (m, c) = (&marketo.fields[mi], &crm.fields[ci]);
        let Some(mut direction) = default_direction(Some(m), Some(c)) else {
            continue;
        };
        if is_lead && COMPANY_FIELDS_ON_LEADS.contains(&m.name.as_str()) {
            if c.read_only {
                continue;
            }
            direction = Direction::ToCrm;
        }
        used_m.insert(mi);
        used_c.insert(ci);
        chosen.push((
            mi,
            FieldMapping {
                marketo: Some(m.name.clone()),
                crm: Some(c.name.clone()),
                direction,
                ..FieldMapping::default()
            },
        ));
    }
    chosen.sort_by_key(|(mi, _)| *mi);
    let fields: Vec<FieldMapping> = chosen.into_iter().map(|(_, f)| f).collect();
    let match_fields = if is_lead && fields.iter().any(|f| f.marketo.as_deref() == Some("email")) {
        Some(vec!["email".to_owned()])
    } else {
        None
    };
    MappingFile {
        marketo_object: marketo.object.clone(),
        crm_object: crm.object.clone(),
        policy: Policy::NewestWins,
        keys: Keys {
            marketo_crm_key,
            crm_marketo_id,
            crm_deleted_flag: None,
            crm_lead_object: None,
            crm_lead_converted: None,
            crm_company_ref: None,
        },
        match_fields,
        fields,
        activities: Vec::new(),
        added_activity: None,
        custom_activity: None,
        programs: None,
        statuses: Vec::new(),
        lists: None,
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Returns the mapping file as commented TOML: a header, each field annotated with both sides'
/// types, and the fields left unmapped on each side listed at the end for the operator.
pub fn render_toml(file: &MappingFile, marketo: &ObjectSchema, crm: &ObjectSchema) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Proposed by `marketo-sync mappings suggest`: review every entry, then run"
    );
    let _ = writeln!(
        out,
        "# `marketo-sync validate`. Pairs come from known Marketo/CRM field names first,"
    );
    let _ = writeln!(out, "# then from name and label similarity.");
    let _ = writeln!(out);
    let _ = writeln!(out, "marketo_object = {}", quote(&file.marketo_object));
    let _ = writeln!(out, "crm_object = {}", quote(&file.crm_object));
    let _ = writeln!(
        out,
        "# Conflict policy when a field changed on both sides: crm_wins, marketo_wins, newest_wins."
    );
    let policy = match file.policy {
        Policy::CrmWins => "crm_wins",
        Policy::MarketoWins => "marketo_wins",
        Policy::NewestWins => "newest_wins",
    };
    let _ = writeln!(out, "policy = \"{policy}\"");
    if let Some(m) = &file.match_fields {
        let list: Vec<String> = m.iter().map(|s| quote(s)).collect();
        let _ = writeln!(
            out,
            "# Fields used to match new records before creating them."
        );
        let _ = writeln!(out, "match = [{}]", list.join(", "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "[keys]");
    let _ = writeln!(
        out,
        "# The Marketo field holding the CRM key (used as lookupField)."
    );
    match &file.keys.marketo_crm_key {
        Some(k) => {
            let _ = writeln!(out, "marketo_crm_key = {}", quote(k));
        }
        None => {
            let _ = writeln!(
                out,
                "# TODO: no candidate found; create a custom field in Marketo for the CRM id."
            );
            let _ = writeln!(out, "marketo_crm_key = \"\"");
        }
    }
    let _ = writeln!(out, "# The CRM field holding the Marketo id.");
    match &file.keys.crm_marketo_id {
        Some(k) => {
            let _ = writeln!(out, "crm_marketo_id = {}", quote(k));
        }
        None => {
            let _ = writeln!(
                out,
                "# TODO: no candidate found; add a column for the Marketo id to the CRM."
            );
            let _ = writeln!(out, "crm_marketo_id = \"\"");
        }
    }
    for f in &file.fields {
        let _ = writeln!(out);
        let mt = f
            .marketo
            .as_deref()
            .and_then(|n| marketo.field(n))
            .map(|d| d.ty.describe());
        let ct = f
            .crm
            .as_deref()
            .and_then(|n| crm.field(n))
            .map(|d| d.ty.describe());
        let _ = writeln!(
            out,
            "# {} -> {}",
            mt.unwrap_or_else(|| "?".into()),
            ct.unwrap_or_else(|| "?".into())
        );
        let _ = writeln!(out, "[[fields]]");
        if let Some(m) = &f.marketo {
            let _ = writeln!(out, "marketo = {}", quote(m));
        }
        if let Some(c) = &f.crm {
            let _ = writeln!(out, "crm = {}", quote(c));
        }
        let direction = match f.direction {
            Direction::Both => "both",
            Direction::ToCrm => "to_crm",
            Direction::ToMarketo => "to_marketo",
        };
        let _ = writeln!(out, "direction = \"{direction}\"");
    }
    let mapped_m: BTreeSet<&str> = file
        .fields
        .iter()
        .filter_map(|f| f.marketo.as_deref())
        .collect();
    let mapped_c: BTreeSet<&str> = file
        .fields
        .iter()
        .filter_map(|f| f.crm.as_deref())
        .collect();
    let rest_m: Vec<&str> = marketo
        .fields
        .iter()
        .map(|d| d.name.as_str())
        .filter(|n| !mapped_m.contains(n))
        .collect();
    let rest_c: Vec<&str> = crm
        .fields
        .iter()
        .map(|d| d.name.as_str())
        .filter(|n| !mapped_c.contains(n))
        .collect();
    if !rest_m.is_empty() || !rest_c.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "# Not mapped in Marketo ({}):", marketo.object);
        comment_list(&mut out, &rest_m);
        let _ = writeln!(out, "# Not mapped in the CRM ({}):", crm.object);
        comment_list(&mut out, &rest_c);
    }
    out
}

/// Writes names as comment lines of at most about 96 characters.
fn comment_list(out: &mut String, names: &[&str]) {
    let mut line = String::from("#  ");
    for name in names {
        if line.len() + name.len() > 96 && line.len() > 3 {
            let _ = writeln!(out, "{}", line.trim_end_matches(','));
            line = String::from("#  ");
        }
        line.push(' ');
        line.push_str(name);
        line.push(',');
    }
    if line.len() > 3 {
        let _ = writeln!(out, "{}", line.trim_end_matches(','));
    }
}

#[cfg(test)]
mod hubspot_names {
    use super::*;
    use crate::model::{FieldType, Side};

    fn schema(side: Side, object: &str, names: &[&str]) -> ObjectSchema {
        ObjectSchema {
            side,
            object: object.to_owned(),
            id_field: None,
            dedupe_fields: Vec::new(),
            fields: names
                .iter()
                .map(|n| FieldDef::new(*n, FieldType::Text { max_len: None }))
                .collect(),
        }
    }

    fn pairs(file: &MappingFile) -> Vec<(String, String)> {
        file.fields
            .iter()
            .map(|f| (f.marketo.clone().unwrap(), f.crm.clone().unwrap()))
            .collect()
    }

    #[test]
    fn marketo_and_hubspot_property_names_are_paired() {
        let lead = schema(
            Side::Marketo,
            "lead",
            &[
                "email",
                "firstName",
                "title",
                "leadStatus",
                "numberOfEmployees",
            ],
        );
        let contact = schema(
            Side::Crm,
            "contacts",
            &[
                "numemployees",
                "hs_lead_status",
                "jobtitle",
                "firstname",
                "email",
            ],
        );
        let got = pairs(&suggest(&lead, &contact));
        for want in [
            ("email", "email"),
            ("firstName", "firstname"),
            ("title", "jobtitle"),
            ("leadStatus", "hs_lead_status"),
            ("numberOfEmployees", "numemployees"),
        ] {
            assert!(
                got.contains(&(want.0.into(), want.1.into())),
                "{want:?} in {got:?}"
            );
        }
        let company = schema(
            Side::Marketo,
            "company",
            &["company", "website", "billingCity"],
        );
        let hs_company = schema(Side::Crm, "companies", &["city", "domain", "name"]);
        let got = pairs(&suggest(&company, &hs_company));
        assert_eq!(
            got,
            vec![
                ("company".into(), "name".into()),
                ("website".into(), "domain".into()),
                ("billingCity".into(), "city".into()),
            ]
        );
    }
}
