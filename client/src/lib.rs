//! # desa: the field volunteer's offline tool
//!
//! Everything works without a connection; `desa sync` exchanges with the server when there is one.
//!
//! ## Data flow
//!
//! 1. `desa new` / `desa edit` parse their arguments into sync-core [`Edit`](sync_core::Edit)s
//!    ([`args`], [`cli`]), apply them to the report with
//!    [`Report::create`](sync_core::Report::create) / [`Report::edit`](sync_core::Report::edit) —
//!    which run the server's own admission rules, so a refused edit stores nothing — and store the
//!    document together with the new change in the outbox, in one transaction ([`store`]).
//! 2. `desa sync` ([`commands::sync`]) sends the outbox and the device's positions as one request
//!    through a [`Transport`](transport::Transport) (HTTP in the binary, an in-process server in
//!    tests), and takes the answer in with sync-core's
//!    [`absorb`](sync_core::protocol::absorb::absorb) over the SQLite store
//!    ([`store::StoreTx`] implements its `DeviceStore`), committing the answer's effects and the new
//!    positions together.
//! 3. `desa show` / `list` / `status` read the store.
//!
//! Time is read once per command ([`clock::Now`]) and passed down.
//!
//! ## On 2G
//!
//! A no-op sync is a few dozen bytes each way. A long catch-up is paged by the server (at most 4
//! MiB per page); at 2G speeds a full page can take minutes, longer than the
//! [request timeout](transport::REQUEST_TIMEOUT), in which case `desa sync` reports the device
//! offline and keeps everything. Rounds already committed stay committed, so the next attempt
//! continues where it stopped.
//!
//! The server currently sends a report the device has just created back to it whole, in the same
//! answer (sync-core's feed leaves out the device's own changes only when the device's position is
//! at or after the report's first receipt). Taking it in changes nothing, and `desa sync` counts as
//! "received" only reports that are new or changed on the device.

pub mod args;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod error;
pub mod output;
pub mod store;
pub mod transport;

pub use cli::Cli;
pub use clock::Now;
pub use error::CliError;
pub use store::Store;
