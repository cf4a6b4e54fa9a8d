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

/// Gives the C allocator one arena, once per process; called where a SQLite database is
/// opened (the state store, a SQLite CRM).
///
/// SQLite allocates with the C allocator (not [`ALLOCATOR`]), on the worker thread of each
/// pooled connection, and glibc gives every such thread an arena of its own that keeps what it
/// freed. With the store's 8 and the CRM's 5 connections (a SQLite CRM now has one), that was
/// most of what a bootstrap's peak memory held above the 150 MB target (issue 15): a
/// 300,000-lead bootstrap peaked at 142–147 MB with two arenas and 130 MB with one, at the
/// same engine CPU; 1,000,000 leads at 142–144 MB. Elsewhere than glibc this does nothing.
pub(crate) fn limit_c_malloc_arenas() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `mallopt` only sets an allocator parameter; glibc takes it at any time, from
        // any thread, and applies it to arenas created afterwards.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    });
}

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
