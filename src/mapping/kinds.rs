//! The Marketo object kinds a mapping file can name in `marketo_object`, in one registry.
//!
//! Everything that depends on the kind of a mapping file and not on its fields is answered here:
//! the names it is spelled with, how its Marketo schema is read (Describe Lead2, a standard
//! object's Describe, the fixed schema of programs and lists, a custom activity type, a custom
//! object's Describe), how long a stored schema is reused, whether a Marketo field holds the CRM
//! key, and its default match fields. The config checks, the compiler and the cycle's Describe
//! all ask [`MarketoKind::of`], so a new kind is one entry in [`KINDS`] plus its answers below.

use crate::marketo::describe::StandardObject;

/// What a mapping file's `marketo_object` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketoKind {
    /// Leads (persons).
    Lead,
    /// A standard object read through its own Describe (companies, opportunities, roles,
    /// salespersons).
    Standard(StandardObject),
    /// Programs.
    Program,
    /// Program membership.
    ProgramMember,
    /// Static list membership.
    StaticList,
    /// The activities file (Marketo activity types -> CRM rows).
    Activities,
    /// A custom activity type (CRM events -> Marketo).
    CustomActivity,
    /// A custom object, by its API name (any name not in [`KINDS`]).
    CustomObject,
}

/// How a kind's Marketo schema is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaSource {
    /// Describe Lead2.
    Lead,
    /// The standard object's Describe.
    Standard(StandardObject),
    /// Read by [`crate::marketo::Client::object_schema`], which knows the kind's own call (the
    /// fixed schemas of programs and lists, Describe Program Members, the custom activity
    /// type).
    Fixed,
    /// The custom object's Describe.
    CustomObject,
}

/// How long a stored Marketo schema of a kind is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaTtl {
    /// Described every cycle (the lead: its fields drift most, and a field removed must stop
    /// its writes at once).
    EveryCycle,
    /// Once a day (roles and salespersons change rarely).
    Daily,
    /// Per the `sync.marketo_schema_ttl_secs` setting.
    Setting,
}

/// The registry: every spelling of every kind but custom objects (any other name). Custom
/// activity schemas are named `custom_activity:<apiName>` (see
/// [`crate::config::custom_activity_schema_object`]) and found by their prefix.
pub const KINDS: &[(&str, MarketoKind)] = &[
    ("lead", MarketoKind::Lead),
    ("company", MarketoKind::Standard(StandardObject::Company)),
    (
        "opportunity",
        MarketoKind::Standard(StandardObject::Opportunity),
    ),
    (
        "opportunity_role",
        MarketoKind::Standard(StandardObject::OpportunityRole),
    ),
    (
        "opportunityRole",
        MarketoKind::Standard(StandardObject::OpportunityRole),
    ),
    (
        "salesperson",
        MarketoKind::Standard(StandardObject::SalesPerson),
    ),
    (
        "salesPerson",
        MarketoKind::Standard(StandardObject::SalesPerson),
    ),
    (super::programs::PROGRAM, MarketoKind::Program),
    (super::programs::PROGRAM_MEMBER, MarketoKind::ProgramMember),
    (super::lists::STATIC_LIST, MarketoKind::StaticList),
    (crate::config::ACTIVITIES, MarketoKind::Activities),
    (crate::config::CUSTOM_ACTIVITY, MarketoKind::CustomActivity),
];

impl MarketoKind {
    /// Returns the kind of a `marketo_object` value or a Marketo schema name.
    pub fn of(name: &str) -> MarketoKind {
        if let Some((_, kind)) = KINDS.iter().find(|(n, _)| *n == name) {
            return *kind;
        }
        match name.split_once(':') {
            Some((prefix, _)) if prefix == crate::config::CUSTOM_ACTIVITY => {
                MarketoKind::CustomActivity
            }
            _ => MarketoKind::CustomObject,
        }
    }

    /// Returns how the kind's Marketo schema is read. The activities file compiles against
    /// each activity type, not one schema; it answers [`SchemaSource::Fixed`].
    pub fn schema_source(self) -> SchemaSource {
        match self {
            MarketoKind::Lead => SchemaSource::Lead,
            MarketoKind::Standard(o) => SchemaSource::Standard(o),
            MarketoKind::Program
            | MarketoKind::ProgramMember
            | MarketoKind::StaticList
            | MarketoKind::Activities
            | MarketoKind::CustomActivity => SchemaSource::Fixed,
            MarketoKind::CustomObject => SchemaSource::CustomObject,
        }
    }

    /// Returns how long a stored schema of the kind is reused.
    pub fn schema_ttl(self) -> SchemaTtl {
        match self {
            MarketoKind::Lead => SchemaTtl::EveryCycle,
            MarketoKind::Standard(
                StandardObject::OpportunityRole | StandardObject::SalesPerson,
            ) => SchemaTtl::Daily,
            _ => SchemaTtl::Setting,
        }
    }

    /// Returns true when Marketo keys the kind's records by its own ids and no Marketo field
    /// holds the CRM key (`keys.marketo_crm_key` is not needed): programs, members, lists.
    pub fn keyed_by_marketo(self) -> bool {
        matches!(
            self,
            MarketoKind::Program | MarketoKind::ProgramMember | MarketoKind::StaticList
        )
    }

    /// Returns the match fields used when a mapping names none: `email` for leads.
    pub fn default_match_fields(self) -> &'static [&'static str] {
        match self {
            MarketoKind::Lead => &["email"],
            _ => &[],
        }
    }

    /// Returns true for a kind whose Marketo key field may be one of its own dedupe fields (a
    /// natural key such as a custom object's VIN): every kind but the lead.
    pub fn may_have_natural_key(self) -> bool {
        self != MarketoKind::Lead
    }
}

impl super::Plan {
    /// Returns the kind of Marketo object the plan maps.
    pub fn kind(&self) -> MarketoKind {
        MarketoKind::of(&self.marketo_object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_maps_to_its_kind_and_other_names_are_custom_objects() {
        assert_eq!(MarketoKind::of("lead"), MarketoKind::Lead);
        assert_eq!(
            MarketoKind::of("opportunityRole"),
            MarketoKind::of("opportunity_role")
        );
        assert_eq!(
            MarketoKind::of("salesPerson"),
            MarketoKind::Standard(StandardObject::SalesPerson)
        );
        assert_eq!(
            MarketoKind::of("custom_activity:purchase_c"),
            MarketoKind::CustomActivity
        );
        assert_eq!(MarketoKind::of("car_c"), MarketoKind::CustomObject);
        assert_eq!(MarketoKind::of("Lead"), MarketoKind::CustomObject);
    }

    #[test]
    fn each_standard_object_is_registered_under_its_schema_name() {
        for o in [
            StandardObject::Company,
            StandardObject::Opportunity,
            StandardObject::OpportunityRole,
            StandardObject::SalesPerson,
        ] {
            assert_eq!(MarketoKind::of(o.name()), MarketoKind::Standard(o));
        }
    }

    #[test]
    fn only_programs_members_and_lists_are_keyed_by_marketo() {
        let keyed: Vec<&str> = KINDS
            .iter()
            .filter(|(_, k)| k.keyed_by_marketo())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(keyed, ["program", "program_member", "static_list"]);
        assert!(!MarketoKind::CustomObject.keyed_by_marketo());
    }

    #[test]
    fn the_lead_is_described_every_cycle_roles_and_salespersons_daily() {
        assert_eq!(MarketoKind::Lead.schema_ttl(), SchemaTtl::EveryCycle);
        assert_eq!(
            MarketoKind::of("salesperson").schema_ttl(),
            SchemaTtl::Daily
        );
        assert_eq!(
            MarketoKind::of("opportunityRole").schema_ttl(),
            SchemaTtl::Daily
        );
        assert_eq!(MarketoKind::of("company").schema_ttl(), SchemaTtl::Setting);
        assert_eq!(MarketoKind::of("car_c").schema_ttl(), SchemaTtl::Setting);
    }
}
