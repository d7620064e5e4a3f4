//! The server's work, between HTTP and the store: admitting changes (sync-core's rules), committing
//! them, and building what each device is missing. Blocking: the HTTP layer calls it from
//! `web::block`, never on the async executor.
//!
//! Ingests are serialized by one lock (a commit's seq must follow the last one, and admission must
//! see the state it commits on top of). Reads — feeds, coordinator queries — run concurrently.
//! Documents live in a bounded LRU cache; the store is the truth: only the writer thread fills
//! the cache, with a document just committed, and it drops what it took if the commit failed.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use sync_core::automerge::{Automerge, Change, ChangeHash};
use sync_core::protocol::server::{self as steps, FeedBuilder, Receipt};
use sync_core::protocol::{Position, SyncRequest, SyncResponse, WireError};
use sync_core::rules::Verdict;
use sync_core::{Report, ReportId, ReportKind, VillageCode};

use sync_core::rules::HeldLimits;
use sync_core::{DeviceId, Principal};

use crate::audit::{Action, AuditEvent, Who};
use crate::auth::Directory;
pub use crate::ingest::Via;
use crate::ingest::{Ingestor, Judged};
use crate::store::{ReportRow, Store, StoreError, StoredDoc};

/// Why the engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The request body is not a sync message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The request is well-formed but refused whole (unknown village…).
    #[error(transparent)]
    Plan(#[from] steps::PlanError),
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
    Refused(sync_core::Refusal),
    /// The edit itself is malformed.
    #[error("{0}")]
    BadEdit(String),
    /// The caller may not do this (a village outside their scope, a role that does not sync).
    #[error("{0}")]
    Forbidden(String),
    /// The server cannot take writes now (its writer thread failed); nothing was stored.
    #[error("{0}")]
    Unavailable(String),
}

/// A report's working state: the document and what the store keeps beside it.
#[derive(Clone, Default)]
pub struct Working {
    pub(crate) doc: Automerge,
    pub(crate) recent: steps::Recent,
    pub(crate) receipts: Vec<Receipt>,
    pub(crate) tail_len: usize,
    pub(crate) held: Vec<HeldChange>,
    pub(crate) exists: bool,
}

/// A change held for its dependencies, with the device that uploaded it.
#[derive(Clone, Debug)]
pub struct HeldChange {
    pub(crate) change: Change,
    pub(crate) device: DeviceId,
    /// When it was uploaded (server clock, unix ms).
    pub(crate) since: i64,
}

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
    pub(crate) fn cache(
        &self,
    ) -> Result<MutexGuard<'_, LruCache<ReportId, Arc<Working>>>, EngineError> {
        self.cache.lock().map_err(|_| EngineError::Poisoned)
    }
}

/// The engine.
pub struct Engine {
    shared: Arc<Shared>,
    ingestor: Ingestor,
    /// Reports per sync answer page (at most; a page also stops at 512 KiB).
    page_reports: usize,
}

/// Commit notifications a slow listener may fall behind by before it is told it lagged (and then
/// re-syncs everything it has open).
const COMMITTED_BACKLOG: usize = 1024;

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
        let capacity = NonZeroUsize::new(options.cache_reports.max(1)).unwrap_or(NonZeroUsize::MIN);
        let (committed, _) = tokio::sync::broadcast::channel(COMMITTED_BACKLOG);
        let shared = Arc::new(Shared {
            store,
            directory,
            cache: Mutex::new(LruCache::new(capacity)),
            committed,
            clock: options.clock,
            held_limits: options.held_limits,
            bound: Mutex::new(LruCache::new(
                NonZeroUsize::new(BOUND_ACTORS).unwrap_or(NonZeroUsize::MIN),
            )),
        });
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

    /// Answer one sync request (the body of `POST /api/v1/sync`) from `principal`: its uploads are
    /// judged with the principal's access, and only scopes (villages) it covers may be asked for.
    pub fn sync(&self, body: &[u8], principal: &Arc<Principal>) -> Result<Vec<u8>, EngineError> {
        let access = &principal.access;
        if !access.may_write() {
            return Err(EngineError::Forbidden(format!(
                "the {} role does not sync reports",
                access.role()
            )));
        }
        let request = SyncRequest::decode(body)?;
        let plan = steps::plan(&request)?;
        if let Some((_, village, _)) = plan.positions().iter().find(|(_, v, _)| !access.covers(*v))
        {
            return Err(EngineError::Forbidden(format!(
                "village {village} is not one of your villages"
            )));
        }
        let judged = if plan.reports().is_empty() {
            HashMap::new()
        } else {
            self.ingest(plan.reports().to_vec(), principal, Via::Sync)?
        };
        let verdicts = plan.verdicts(&judged);
        let mut rebuilds = Vec::new();
        for (id, v) in &judged {
            if !v.values().any(|v| matches!(v, Verdict::Refused(_))) {
                continue;
            }
            // Only what the caller may see: a report of another village, or one the server does
            // not have, gets no rebuild at all.
            let working = self.working(id)?;
            let doc = working.as_ref().filter(|w| w.exists).map(|w| &w.doc);
            rebuilds.extend(steps::rebuild_for(*id, doc, access, v));
        }
        rebuilds.sort_by_key(|r| r.report);
        let uploaded = plan.uploaded();
        let mut feeds = Vec::new();
        for (scope, village, position) in plan.positions() {
            feeds.push(self.feed(*scope, *village, *position, &uploaded)?);
        }
        let sent: Vec<String> = feeds
            .iter()
            .flat_map(|f| f.items.iter().map(|i| i.report.to_string()))
            .collect();
        if !sent.is_empty() {
            // Who downloaded which report, durably before the answer leaves. A sync with nothing
            // new writes nothing.
            self.audit(vec![AuditEvent::at(
                self.now(),
                Who::from(&**principal),
                Action::Read {
                    via: "sync".into(),
                    reports: sent,
                    redacted: false,
                },
            )])?;
        }
        Ok(SyncResponse {
            verdicts,
            rebuilds,
            feeds,
        }
        .encode())
    }

    fn feed(
        &self,
        scope: sync_core::protocol::Scope,
        village: VillageCode,
        position: Position,
        uploaded: &HashMap<ReportId, HashSet<ChangeHash>>,
    ) -> Result<sync_core::protocol::ScopeFeed, EngineError> {
        let none = HashSet::new();
        let rows = self
            .shared
            .store
            .feed(village, &position, self.page_reports + 1)?;
        let mut builder =
            FeedBuilder::with_limits(scope, position, self.page_reports, steps::PAGE_BYTES);
        let mut rows = rows.into_iter().peekable();
        while builder.has_room() {
            let Some(row) = rows.next() else { break };
            // A device with none of the report gets the stored bytes as they are: no automerge
            // work on the server for a new device's catch-up.
            let cached = self.cache()?.get(&row.id).cloned();
            let exclude = uploaded.get(&row.id).unwrap_or(&none);
            let knows_some = |receipts: &[Receipt]| {
                !exclude.is_empty() || receipts.iter().any(|r| r.seq <= position.since)
            };
            match cached {
                Some(w) if knows_some(&w.receipts) => {
                    builder.push_with_recent(
                        row.id,
                        row.last_seq,
                        &w.doc,
                        &w.receipts,
                        Some(&w.recent),
                        exclude,
                    );
                }
                Some(w) => builder.push_snapshot(row.id, row.last_seq, w.doc.save()),
                None => {
                    let Some(stored) = self.shared.store.load(&row.id)? else {
                        continue;
                    };
                    if knows_some(&stored.receipts) {
                        let working = load_working(&row.id, &stored)?;
                        builder.push(
                            row.id,
                            row.last_seq,
                            &working.doc,
                            &working.receipts,
                            exclude,
                        );
                    } else {
                        builder.push_snapshot(row.id, row.last_seq, stored.full_bytes());
                    }
                }
            }
        }
        Ok(builder.finish(rows.peek().is_some()))
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
        let working = self
            .working(&id)?
            .filter(|w| w.exists)
            .ok_or(EngineError::NotFound(id))?;
        let mut report = Report::from_doc(id, working.doc.clone())
            .map_err(|e| EngineError::Corrupt(id, e.to_string()))?;
        let message = format!("api {}", crate::audit::hex(&nonce));
        let change = match report.edit_with_message(edits, writer, Some(message)) {
            Ok(Some(change)) => change,
            Ok(None) => return Ok(None),
            Err(sync_core::ReportError::Refused(r)) => return Err(EngineError::Refused(r)),
            Err(e) => return Err(EngineError::BadEdit(e.to_string())),
        };
        let hash = change.hash();
        let judged = self.ingest(vec![(id, vec![change])], principal, Via::Api)?;
        match judged.get(&id).and_then(|v| v.get(&hash)) {
            Some(Verdict::Accepted) => Ok(Some(hash)),
            Some(Verdict::Refused(r)) => Err(EngineError::Refused(r.clone())),
            _ => Err(EngineError::BadEdit("the edit could not be applied".into())),
        }
    }
}

/// Load stored bytes into a working state. Stored bytes are checked like network bytes: a damaged
/// row is an error, never a panic.
pub(crate) fn load_working(id: &ReportId, stored: &StoredDoc) -> Result<Working, EngineError> {
    let corrupt = |e: String| EngineError::Corrupt(*id, e);
    let mut doc = if stored.snapshot.is_empty() {
        Automerge::new()
    } else {
        sync_core::guard::load(&stored.snapshot).map_err(|e| corrupt(e.to_string()))?
    };
    let tail = parse_changes(&stored.tail).map_err(corrupt)?;
    let tail_len = tail.len();
    sync_core::guard::apply(&mut doc, tail).map_err(|e| corrupt(e.to_string()))?;
    // A held row that no longer parses (it did when it was held) is dropped rather than making
    // the whole report unwritable: its device still has it and sends it again.
    let held = stored
        .held
        .iter()
        .filter_map(|row| match sync_core::guard::parse_change(row.bytes.clone()) {
            Ok(change) => Some(HeldChange {
                change,
                device: row.device,
                since: row.since,
            }),
            Err(e) => {
                tracing::warn!(report = %id, error = %e, "a held change does not parse; dropped");
                None
            }
        })
        .collect();
    Ok(Working {
        recent: steps::Recent::new(stored.last_seq),
        exists: stored.last_seq > 0,
        doc,
        receipts: stored.receipts.clone(),
        tail_len,
        held,
    })
}

fn parse_changes(raw: &[Vec<u8>]) -> Result<Vec<Change>, String> {
    raw.iter()
        .map(|b| sync_core::guard::parse_change(b.clone()).map_err(|e| e.to_string()))
        .collect()
}

/// The indexed row of a report from its merged JSON (already validated against its schema).
pub(crate) fn materialized_row(
    id: ReportId,
    state: &serde_json::Value,
    seq: u64,
    now: i64,
) -> Result<ReportRow, EngineError> {
    let corrupt =
        |what: &str| EngineError::Corrupt(id, format!("merged state has no valid {what}"));
    let text = |key: &str| state.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let kind: ReportKind = text("kind")
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| corrupt("kind"))?;
    let village = text("village")
        .and_then(|v| VillageCode::parse(&v).ok())
        .ok_or_else(|| corrupt("village"))?;
    Ok(ReportRow {
        id,
        kind,
        village,
        status: text("status"),
        title: text("title"),
        created_at: text("created_at").unwrap_or_default(),
        updated_at: now,
        last_seq: seq,
        json: state.to_string(),
    })
}
