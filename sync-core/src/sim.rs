//! In-memory shells around the exchange: a [`MemoryServer`] that drives the server's core
//! ([`crate::protocol::server`]: the writer, the sync exchange and the automerge-repo peer, the code
//! `desa-server` ships) over the reference store, and a [`MemoryDevice`] that runs the device steps.
//! They hold everything in memory and exchange *encoded bytes*, so scenario and property tests, the
//! fuzz targets and the benchmark exercise the real wire format over a simulated network.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use automerge::{ActorId, Automerge, Change, ChangeHash};

use crate::audit::AuditEvent;
use crate::protocol::absorb::{absorb, DeviceStore, RecordedRefusal};
use crate::protocol::device::{DeviceSync, UPLOAD_BYTES};
use crate::protocol::server::working::load_working;
use crate::protocol::server::writer::{self, Job};
use crate::protocol::server::{self as steps, exchange, peer, EngineError, Judged, Via, Working};
use crate::protocol::{Position, Scope, SyncRequest, SyncResponse, WireError};
use crate::rules::{self, Access, Actors, HeldLimits, Principal, Role, Verdict};
use crate::schema::Schemas;
use crate::store::memory::MemoryStore;
use crate::store::{AuditStore, Commit, DirectoryStore, FeedRow, ReportStore, StoredDoc};
use crate::{
    DeviceId, Edit, NewReport, Report, ReportError, ReportId, ReportKind, VillageCode, Writer,
};

/// The writer a volunteer's device uses for its reports (actor generation 0, a fixed clock).
pub fn volunteer(device: DeviceId) -> Writer {
    Writer {
        actor: device.actor(0),
        role: Role::Volunteer,
        time: 1_764_316_800,
    }
}

/// The fields of a minimal valid incident besides the fixed ones: a category and `title`.
pub fn sample_fields(title: &str) -> [Edit; 2] {
    [
        Edit::Set {
            path: crate::FieldPath::root("category"),
            value: "other".into(),
        },
        Edit::Set {
            path: crate::FieldPath::root("title"),
            value: title.into(),
        },
    ]
}

/// A minimal valid incident of village 6302010001 written by `device`: the report and its first
/// change. A fixture for tests, benchmarks and fuzz targets.
pub fn sample_incident(
    id: ReportId,
    device: DeviceId,
    title: &str,
) -> Result<(Report, Change), ReportError> {
    let village =
        VillageCode::parse("6302010001").map_err(|e| ReportError::NotAReport(e.to_string()))?;
    let new = NewReport {
        kind: ReportKind::Incident,
        village,
        created_at: "2026-11-28T08:00:00Z".into(),
        created_by: device.to_string(),
    };
    Report::create(id, &new, &sample_fields(title), &volunteer(device))
}

/// The server, all in memory: the core of [`crate::protocol::server`] — the same writer, exchange
/// and peer state machine `desa-server` runs — over a [`MemoryStore`], with a cache that holds
/// every report. The simulated network has no tokens: each device that syncs is a volunteer of
/// every village and a person of its own, unless [`MemoryServer::one_person`] says otherwise.
pub struct MemoryServer {
    store: MemoryStore,
    cache: RefCell<HashMap<ReportId, Arc<Working>>>,
    /// Devices that have synced, and whose they are.
    devices: RefCell<HashMap<DeviceId, String>>,
    /// Changes refused per (peer, report), across a peer's connections.
    refused: RefCell<HashMap<(String, ReportId), HashSet<ChangeHash>>>,
    /// Reports committed since [`MemoryServer::take_committed`] last ran.
    committed: RefCell<Vec<ReportId>>,
    clock_ms: Cell<i64>,
    /// Page size of feeds (small values exercise paging).
    pub page_limit: Option<usize>,
    person: Option<String>,
    limits: HeldLimits,
    /// The schemas it judges with (`None`: the shipped ones).
    schemas: Option<Arc<Schemas>>,
}

impl Default for MemoryServer {
    fn default() -> Self {
        MemoryServer {
            store: MemoryStore::new(),
            cache: RefCell::default(),
            devices: RefCell::default(),
            refused: RefCell::default(),
            committed: RefCell::default(),
            clock_ms: Cell::new(0),
            page_limit: None,
            person: None,
            limits: HeldLimits::default(),
            schemas: None,
        }
    }
}

/// An in-memory directory for the authorship rules: which person owns which device, and the actors
/// bound to their first uploader. The simulator's; tests use it too.
#[derive(Debug, Default)]
pub struct Book {
    devices: HashMap<DeviceId, String>,
    bound: HashMap<ActorId, String>,
}

impl Book {
    /// Record that `device` belongs to `user` (a device of the office).
    pub fn enrol(&mut self, device: DeviceId, user: &str) {
        self.devices.insert(device, user.to_owned());
    }

    /// Record the bindings an admission made.
    pub fn bind(&mut self, bindings: &[rules::Binding]) {
        for b in bindings {
            self.bound.insert(b.actor.clone(), b.user.clone());
        }
    }
}

impl Actors for Book {
    fn device_owner(&self, device: DeviceId) -> Option<String> {
        self.devices.get(&device).cloned()
    }

    fn actor_owner(&self, actor: &ActorId) -> Option<String> {
        self.bound.get(actor).cloned()
    }
}

/// The principal the simulator gives a device: a volunteer of every village, its own person.
pub fn device_principal(device: DeviceId) -> Principal {
    Principal {
        user: device.to_string(),
        device,
        access: Access::everywhere(Role::Volunteer),
    }
}

impl MemoryServer {
    /// An empty server.
    pub fn new() -> Self {
        Self::default()
    }

    /// A server that has created the profile of each of `villages`, as the real server does on its
    /// first start.
    pub fn with_village_profiles(villages: &[VillageCode]) -> Self {
        let server = Self::new();
        let principal = Arc::new(Principal::server());
        let batches = villages
            .iter()
            .filter_map(|v| Report::village_profile(*v).ok())
            .map(|(report, change)| (report.id(), vec![change]))
            .collect();
        let _ = server.write(Job::ingest(batches, principal, Via::Server));
        server
    }

    /// A server that judges with `schemas` (a newer version than the shipped ones, in tests of
    /// schema evolution).
    pub fn with_schemas(schemas: Schemas) -> Self {
        MemoryServer {
            schemas: Some(Arc::new(schemas)),
            ..Self::default()
        }
    }

    /// Every device that syncs is a device of one person, `user` (a shell standing in for one
    /// volunteer's phones: a re-tokened phone keeps its actor).
    pub fn one_person(mut self, user: &str) -> Self {
        self.person = Some(user.to_owned());
        self
    }

    /// A stored report's state.
    pub fn report(&self, id: &ReportId) -> Option<Arc<Working>> {
        self.cache.borrow().get(id).filter(|w| w.exists).cloned()
    }

    /// Every stored report id, in order.
    pub fn report_ids(&self) -> Vec<ReportId> {
        let cache = self.cache.borrow();
        let mut ids: Vec<ReportId> = cache
            .iter()
            .filter(|(_, w)| w.exists)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// The store underneath (what it committed: rows, changes, the audit trail).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Reports committed since the last call (what the real server tells its live connections).
    pub fn take_committed(&self) -> Vec<ReportId> {
        std::mem::take(&mut *self.committed.borrow_mut())
    }

    /// The simulated clock: one millisecond per step.
    pub fn now(&self) -> i64 {
        self.clock_ms.get()
    }

    fn tick(&self) -> i64 {
        self.clock_ms.set(self.clock_ms.get() + 1);
        self.clock_ms.get()
    }

    /// The principal of a device that syncs (enrolled on first sight).
    pub fn principal(&self, device: DeviceId) -> Arc<Principal> {
        let mut principal = device_principal(device);
        if let Some(user) = &self.person {
            principal.user = user.clone();
        }
        self.devices
            .borrow_mut()
            .entry(device)
            .or_insert_with(|| principal.user.clone());
        Arc::new(principal)
    }

    /// One group of one job, through the core's writer.
    fn write(&self, job: Job) -> Result<Judged, EngineError> {
        let now = self.tick();
        let settled = writer::write(self, std::slice::from_ref(&job), self.limits, now);
        let mut cache = self.cache.borrow_mut();
        for (id, working) in settled.workings {
            cache.insert(id, Arc::new(working));
        }
        self.committed.borrow_mut().extend(settled.changed);
        settled
            .answers
            .into_iter()
            .next()
            .map_or_else(|| Ok(Judged::new()), |(_, answer)| answer)
    }

    /// A coordinator's edit through the API: an ordinary change that flows to devices.
    pub fn coordinator_edit(
        &mut self,
        id: ReportId,
        edits: &[Edit],
        writer: &Writer,
    ) -> Result<Option<Change>, ReportError> {
        let to_report_error = |e: EngineError| match e {
            EngineError::Refused(r) => ReportError::Refused(r),
            e => ReportError::NotAReport(e.to_string()),
        };
        let nonce = (self.now() as u128).to_le_bytes();
        let working = self.report(&id);
        let Some(change) = writer::api_change(working.as_deref(), id, edits, writer, nonce)
            .map_err(to_report_error)?
        else {
            return Ok(None);
        };
        let device =
            DeviceId::from_actor(&writer.actor).map_or(crate::SERVER_DEVICE, |(device, _)| device);
        let by = Arc::new(Principal {
            user: "office".into(),
            device,
            access: Access::everywhere(writer.role),
        });
        let judged = self
            .write(Job::ingest(vec![(id, vec![change.clone()])], by, Via::Api))
            .map_err(to_report_error)?;
        writer::api_verdict(&judged, id, change.hash()).map_err(to_report_error)?;
        Ok(Some(change))
    }

    /// Answer one encoded sync request, through the core's exchange.
    pub fn handle(&mut self, body: &[u8]) -> Result<Vec<u8>, EngineError> {
        let request = SyncRequest::decode(body)?;
        let principal = self.principal(request.device);
        let page = self.page_limit.unwrap_or(steps::PAGE_REPORTS);
        let now = self.tick();
        let answer = exchange::sync(&*self, body, &principal, page, now)?;
        if let Some(read) = answer.read {
            self.store.append_audit(&[read])?;
        }
        Ok(answer.body)
    }
}

impl writer::Lookup for MemoryServer {
    fn take(&self, id: &ReportId) -> Result<Working, EngineError> {
        if let Some(w) = self.cache.borrow_mut().remove(id) {
            return Ok(Arc::try_unwrap(w).unwrap_or_else(|shared| (*shared).clone()));
        }
        match self.store.load(id)? {
            Some(stored) => load_working(id, &stored),
            None => Ok(Working::default()),
        }
    }

    fn principal_of(&self, device: DeviceId) -> Option<Arc<Principal>> {
        let user = self.devices.borrow().get(&device).cloned()?;
        let mut principal = device_principal(device);
        principal.user = user;
        Some(Arc::new(principal))
    }

    fn device_owner(&self, device: DeviceId) -> Option<String> {
        self.devices.borrow().get(&device).cloned()
    }

    fn actor_owners(&self, actors: &[ActorId]) -> Result<HashMap<ActorId, String>, EngineError> {
        let raw: Vec<Vec<u8>> = actors.iter().map(|a| a.to_bytes().to_vec()).collect();
        Ok(self
            .store
            .actor_owners(&raw)?
            .into_iter()
            .map(|(actor, user)| (ActorId::from(actor), user))
            .collect())
    }

    fn schemas(&self) -> &Schemas {
        self.schemas.as_deref().unwrap_or(Schemas::builtin())
    }

    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, EngineError> {
        Ok(self.store.held_usage(devices)?)
    }
}

impl writer::Commits for MemoryServer {
    fn last_seq(&self) -> Result<u64, EngineError> {
        Ok(self.store.last_seq()?)
    }

    fn commit(&self, commit: &Commit) -> Result<(), EngineError> {
        Ok(self.store.commit(commit)?)
    }
}

impl exchange::Exchange for MemoryServer {
    fn ingest(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Arc<Principal>,
    ) -> Result<Judged, EngineError> {
        self.write(Job::ingest(batches, principal.clone(), Via::Sync))
    }

    fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        if let Some(w) = self.cache.borrow().get(id) {
            return Ok(Some(w.clone()));
        }
        match self.store.load(id)? {
            Some(stored) => Ok(Some(Arc::new(load_working(id, &stored)?))),
            None => Ok(None),
        }
    }

    fn cached(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        Ok(self.cache.borrow().get(id).cloned())
    }

    fn stored(&self, id: &ReportId) -> Result<Option<StoredDoc>, EngineError> {
        Ok(self.store.load(id)?)
    }

    fn feed_rows(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, EngineError> {
        Ok(self.store.feed(village, position, limit)?)
    }
}

impl peer::PeerContext for MemoryServer {
    fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError> {
        exchange::Exchange::working(self, id)
    }

    fn ingest(
        &self,
        report: ReportId,
        changes: Vec<Change>,
        principal: &Arc<Principal>,
    ) -> Result<HashMap<ChangeHash, Verdict>, EngineError> {
        let mut judged = self.write(Job::ingest(
            vec![(report, changes)],
            principal.clone(),
            Via::Ws,
        ))?;
        Ok(judged.remove(&report).unwrap_or_default())
    }

    fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError> {
        Ok(self.store.append_audit(&events)?)
    }

    fn sync_states(&self, storage: &str) -> Result<Vec<(ReportId, Vec<u8>)>, EngineError> {
        Ok(self.store.peer_sync_states(storage)?)
    }

    fn refused(&self, peer: &str, report: ReportId) -> HashSet<ChangeHash> {
        let refused = self.refused.borrow();
        refused
            .get(&(peer.to_owned(), report))
            .cloned()
            .unwrap_or_default()
    }

    fn remember_refused(&self, peer: &str, report: ReportId, hashes: &[ChangeHash]) {
        let mut refused = self.refused.borrow_mut();
        let entry = refused.entry((peer.to_owned(), report)).or_default();
        entry.extend(hashes.iter().copied());
    }
}

/// A device store, all in memory.
#[derive(Debug, Clone)]
pub struct MemoryDevice {
    /// Sync state.
    pub sync: DeviceSync,
    village: VillageCode,
    reports: BTreeMap<ReportId, Automerge>,
    generations: HashMap<ReportId, u32>,
    outbox: BTreeMap<ReportId, Vec<Change>>,
    /// Refusals shown to the volunteer.
    pub refusals: Vec<RecordedRefusal>,
    clock: i64,
    next_id: u64,
}

/// Why a device-side sync step failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Bad response bytes.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A response that does not fit the request.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::device::ProtocolError),
    /// The outcome could not be taken into the store.
    #[error("absorbing the answer: {0}")]
    Absorb(String),
    /// The server refused the whole request.
    #[error("server refused the request: {0}")]
    Refused(String),
}

impl DeviceStore for MemoryDevice {
    type Error = std::convert::Infallible;

    fn load(&mut self, id: ReportId) -> Result<Option<Automerge>, Self::Error> {
        Ok(self.reports.get(&id).cloned())
    }

    fn store(&mut self, id: ReportId, doc: &Automerge) -> Result<(), Self::Error> {
        self.reports.insert(id, doc.clone());
        Ok(())
    }

    fn forget(&mut self, id: ReportId) -> Result<(), Self::Error> {
        self.reports.remove(&id);
        Ok(())
    }

    fn unacknowledged(&mut self, id: ReportId) -> Result<Vec<Change>, Self::Error> {
        Ok(self.outbox.get(&id).cloned().unwrap_or_default())
    }

    fn acknowledge(&mut self, changes: &[(ReportId, ChangeHash)]) -> Result<(), Self::Error> {
        let acked: HashSet<(ReportId, ChangeHash)> = changes.iter().copied().collect();
        for (report, queue) in self.outbox.iter_mut() {
            queue.retain(|c| !acked.contains(&(*report, c.hash())));
        }
        Ok(())
    }

    fn requeue(&mut self, id: ReportId, change: Change) -> Result<(), Self::Error> {
        let queue = self.outbox.entry(id).or_default();
        if !queue.iter().any(|c| c.hash() == change.hash()) {
            queue.insert(0, change);
        }
        Ok(())
    }

    fn replace_outbox(&mut self, id: ReportId, changes: Vec<Change>) -> Result<(), Self::Error> {
        self.outbox.insert(id, changes);
        Ok(())
    }

    fn next_writer(&mut self, id: ReportId) -> Result<Writer, Self::Error> {
        *self.generations.entry(id).or_insert(0) += 1;
        Ok(self.writer(id))
    }

    fn record_refusal(&mut self, refusal: RecordedRefusal) -> Result<(), Self::Error> {
        self.refusals.push(refusal);
        Ok(())
    }
}

impl MemoryDevice {
    /// A new device store following one village.
    pub fn new(device: DeviceId, village: VillageCode) -> Self {
        MemoryDevice {
            sync: DeviceSync::new(device, &[Scope::village(village)]),
            village,
            reports: BTreeMap::new(),
            generations: HashMap::new(),
            outbox: BTreeMap::new(),
            refusals: Vec::new(),
            clock: 1_764_316_800,
            next_id: 0,
        }
    }

    /// The device id.
    pub fn id(&self) -> DeviceId {
        self.sync.device()
    }

    fn writer(&mut self, report: ReportId) -> Writer {
        self.clock += 1;
        let generation = self.generations.get(&report).copied().unwrap_or(0);
        Writer {
            actor: self.id().actor(generation),
            role: Role::Volunteer,
            time: self.clock,
        }
    }

    /// Create a report; returns its id. Report ids are derived from the device id and a counter,
    /// so simulations are reproducible.
    pub fn create(&mut self, kind: ReportKind, fields: &[Edit]) -> Result<ReportId, ReportError> {
        self.next_id += 1;
        let mut raw = *self.id().as_bytes();
        for (b, n) in raw.iter_mut().zip(self.next_id.to_be_bytes().iter().rev()) {
            *b ^= n;
        }
        let id = ReportId::from_random(raw);
        let writer = self.writer(id);
        let new = NewReport {
            kind,
            village: self.village,
            created_at: "2026-11-28T08:00:00Z".into(),
            created_by: self.id().to_string(),
        };
        let (report, change) = Report::create(id, &new, fields, &writer)?;
        self.reports.insert(id, report.into_doc());
        self.outbox.entry(id).or_default().push(change);
        Ok(id)
    }

    /// Edit a report. `Ok(false)` when the edit changed nothing.
    pub fn edit(&mut self, id: ReportId, edits: &[Edit]) -> Result<bool, ReportError> {
        let writer = self.writer(id);
        let doc = self
            .reports
            .get(&id)
            .cloned()
            .ok_or_else(|| ReportError::NotAReport(format!("no report {id} on this device")))?;
        let mut report = Report::from_doc(id, doc)?;
        match report.edit(edits, &writer)? {
            Some(change) => {
                self.reports.insert(id, report.into_doc());
                self.outbox.entry(id).or_default().push(change);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A report on this device.
    pub fn report(&self, id: &ReportId) -> Option<Report> {
        Report::from_doc(*id, self.reports.get(id)?.clone()).ok()
    }

    /// Every report id on this device.
    pub fn report_ids(&self) -> Vec<ReportId> {
        self.reports.keys().copied().collect()
    }

    /// Changes waiting to be sent.
    pub fn waiting(&self) -> usize {
        self.outbox.values().map(Vec::len).sum()
    }

    fn outbox_list(&self) -> Vec<(ReportId, Vec<Change>)> {
        self.outbox
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(id, c)| (*id, c.clone()))
            .collect()
    }

    /// What the next request carries: the outbox, at most [`UPLOAD_BYTES`] of it.
    fn sending(&self) -> Vec<(ReportId, Vec<Change>)> {
        DeviceSync::select_upload(&self.outbox_list(), UPLOAD_BYTES)
    }

    /// The encoded request for the next sync.
    pub fn request(&self) -> Vec<u8> {
        self.sync.request(&self.sending()).encode()
    }

    /// Take in the response to the request made from the current outbox. `Ok(true)`: sync again
    /// (more pages, or changes left to send).
    pub fn handle_response(&mut self, body: &[u8]) -> Result<bool, DeviceError> {
        let response = SyncResponse::decode(body)?;
        let sent = self.sending();
        let partial = sent.iter().map(|(_, c)| c.len()).sum::<usize>() < self.waiting();
        let mut sync = self.sync.clone();
        let outcome = sync.handle(&sent, response)?;
        let more = outcome.more || partial;
        absorb(self, outcome).map_err(|e| DeviceError::Absorb(e.to_string()))?;
        self.sync = sync;
        Ok(more)
    }

    /// Sync with `server` until nothing more is pending: returns (round trips, bytes sent, bytes
    /// received).
    pub fn sync_with(
        &mut self,
        server: &mut MemoryServer,
    ) -> Result<(usize, usize, usize), DeviceError> {
        let (mut trips, mut up, mut down) = (0, 0, 0);
        loop {
            let request = self.request();
            let response = match server.handle(&request) {
                Ok(r) => r,
                Err(e) => return Err(DeviceError::Refused(e.to_string())),
            };
            trips += 1;
            up += request.len();
            down += response.len();
            let more = self.handle_response(&response)?;
            if !more {
                return Ok((trips, up, down));
            }
        }
    }
}
