//! Building and running the server: `Application::build` binds (port 0 works: tests read the real
//! port from `port()`), resolves the master key, opens the encrypted store, creates the village
//! profiles, then `run_until_stopped` (over TLS when a certificate is given).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};

use crate::auth::{Directory, FailedAuth};
use std::path::PathBuf;

use crate::audit::AuditKey;
use crate::config::{Settings, StoreArgs};
use crate::engine::{Engine, EngineOptions};
use crate::http;
use crate::keys;
use crate::limit::Limits;
use crate::limit::{self, DeviceLimiter};
use crate::store::sqlite::{Encryption, SqliteStore};
use crate::store::StoreError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Refused configuration.
    #[error("{0}")]
    Config(String),
    /// The data directory or database could not be opened.
    #[error("opening the store at {path}: {source}")]
    Store {
        /// Database path.
        path: String,
        /// Why.
        source: crate::store::StoreError,
    },
    /// No master key.
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    /// The TLS certificate or key could not be loaded.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Creating the village profiles failed.
    #[error("creating village profiles: {0}")]
    Seed(#[from] crate::engine::EngineError),
    /// Binding the address failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Open (creating if needed) the encrypted database of `args`, with its audit trail sealed by the
/// key derived from the master key and anchored outside the data directory.
pub fn open_store(args: &StoreArgs) -> Result<(SqliteStore, PathBuf), StartError> {
    private_dir(&args.data).map_err(|e| {
        StartError::Config(format!(
            "creating data directory {}: {e}",
            args.data.display()
        ))
    })?;
    let (master, origin) =
        keys::resolve(args.key_file.as_deref(), args.env_key.as_ref(), &args.data)?;
    tracing::info!(key = %origin, "database key");
    let anchor = anchor_path(args)?;
    let db = args.data.join("desa.sqlite3");
    private_files(&db)
        .map_err(|e| StartError::Config(format!("making {} private: {e}", db.display())))?;
    let encryption = Encryption::Key(master.subkey(keys::SQLCIPHER_LABEL));
    let store = SqliteStore::open(&db, encryption)
        .map_err(|source| match source {
            // Already one sentence naming the file.
            e @ StoreError::WrongKey { .. } => StartError::Config(e.to_string()),
            source => StartError::Store {
                path: db.display().to_string(),
                source,
            },
        })?
        .with_audit(
            AuditKey::new(master.subkey(keys::AUDIT_LABEL)),
            Some(anchor),
        );
    // Again after opening: an upgrade may have written the file anew.
    private_files(&db)
        .map_err(|e| StartError::Config(format!("making {} private: {e}", db.display())))?;
    Ok((store, db))
}

/// The data directory, created (or tightened) to 0700 whatever the umask: it holds victims'
/// names.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "data directory was readable by others; now 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The database and SQLite's files beside it, 0600 whatever the umask. A new database file is
/// created empty with that mode first: SQLite gives its WAL and shared-memory files the mode of
/// the database.
fn private_files(db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn anchor_path(args: &StoreArgs) -> Result<PathBuf, StartError> {
    Ok(match &args.audit_anchor {
        Some(path) => path.clone(),
        None => keys::default_key_file(&args.data)?.with_extension("audit-head"),
    })
}

/// The audit key and anchor of `args` (for `audit verify`).
pub fn audit_key(args: &StoreArgs) -> Result<(AuditKey, PathBuf), StartError> {
    let (master, _) = keys::resolve(args.key_file.as_deref(), args.env_key.as_ref(), &args.data)?;
    Ok((
        AuditKey::new(master.subkey(keys::AUDIT_LABEL)),
        anchor_path(args)?,
    ))
}

/// How often the users and devices are re-read (a revocation takes effect within this).
const DIRECTORY_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Blocking threads per HTTP worker. A sync waiting for the group commit holds one, so this also
/// bounds how many syncs one worker can have in a commit at once (the commit takes up to 64).
const BLOCKING_THREADS: usize = 32;

/// A built, not yet running, server.
pub struct Application {
    port: u16,
    tls: bool,
    server: Server,
    /// Failed authentications not yet audited, and where to write them at shutdown.
    failures: (Arc<FailedAuth>, Arc<dyn crate::store::Store>),
}

impl Application {
    /// Open the store and bind.
    pub fn build(settings: &Settings) -> Result<Self, StartError> {
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(StartError::Config(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        if tls.is_none() && !settings.bind.ip().is_loopback() && !settings.insecure_allow_plaintext
        {
            return Err(StartError::Config(format!(
                "refusing to serve plain HTTP on {}: reports would cross the network readable by \
                 anyone on the path. Give a certificate with --tls-cert and --tls-key, use a \
                 loopback address, or pass --insecure-allow-plaintext on a closed, trusted network.",
                settings.bind
            )));
        }
        let (store, db) = open_store(&settings.store)?;
        let store: Arc<dyn crate::store::Store> = Arc::new(store);
        let directory =
            Arc::new(
                Directory::load(store.clone()).map_err(|source| StartError::Store {
                    path: db.display().to_string(),
                    source,
                })?,
            );
        if directory.is_empty() {
            tracing::warn!(
                "no users yet: create the first admin with `desa-server user add NAME --role admin` \
                 and give devices tokens with `desa-server device add NAME`"
            );
        }
        crate::auth::watch(directory.clone(), DIRECTORY_POLL)
            .map_err(|e| StartError::Config(format!("starting the directory watcher: {e}")))?;
        let failures = Arc::new(FailedAuth::new(
            settings.auth_fail_rate,
            settings.auth_fail_burst,
            settings.trusted_proxies.clone(),
        ));
        crate::auth::failures::flush_every(
            failures.clone(),
            store.clone(),
            std::time::Duration::from_secs(settings.auth_audit_interval),
        )
        .map_err(|e| StartError::Config(format!("starting the failure auditor: {e}")))?;
        let options = EngineOptions {
            cache_reports: settings.cache_reports,
            page_reports: usize::from(settings.page_reports),
            ..EngineOptions::default()
        };
        let engine = Engine::new(store.clone(), directory.clone(), options)
            .map_err(|e| StartError::Config(format!("starting the writer thread: {e}")))?;
        let created = engine.seed_village_profiles()?;
        if created > 0 {
            tracing::info!(created, "created village profiles");
        }
        let listener = TcpListener::bind(settings.bind).map_err(|source| StartError::Bind {
            addr: settings.bind,
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: settings.bind,
                source,
            })?
            .port();
        let engine = web::Data::new(engine);
        let directory = web::Data::from(directory);
        // The server's automerge-repo storage id: new at each start (peers then re-check what they
        // share with it once, rather than trust state from a server that may have been restored).
        let hub = web::Data::new(crate::ws::Hub::new(
            uuid::Uuid::new_v4().to_string(),
            crate::ws::WsLimits {
                per_device: settings.ws_per_device,
                total: settings.ws_total,
                ping: std::time::Duration::from_secs(settings.ws_ping),
                idle: std::time::Duration::from_secs(settings.ws_idle),
            },
        ));
        let failures_data = web::Data::from(failures.clone());
        let limits = web::Data::new(Limits {
            max_body: settings.max_body,
            max_message: settings.max_message,
        });
        // Per device, with its role's allowance: counted once a request is authenticated.
        let rate_limiter = web::Data::new(DeviceLimiter::new(
            settings.request_limits(),
            limit::DEFAULT_MAX_KEYS,
        ));
        let json_limit = settings.max_body;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::Compress::default())
                // Inside the logger, so that its 413s are logged too.
                .wrap(middleware::from_fn(limit::reject_oversized))
                // Method and path only: query strings may one day carry secrets.
                .wrap(middleware::Logger::new("%a \"%U\" %s %b %Dms"))
                .app_data(engine.clone())
                .app_data(hub.clone())
                .app_data(directory.clone())
                .app_data(limits.clone())
                .app_data(rate_limiter.clone())
                .app_data(failures_data.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(json_limit)
                        .error_handler(http::json_error),
                )
                .app_data(web::QueryConfig::default().error_handler(http::query_error))
                .configure(http::configure)
        });
        let tls_on = tls.is_some();
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config),
            None => server.listen(listener),
        };
        let mut server = server.map_err(|source| StartError::Bind {
            addr: settings.bind,
            source,
        })?;
        if let Some(workers) = settings.workers {
            server = server.workers(workers);
        }
        // Blocking work (the store, automerge, waiting for the group commit) runs on a bounded
        // pool per worker: hundreds of connections must not mean hundreds of threads (each with
        // its own allocator heap).
        server = server.worker_max_blocking_threads(BLOCKING_THREADS);
        tracing::info!(addr = %settings.bind, port, tls = tls_on, db = %db.display(), "desa-server listening");
        Ok(Application {
            port,
            tls: tls_on,
            server: server.run(),
            failures: (failures, store),
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Serve until SIGINT/SIGTERM.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let outcome = self.server.await;
        let (failures, store) = self.failures;
        crate::auth::failures::flush(&failures, store.as_ref());
        outcome
    }
}
