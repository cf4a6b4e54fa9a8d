//! The Marketo simulator and the demo CRM seed.

pub mod demo_crm;
