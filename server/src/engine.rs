//! The server's engine: the shell around sync-core's server core (`protocol::server`), between
//! HTTP, the WebSocket and the store. It holds what the core reads — the store, the directory, a
//! bounded LRU cache of documents, the clock — and runs the core's writer on one thread
//! ([`crate::ingest`]). Blocking: the HTTP layer calls it from `web::block`, never on the async
//! executor.
//!
//! Ingests are serialized by the writer thread (a commit's seq must follow the last one, and
//! admission must see the state it commits on top of). Reads — feeds, coordinator queries — run
//! concurrently. The store is the truth: only the writer thread fills the cache, with a document
//! just committed, and it drops what it took if the commit failed.

use std::sync::{Arc, MutexGuard};

use lru::LruCache;
use sync_core::automerge::{Change, ChangeHash};
use sync_core::protocol::server::exchange::{self, Exchange};
use sync_core::protocol::server::{self as steps, load_working, writer, Judged, Working};
use sync_core::protocol::Position;
use sync_core::rules::HeldLimits;
use sync_core::{Principal, Report, ReportId, VillageCode};

use crate::audit::AuditEvent;
use crate::auth::Directory;
use crate::ingest::Ingestor;
use crate::shared::{Shared, SystemClock};
use crate::store::{FeedRow, Store, StoredDoc};

pub use crate::shared::Clock;

pub use sync_core::protocol::server::{EngineError, Via};

/// The engine.
pub struct Engine {
    shared: Arc<Shared>,
    ingestor: Ingestor,
    /// Reports per sync answer page (at most; a page also stops at 512 KiB).
    page_reports: usize,
}

/// How an engine is set up besides its store and directory.
#[derive(Clone)]
pub struct EngineOptions {
    /// Report documents kept in memory.
    pub cache_reports: usize,
    /// Reports per sync answer page (at most; a page also stops at 512 KiB).
    pub page_reports: usize,
    /// Bounds on changes held for their dependencies.
    pub held_limits: HeldLimits,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_reports: 2048,
            page_reports: steps::PAGE_REPORTS,
            held_limits: HeldLimits::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Engine {
    /// An engine over `store`, judging changes with the access `directory` gives their uploaders.
    /// Starts the writer thread.
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<Directory>,
        options: EngineOptions,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::new(
            store,
            directory,
            options.cache_reports,
            options.clock,
            options.held_limits,
        ));
        let ingestor = Ingestor::start(shared.clone())?;
        Ok(Engine {
            shared,
            ingestor,
            page_reports: options.page_reports.max(1),
        })
    }

    /// The directory of users and devices.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.shared.directory
    }

    /// Whether the writer thread answers within `timeout` (for `/healthz`).
    pub fn probe(&self, timeout: std::time::Duration) -> Result<(), EngineError> {
        self.ingestor.probe(timeout)
    }

    /// The server clock, unix ms.
    pub fn now(&self) -> i64 {
        self.shared.clock.now()
    }

    /// Notifications of committed reports, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<ReportId>>> {
        self.shared.committed.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    fn cache(&self) -> Result<MutexGuard<'_, LruCache<ReportId, Arc<Working>>>, EngineError> {
        self.shared.cache()
    }

    /// A report's working state, from the cache or else the store.
    ///
    /// Readers never put what they load into the cache: only the writer thread does, right after
    /// its commit. A reader's load can be older than a commit that finished meanwhile, and cached
    /// it would roll the document back under the next ingest.
    pub(crate) fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        if let Some(w) = self.cache()?.get(id) {
            return Ok(Some(w.clone()));
        }
        let Some(stored) = self.shared.store.load(id)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(load_working(id, &stored)?)))
    }

    /// Create the profile of every village that has none (first start). Deterministic documents:
    /// running it again, or on another server, makes the same bytes.
    pub fn seed_village_profiles(&self) -> Result<usize, EngineError> {
        let mut batches = Vec::new();
        for village in sync_core::all_villages() {
            let id = ReportId::village_profile(village.code);
            if self.shared.store.row(&id)?.is_none() {
                let (_, change) = Report::village_profile(village.code)
                    .map_err(|e| EngineError::Corrupt(id, e.to_string()))?;
                batches.push((id, vec![change]));
            }
        }
        let n = batches.len();
        if n > 0 {
            self.ingest(batches, &Arc::new(Principal::server()), Via::Server)?;
        }
        Ok(n)
    }

    /// Admit and durably commit changes (through the group-commit writer), each judged with the
    /// access of `principal`, who uploaded them. Returns the verdicts.
    pub fn ingest(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Arc<Principal>,
        via: Via,
    ) -> Result<Judged, EngineError> {
        self.ingestor.submit(batches, principal, via)
    }

    /// Durably append audit events (through the group commit).
    pub fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError> {
        self.ingestor.audit(events)
    }

    /// Answer one sync request (the body of `POST /api/v1/sync`) from `principal`, through the
    /// core's exchange; who downloaded what is on the audit trail before the answer leaves.
    pub fn sync(&self, body: &[u8], principal: &Arc<Principal>) -> Result<Vec<u8>, EngineError> {
        let answer = exchange::sync(self, body, principal, self.page_reports, self.now())?;
        if let Some(read) = answer.read {
            self.audit(vec![read])?;
        }
        Ok(answer.body)
    }
}

impl Exchange for Engine {
    fn ingest(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Arc<Principal>,
    ) -> Result<Judged, EngineError> {
        self.ingestor.submit(batches, principal, Via::Sync)
    }

    fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        Engine::working(self, id)
    }

    fn cached(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        Ok(self.cache()?.get(id).cloned())
    }

    fn stored(&self, id: &ReportId) -> Result<Option<StoredDoc>, EngineError> {
        Ok(self.shared.store.load(id)?)
    }

    fn feed_rows(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, EngineError> {
        Ok(self.shared.store.feed(village, position, limit)?)
    }
}

impl Engine {
    /// A coordinator's (or any API writer's) edit: made on the current state, then admitted and
    /// committed like any change, so it flows to devices on their next sync. `Ok(None)`: the edit
    /// changed nothing.
    ///
    /// `nonce` goes into the change (its message), so that nobody can predict the change's hash
    /// and pre-build changes on top of it: the shell passes fresh randomness.
    pub fn edit(
        &self,
        id: ReportId,
        edits: &[sync_core::Edit],
        writer: &sync_core::Writer,
        principal: &Arc<Principal>,
        nonce: [u8; 16],
    ) -> Result<Option<ChangeHash>, EngineError> {
        let working = self.working(&id)?;
        let Some(change) = writer::api_change(working.as_deref(), id, edits, writer, nonce)? else {
            return Ok(None);
        };
        let hash = change.hash();
        let judged = self.ingest(vec![(id, vec![change])], principal, Via::Api)?;
        writer::api_verdict(&judged, id, hash)?;
        Ok(Some(hash))
    }
}
