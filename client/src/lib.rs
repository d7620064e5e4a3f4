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
//! ## Access and protection at rest
//!
//! `desa init` takes the device token the office issued ([`secrets`]: a file, `DESA_TOKEN` or a
//! prompt, never a command-line value); the token's device becomes the store's own id and
//! automerge actor, and every request shows the token ([`transport`]). `desa token set`
//! ([`commands::token`]) installs a new token, read the same way, keeping everything the store
//! holds; the store then keeps its actor and syncs as the new token's device. The store is a
//! SQLCipher database keyed from the volunteer's passphrase with argon2id ([`store::crypt`]), so a
//! lost phone does not give away the names in its reports.
//!
//! ## On 2G
//!
//! A no-op sync is a few dozen bytes each way. Uploads are split into requests of at most 1 MiB of
//! changes ([`UPLOAD_BYTES`](sync_core::protocol::device::UPLOAD_BYTES)) and the server pages a long
//! catch-up at 512 KiB, so at 2G speeds (40–100 kbit/s) each round trip fits well inside the
//! [request timeout](transport::REQUEST_TIMEOUT) and `desa sync` shows progress round by round.
//! A round cut short is reported as offline and changes nothing; rounds already committed stay
//! committed, so the next attempt continues where it stopped.

pub mod args;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod error;
pub mod output;
pub mod secrets;
pub mod store;
pub mod transport;

pub use cli::Cli;
pub use clock::Now;
pub use error::CliError;
pub use store::Store;
