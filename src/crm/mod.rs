//! The `Crm` trait and its adapters.
