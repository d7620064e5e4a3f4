//! Settings from flags and environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// desa-server: relays report changes between field devices and keeps the merged state.
#[derive(Debug, Parser)]
#[command(name = "desa-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the sync and coordinator API.
    Serve(Settings),
    /// Manage users (`user add`, `user list`).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage devices and their tokens (`device add`, `device revoke`).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Check the audit trail (`audit verify`).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// Where the database and its secrets are: shared by `serve` and the operator commands, which
/// work on the same database (also while the server runs).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// File recording the audit trail's latest entry, to detect removal of the newest entries.
    /// Keep it outside the data directory (default: `<data-dir>.audit-head`, its sibling).
    #[arg(long, env = "DESA_AUDIT_ANCHOR")]
    pub audit_anchor: Option<PathBuf>,
}

/// `desa-server user …`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: `user add NAME --role ROLE [--village CODE …]` (volunteers need villages).
    Add {
        /// Unique name.
        name: String,
        /// volunteer, coordinator, analyst or admin.
        #[arg(long)]
        role: sync_core::Role,
        /// A village (10-digit code) a volunteer reports from; repeat for several.
        #[arg(long = "village")]
        villages: Vec<String>,
        /// The database.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List users, their villages and devices.
    List {
        /// The database.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `desa-server device …`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Add a device for USER; its token is printed once, on the last line.
    Add {
        /// The user.
        user: String,
        /// The database.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a device: a running server refuses it within a second, open WebSockets included.
    Revoke {
        /// The device id (from `user list`).
        device: String,
        /// The database.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `desa-server audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every entry's seal and that the trail reaches its anchor.
    Verify {
        /// The database.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `serve` settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on. Until access control exists it must be a loopback address.
    #[arg(long, env = "DESA_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// The database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Largest accepted request body, in bytes (413 above it).
    #[arg(long, env = "DESA_MAX_BODY", default_value_t = 16 * 1024 * 1024)]
    pub max_body: usize,
    /// Report documents kept in memory (least recently used are dropped).
    #[arg(long, env = "DESA_CACHE_REPORTS", default_value_t = 2048)]
    pub cache_reports: usize,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "DESA_WORKERS")]
    pub workers: Option<usize>,
    /// Listen on a non-loopback address although there is no access control yet. Everyone who can
    /// reach the port can read and write every report: only for a closed, trusted network.
    #[arg(long)]
    pub insecure_allow_remote: bool,
}
