//! The Marketo REST and Bulk API client.

pub mod csv;
