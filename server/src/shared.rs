//! What the request threads and the writer thread share: the store, the directory, the cache of
//! documents, the commit notifications and the clock.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use sync_core::protocol::server::{EngineError, Working};
use sync_core::rules::HeldLimits;
use sync_core::ReportId;

use crate::auth::Directory;
use crate::store::Store;

/// Commit notifications a slow listener may fall behind by before it is told it lagged (and then
/// re-syncs everything it has open).
const COMMITTED_BACKLOG: usize = 1024;

/// The server's clock as the engine reads it: the system clock, or one a test drives.
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::clock::now_ms()
    }
}

/// What the request threads and the writer thread share: the store, the directory (whose
/// devices' access judges their changes), the document cache and the clock.
pub struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) directory: Arc<Directory>,
    cache: Mutex<LruCache<ReportId, Arc<Working>>>,
    /// After each commit: the reports it changed (live push to WebSocket peers).
    pub(crate) committed: tokio::sync::broadcast::Sender<Arc<Vec<ReportId>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) held_limits: HeldLimits,
    /// Actors known to be bound, and to whom (a binding never changes once committed): spares the
    /// writer a store lookup per group for the actors of apps that sync often.
    pub(crate) bound: Mutex<LruCache<sync_core::automerge::ActorId, String>>,
}

/// Bound actors remembered in memory.
const BOUND_ACTORS: usize = 65_536;

impl Shared {
    /// What the request threads and the writer thread share, over `store` and `directory`, with a
    /// cache of `cache_reports` documents.
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<Directory>,
        cache_reports: usize,
        clock: Arc<dyn Clock>,
        held_limits: HeldLimits,
    ) -> Shared {
        let capacity = NonZeroUsize::new(cache_reports.max(1)).unwrap_or(NonZeroUsize::MIN);
        let (committed, _) = tokio::sync::broadcast::channel(COMMITTED_BACKLOG);
        Shared {
            store,
            directory,
            cache: Mutex::new(LruCache::new(capacity)),
            committed,
            clock,
            held_limits,
            bound: Mutex::new(LruCache::new(
                NonZeroUsize::new(BOUND_ACTORS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub(crate) fn cache(
        &self,
    ) -> Result<MutexGuard<'_, LruCache<ReportId, Arc<Working>>>, EngineError> {
        self.cache.lock().map_err(|_| EngineError::Poisoned)
    }
}
