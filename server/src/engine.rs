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
use sync_core::protocol::{Bytes, Position, Rebuild, SyncRequest, SyncResponse, WireError};
use sync_core::rules::Verdict;
use sync_core::{Report, ReportId, ReportKind, VillageCode};

use crate::audit::{Action, AuditEvent};
use crate::auth::Principal;
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
}

/// A report's working state: the document and what the store keeps beside it.
#[derive(Clone, Default)]
pub struct Working {
    pub(crate) doc: Automerge,
    pub(crate) recent: steps::Recent,
    pub(crate) receipts: Vec<Receipt>,
    pub(crate) tail_len: usize,
    pub(crate) held: Vec<Change>,
    pub(crate) exists: bool,
}

/// What the request threads and the writer thread share: the store and the document cache.
pub struct Shared {
    pub(crate) store: Arc<dyn Store>,
    cache: Mutex<LruCache<ReportId, Arc<Working>>>,
    /// After each commit: the reports it changed (live push to WebSocket peers).
    pub(crate) committed: tokio::sync::broadcast::Sender<Arc<Vec<ReportId>>>,
}

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

/// Server clock, unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// An engine over `store`, caching up to `cache_reports` documents. Starts the writer thread.
    pub fn new(store: Arc<dyn Store>, cache_reports: usize) -> std::io::Result<Self> {
        let capacity = NonZeroUsize::new(cache_reports.max(1)).unwrap_or(NonZeroUsize::MIN);
        let (committed, _) = tokio::sync::broadcast::channel(COMMITTED_BACKLOG);
        let shared = Arc::new(Shared {
            store,
            cache: Mutex::new(LruCache::new(capacity)),
            committed,
        });
        let ingestor = Ingestor::start(shared.clone())?;
        Ok(Engine {
            shared,
            ingestor,
            page_reports: steps::PAGE_REPORTS,
        })
    }

    /// At most `n` reports per sync answer page (default [`steps::PAGE_REPORTS`], 500).
    pub fn with_page_reports(mut self, n: usize) -> Self {
        self.page_reports = n.max(1);
        self
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
            self.ingest(batches, &Principal::server(), Via::Server)?;
        }
        Ok(n)
    }

    /// Admit and durably commit changes (through the group-commit writer). Returns the verdicts.
    pub fn ingest(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Principal,
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
    pub fn sync(&self, body: &[u8], principal: &Principal) -> Result<Vec<u8>, EngineError> {
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
            if v.values().any(|v| matches!(v, Verdict::Refused(_))) {
                let snapshot = match self.working(id)? {
                    Some(w) if w.exists => w.doc.save(),
                    _ => Vec::new(),
                };
                rebuilds.push(Rebuild {
                    report: *id,
                    snapshot: Bytes(snapshot),
                });
            }
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
            self.audit(vec![AuditEvent::now(
                principal.who(),
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
    pub fn edit(
        &self,
        id: ReportId,
        edits: &[sync_core::Edit],
        writer: &sync_core::Writer,
        principal: &Principal,
    ) -> Result<Option<ChangeHash>, EngineError> {
        let working = self
            .working(&id)?
            .filter(|w| w.exists)
            .ok_or(EngineError::NotFound(id))?;
        let mut report = Report::from_doc(id, working.doc.clone())
            .map_err(|e| EngineError::Corrupt(id, e.to_string()))?;
        let change = match report.edit(edits, writer) {
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
        Automerge::load(&stored.snapshot).map_err(|e| corrupt(e.to_string()))?
    };
    let tail = parse_changes(&stored.tail).map_err(corrupt)?;
    let tail_len = tail.len();
    doc.apply_changes(tail)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Working {
        recent: steps::Recent::new(stored.last_seq),
        exists: stored.last_seq > 0,
        doc,
        receipts: stored.receipts.clone(),
        tail_len,
        held: parse_changes(&stored.held).map_err(corrupt)?,
    })
}

fn parse_changes(raw: &[Vec<u8>]) -> Result<Vec<Change>, String> {
    raw.iter()
        .map(|b| Change::from_bytes(b.clone()).map_err(|e| e.to_string()))
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
