//! What can go wrong in a command, as the volunteer reads it, and the exit code it gives.

use sync_core::{ReportError, ReportId, ReportKind, VillageError};

use crate::store::StoreError;

/// Exit code when the server cannot be reached: scripts retry later, nothing was lost.
pub const EXIT_OFFLINE: i32 = 2;

/// Exit code of every other failure.
pub const EXIT_FAILURE: i32 = 1;

/// Why a command failed. Each message is meant to be shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store failed or is missing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No `--store`, no `DESA_STORE` and no `HOME`.
    #[error("no store path: pass --store PATH or set DESA_STORE (HOME is not set)")]
    NoStorePath,
    /// `init --village` with a code outside the working area.
    #[error(transparent)]
    Village(#[from] VillageError),
    /// `init --name` that cannot sign notes.
    #[error("device name must be 1 to 64 characters (it signs your notes), got {0:?}")]
    BadName(String),
    /// `init --server` that is not a usable URL.
    #[error("{0}")]
    BadServerUrl(String),
    /// `edit` with no edit.
    #[error("nothing to change: give --set, --add, --remove, --note or --append-narrative")]
    NothingToChange,
    /// `--narrative` on a kind without one.
    #[error("{0} reports have no narrative")]
    NoNarrative(ReportKind),
    /// `new` refused by the rules (the same the server runs); nothing was stored.
    #[error("cannot create the {kind}: {source}")]
    Create {
        /// The kind.
        kind: ReportKind,
        /// Why.
        source: ReportError,
    },
    /// `edit` refused by the rules; nothing was stored.
    #[error("cannot edit {id}: {source}")]
    Edit {
        /// The report.
        id: ReportId,
        /// Why.
        source: ReportError,
    },
    /// No such report in the store.
    #[error("no report {0} on this device")]
    NoSuchReport(ReportId),
    /// The server cannot be reached; everything is kept.
    #[error("offline: {waiting} changes waiting")]
    Offline {
        /// Changes in the outbox.
        waiting: usize,
    },
    /// The server refused the whole request; nothing changed.
    #[error("server refused the sync ({status}): {error}: {detail}")]
    ServerRefused {
        /// HTTP status.
        status: u16,
        /// Short error name.
        error: String,
        /// Explanation.
        detail: String,
    },
    /// The answer is not one this device can use; nothing changed.
    #[error("the server's answer could not be used (nothing was changed): {0}")]
    BadAnswer(String),
    /// Another `desa sync` committed while this one waited for the server; this answer is stale.
    #[error("another desa sync ran at the same time; nothing was changed by this one: sync again")]
    ConcurrentSync,
    /// stdout or stderr failed (a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Offline { .. } => EXIT_OFFLINE,
            _ => EXIT_FAILURE,
        }
    }
}
