//! # sync-core: the desa-sync report model and device–server exchange
//!
//! Pure logic — no network, disk, clock or randomness of its own (ids and times are passed in).
//! The server and the `desa` CLI are thin shells that move bytes between the network, their stores
//! and this crate.
//!
//! ## Data flow
//!
//! 1. A volunteer creates a [`Report`] (one automerge document per report, id = automerge-repo
//!    document id, [`ReportId`]). Its first change holds the fixed fields, `status: new` and every
//!    nested container ([`ReportKind::containers`]).
//! 2. Edits ([`Edit`]) are applied in one transaction and checked by the same admission rules the
//!    server runs ([`rules`]); a refused edit commits nothing.
//! 3. [`protocol::device::DeviceSync`] builds one [`protocol::SyncRequest`]: every change the server
//!    has not acknowledged, plus the device's position in each scope (its village).
//! 4. The server admits each report's batch ([`rules::admit`]) — verdicts per change: accepted,
//!    refused with a reason (and every change that depends on it), or held until its dependencies
//!    arrive — persists what was accepted, and answers in the same round trip with everything the
//!    device is missing ([`protocol::server`]).
//! 5. On a refusal the device rebuilds the report from the server's state and re-applies its other
//!    local edits as new changes ([`protocol::device::rebuild`]).
//!
//! Validation is of the merged state: schema ([`schema`], files in `schemas/`) plus the rules above.

pub mod audit;
pub mod edit;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
mod ids;
pub mod kind;
pub mod path;
pub mod protocol;
pub mod redact;
pub mod report;
pub mod rules;
pub mod schema;
pub mod sim;
pub mod store;
mod token;
pub mod view;
mod village;

pub use automerge;
pub use edit::{Edit, EditError};
pub use ids::{DeviceId, IdError, ReportId, SERVER_DEVICE, URL_PREFIX};
pub use kind::ReportKind;
pub use path::FieldPath;
pub use report::{NewReport, Report, ReportError, Writer};
pub use rules::{Access, Principal, Refusal, RefusalCode, Role, Verdict};
pub use token::{DeviceToken, TokenError, Verifier, TOKEN_PREFIX};
pub use village::{all_villages, DistrictCode, Village, VillageCode, VillageError};
