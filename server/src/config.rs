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
}

/// `serve` settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on. Until access control exists it must be a loopback address.
    #[arg(long, env = "DESA_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Directory holding the database (created if missing).
    #[arg(long, env = "DESA_DATA", default_value = "./data")]
    pub data: PathBuf,
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
