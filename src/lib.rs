//! marketo-sync keeps Adobe Marketo Engage and a CRM in step, both ways, unattended.
//!
//! # Layout
//!
//! Data flows one way through these modules: [`marketo`] and [`crm`] read raw records,
//! [`mapping`] turns them into canonical records, [`engine`] compares them with the last agreed
//! state from [`store`] and plans writes, [`mapping`] renders each write in the target's shape,
//! [`marketo`] and [`crm`] write, and [`store`] commits. Nothing below [`engine`] knows about the
//! other side.
//!
//! - [`model`]: the shared vocabulary (values, fields, object schemas).
//! - [`config`]: typed, layered settings and mapping files.
//! - [`marketo`]: the Marketo REST and Bulk client, its limiter and its CSV reader.
//! - [`crm`]: the `Crm` trait and its adapters (SQL first).
//! - [`mapping`]: compiles mapping files against both sides' schemas; canonical records, diffs.
//! - [`engine`]: the sync cycle, bootstrap, identity, conflicts, merges and deletes, quotas.
//! - [`store`]: the `StateStore` trait with PostgreSQL and SQLite implementations.
//! - [`http`]: the webhook receiver, health, metrics and the status page.
//! - [`sim`]: the Marketo simulator and the demo CRM seed, for tests, `demo` and `simulate`.
//! - [`converge`]: the convergence harness; it drives the simulator, the engine and the store
//!   from above (nothing in [`sim`] imports the engine).
//! - [`telemetry`]: logging set-up and typed events.
//! - [`app`]: the daemon (lease, cycle loop, on-demand worker, shutdown) and operator commands.
//! - [`cli`]: the command-line commands.

/// mimalloc instead of the system allocator, for every binary built on this crate (the
/// service, its tests and its benchmarks measure the same allocator): the per-record maps and
/// strings of a sync are many, small and short-lived.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod cli;
pub mod config;
pub mod converge;
pub mod crm;
pub mod engine;
pub mod http;
pub mod mapping;
pub mod marketo;
pub mod model;
pub mod sim;
pub mod store;
pub mod telemetry;
