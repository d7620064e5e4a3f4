//! What can go wrong in a command, as the volunteer reads it, and the exit code it gives.
//!
//! Every failure of `desa sync` keeps the device's changes, and its message says so.

use std::path::PathBuf;

use sync_core::{ReportError, ReportId, ReportKind, VillageError};

use crate::secrets::SecretError;
use crate::store::StoreError;

/// Exit code when the server cannot be reached or is busy: scripts retry later, nothing was lost.
pub const EXIT_OFFLINE: i32 = 2;

/// Exit code when the server refuses this device (token not accepted, or not permitted): retrying
/// will not help; the volunteer must contact the office.
pub const EXIT_ACCESS: i32 = 3;

/// Exit code of every other failure.
pub const EXIT_FAILURE: i32 = 1;

/// The end of every sync failure: what happened to the device's changes.
fn kept(waiting: &usize) -> String {
    match waiting {
        0 => "Nothing on this device was changed.".to_owned(),
        1 => "Your 1 change is kept on this device and will be sent later.".to_owned(),
        n => format!("Your {n} changes are kept on this device and will be sent later."),
    }
}

fn retry(after: &Option<u64>) -> String {
    match after {
        Some(secs) => format!("in {secs} seconds"),
        None => "in a few minutes".to_owned(),
    }
}

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
    /// The token or the passphrase could not be had.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `init --ca-file` with a file that is not a usable CA certificate; nothing was created.
    #[error("the CA file {path} cannot be used: {reason}; nothing was created")]
    BadCaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `init --ca-file` with an `http://` server, where it would never be used.
    #[error("--ca-file is for an https:// server; {0} is http://")]
    CaWithoutTls(String),
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
    /// 401: the server does not accept the device's token.
    #[error(
        "the server did not accept this device's token ({detail}); it may have been revoked: \
         contact the office for a new one and install it with `desa token set`. {}",
        kept(.waiting)
    )]
    Unauthorized {
        /// The server's explanation.
        detail: String,
        /// Changes in the outbox.
        waiting: usize,
    },
    /// 403: the device may not do what it asked.
    #[error(
        "the server does not permit this device to sync this ({detail}): contact the office. {}",
        kept(.waiting)
    )]
    Forbidden {
        /// The server's explanation.
        detail: String,
        /// Changes in the outbox.
        waiting: usize,
    },
    /// A store made before device tokens: it cannot sync until it has one.
    #[error(
        "this device has no token (its store was made by an older desa): ask the office for a \
         device token and install it with `desa token set`. {}", kept(.waiting)
    )]
    NoToken {
        /// Changes in the outbox.
        waiting: usize,
    },
    /// 413: a request larger than the server takes.
    #[error(
        "the server refused the sync as too large ({detail}): contact the office if this \
         happens again. {}", kept(.waiting)
    )]
    TooLarge {
        /// The server's explanation.
        detail: String,
        /// Changes in the outbox.
        waiting: usize,
    },
    /// 429: the server is busy; try again later.
    #[error("the server is busy: sync again {}. {}", retry(.retry_after), kept(.waiting))]
    RateLimited {
        /// The server's `Retry-After`, in seconds.
        retry_after: Option<u64>,
        /// Changes in the outbox.
        waiting: usize,
    },
    /// The secure connection failed (most often an untrusted certificate).
    #[error("secure connection to the server failed: {reason}. {}", kept(.waiting))]
    Tls {
        /// What failed, with advice.
        reason: String,
        /// Changes in the outbox.
        waiting: usize,
    },
    /// The server refused the whole request; nothing changed.
    #[error("server refused the sync ({status}): {error}: {detail}. {}", kept(.waiting))]
    ServerRefused {
        /// HTTP status.
        status: u16,
        /// Short error name.
        error: String,
        /// Explanation.
        detail: String,
        /// Changes in the outbox.
        waiting: usize,
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
            CliError::Offline { .. } | CliError::RateLimited { .. } => EXIT_OFFLINE,
            CliError::Unauthorized { .. }
            | CliError::Forbidden { .. }
            | CliError::NoToken { .. } => EXIT_ACCESS,
            _ => EXIT_FAILURE,
        }
    }
}
