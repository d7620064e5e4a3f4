//! The server's half of both exchanges — the HTTP sync and the automerge-repo peer protocol — as
//! pure code: inputs in, decisions and effects out. `desa-server` and the simulator
//! ([`crate::sim::MemoryServer`]) drive this one core; neither has an orchestration of its own.
//!
//! - [`writer`] admits groups of ingests (uploads, coordinators' edits, the server's own writes)
//!   and says what to commit: rows, changes, receipts, snapshots, held changes, bindings, audit.
//! - [`exchange`] answers one `POST /api/v1/sync` body: verdicts, rebuilds, feeds, and the read to
//!   audit before the answer leaves.
//! - [`peer`] is one automerge-repo connection's state machine: frames, commits and relayed
//!   ephemeral messages in; messages to send, relays and a close out.
//! - [`working`] is a report's state in memory, loaded from what a store keeps.
//! - [`steps`] are the exchange's smaller pieces (plan, verdicts, rebuilds, feeds, receipts).
//!
//! **What the core reads, and what it never does.** It reads the server's state through traits
//! the shell implements ([`writer::Lookup`], [`exchange::Exchange`], [`peer::PeerContext`]): the
//! store and the cache behind them are the shell's. It writes nothing: a commit, a message, an
//! audit entry are values it returns. It reads no clock and draws no randomness: `now` is passed
//! in, and so is the nonce of a coordinator's change.

pub mod exchange;
pub mod peer;
pub mod steps;
pub mod working;
pub mod writer;

use std::collections::HashMap;

use automerge::ChangeHash;

use crate::protocol::WireError;
use crate::rules::{Origin, Refusal, Verdict};
use crate::store::StoreError;
use crate::ReportId;

pub use steps::*;
pub use working::{load_working, materialized_row, HeldChange, Working};

/// Why the server could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The request body is not a sync message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The request is well-formed but refused whole (unknown village…).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Storage failed: nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored document does not load.
    #[error("stored report {0} does not load: {1}")]
    Corrupt(ReportId, String),
    /// A lock was poisoned by a panic in another request.
    #[error("internal state lock poisoned")]
    Poisoned,
    /// No such report.
    #[error("no report {0}")]
    NotFound(ReportId),
    /// The rules refused the edit; nothing was stored.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The edit itself is malformed.
    #[error("{0}")]
    BadEdit(String),
    /// The caller may not do this (a village outside their scope, a role that does not sync).
    #[error("{0}")]
    Forbidden(String),
    /// The server cannot take writes now (its writer failed); nothing was stored.
    #[error("{0}")]
    Unavailable(String),
}

/// Verdicts per report of one ingest.
pub type Judged = HashMap<ReportId, HashMap<ChangeHash, Verdict>>;

/// How changes arrived, for the rules and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /api/v1/sync`.
    Sync,
    /// The automerge-repo WebSocket.
    Ws,
    /// A coordinator's edit through the API (the server writes the change).
    Api,
    /// The server's own writes (village profiles, expiry of held changes).
    Server,
}

impl Via {
    /// As the audit trail names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Sync => "sync",
            Via::Ws => "ws",
            Via::Api => "api",
            Via::Server => "server",
        }
    }

    /// Where the rules take such a change to come from.
    pub fn origin(self) -> Origin {
        match self {
            Via::Sync | Via::Ws => Origin::Uploaded,
            Via::Api | Via::Server => Origin::Server,
        }
    }
}
