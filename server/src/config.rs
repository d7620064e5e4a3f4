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
    /// Manage users (`user add`, `user set`, `user remove`, `user list`).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage devices and their tokens (`device add`, `device list`, `device revoke`).
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
    /// Directory holding the database (created if missing).
    #[arg(long, env = "DESA_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// File recording the audit trail's latest entry, to detect removal of the newest entries.
    /// Keep it outside the data directory (default: `<data-dir>.audit-head`, its sibling).
    #[arg(long, env = "DESA_AUDIT_ANCHOR")]
    pub audit_anchor: Option<PathBuf>,
    /// File holding the 64-hex-character master key that encrypts the database. Default: the
    /// environment's DESA_KEY, else `<data-dir>.key` beside the data directory (created on first
    /// start — back it up, and keep it off the data disk).
    #[arg(long, env = "DESA_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The master key as 64 hex characters, from the environment variable DESA_KEY only (a
    /// command-line value would be visible to every user of the machine).
    #[arg(skip = crate::keys::Secret::from_env("DESA_KEY"))]
    pub env_key: Option<crate::keys::Secret>,
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
    /// Change a user's role and villages: `user set NAME [--role ROLE] [--village CODE …]`.
    /// Open connections and sessions get the new access within a second.
    Set {
        /// The user.
        name: String,
        /// The new role (default: unchanged).
        #[arg(long)]
        role: Option<sync_core::Role>,
        /// The villages of a volunteer, replacing theirs (default: unchanged); repeat for several.
        #[arg(long = "village")]
        villages: Vec<String>,
        /// The database.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a user: every device of theirs is revoked; the name stays in history.
    Remove {
        /// The user.
        name: String,
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
    /// List devices (of one user), with their state.
    List {
        /// Only this user's devices.
        user: Option<String>,
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
    /// Address to listen on. Without TLS it must be a loopback address (see
    /// --insecure-allow-plaintext).
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
    /// Serve plain HTTP on a non-loopback address. Everyone on the network path can read the
    /// reports (and any token) in transit: only for a closed, trusted network.
    #[arg(long)]
    pub insecure_allow_plaintext: bool,
    /// TLS certificate chain (PEM, leaf first): serve HTTPS and WSS. Needs --tls-key.
    #[arg(long, env = "DESA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "DESA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Reports per sync answer page at most (a page also stops at 512 KiB); a device asks for the
    /// next page.
    #[arg(long, env = "DESA_PAGE_REPORTS", default_value_t = 500,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub page_reports: u16,
    /// Requests per second every device may make, sustained, whatever its role (429 above it);
    /// without it, each role has its own (see --role-limit).
    #[arg(long, env = "DESA_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,
    /// Requests every device may make at once after being idle, whatever its role.
    #[arg(long, env = "DESA_RATE_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: Option<u32>,
    /// One role's allowance, `ROLE=RATE[/BURST]` (repeatable, or comma-separated in the
    /// environment), over the defaults (volunteer 20/100, coordinator and analyst 100/1000,
    /// admin 20/100) and --rate-limit/--rate-burst.
    #[arg(long = "role-limit", env = "DESA_ROLE_LIMITS", value_delimiter = ',',
          value_parser = crate::limit::parse_role_limit)]
    pub role_limits: Vec<(sync_core::rules::Role, crate::limit::Allowance)>,
    /// Largest accepted WebSocket message, in bytes (the connection is closed with code 1009 above
    /// it).
    #[arg(long, env = "DESA_MAX_MESSAGE", default_value_t = sync_core::protocol::repo::MAX_MESSAGE_BYTES)]
    pub max_message: usize,
    /// Failed authentications a client address may make at once (then --auth-fail-rate a
    /// second); above it, 429 with Retry-After. Valid tokens are always served.
    #[arg(long, env = "DESA_AUTH_FAIL_BURST", default_value_t = crate::auth::failures::DEFAULT_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_fail_burst: u32,
    /// Failed authentications per second a client address may make, sustained.
    #[arg(long, env = "DESA_AUTH_FAIL_RATE", default_value_t = crate::auth::failures::DEFAULT_RATE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_fail_rate: u32,
    /// Seconds over which failed authentications are counted into one audit entry per address.
    #[arg(long, env = "DESA_AUTH_AUDIT_INTERVAL", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub auth_audit_interval: u64,
    /// The address of a TLS proxy in front of the server (repeatable, or comma-separated in the
    /// environment): for requests from it, the client address is taken from X-Forwarded-For.
    #[arg(
        long = "trusted-proxy",
        env = "DESA_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Open WebSocket connections one device may have (a new one above it is refused with 429).
    #[arg(long, env = "DESA_WS_PER_DEVICE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_per_device: u32,
    /// Open WebSocket connections in all (a new one above it is refused with 503).
    #[arg(long, env = "DESA_WS_TOTAL", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_total: u32,
    /// Seconds between the server's pings on an idle WebSocket.
    #[arg(long, env = "DESA_WS_PING", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_ping: u64,
    /// Seconds without any frame from a peer (not even a pong) after which its WebSocket is
    /// closed: a phone that lost its signal stops holding a connection slot.
    #[arg(long, env = "DESA_WS_IDLE", default_value_t = 45,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub ws_idle: u64,
}

impl Settings {
    /// The request allowance of each role: the defaults, then --rate-limit/--rate-burst for every
    /// role, then each --role-limit.
    pub fn request_limits(&self) -> crate::limit::RoleLimits {
        let mut limits = crate::limit::RoleLimits::default();
        for role in sync_core::rules::Role::ALL {
            let allowance = limits.of_mut(role);
            if let Some(rate) = self.rate_limit {
                allowance.rate = rate;
            }
            if let Some(burst) = self.rate_burst {
                allowance.burst = burst;
            }
        }
        for (role, allowance) in &self.role_limits {
            *limits.of_mut(*role) = *allowance;
        }
        limits
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::limit::{Allowance, RoleLimits};

    fn serve(args: &[&str]) -> Settings {
        let cli = Cli::try_parse_from(["desa-server", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(settings) => settings,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_limits_are_the_defaults_then_every_role_then_each_role() {
        assert_eq!(serve(&[]).request_limits(), RoleLimits::default());
        let limits = serve(&[
            "--rate-limit",
            "5",
            "--role-limit",
            "coordinator=50/60",
            "--role-limit",
            "analyst=7",
        ])
        .request_limits();
        assert_eq!(limits.volunteer, Allowance::new(5, 100));
        assert_eq!(limits.admin, Allowance::new(5, 100));
        assert_eq!(limits.coordinator, Allowance::new(50, 60));
        assert_eq!(limits.analyst, Allowance::new(7, 35));
        let refused = Cli::try_parse_from(["desa-server", "serve", "--role-limit", "chief=1"]);
        assert!(refused.unwrap_err().to_string().contains("unknown role"));
    }
}
