//! In-memory shells around the exchange: a [`MemoryServer`] that runs the server steps of
//! [`crate::protocol::server`] in the order the real server runs them, and a [`MemoryDevice`] that
//! runs the device steps. They hold everything in memory and exchange *encoded bytes*, so scenario
//! and property tests (and the benchmark) exercise the real wire format over a simulated network.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use automerge::{ActorId, Automerge, Change, ChangeHash};

use crate::protocol::absorb::{absorb, DeviceStore, RecordedRefusal};
use crate::protocol::device::{DeviceSync, UPLOAD_BYTES};
use crate::protocol::server::{self as steps, FeedBuilder, Receipt};
use crate::protocol::{Scope, SyncRequest, SyncResponse, WireError};
use crate::rules::{
    self, Access, Actors, HeldBudget, Origin, Principal, Role, Submission, Verdict,
};
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

/// One stored report of the [`MemoryServer`].
#[derive(Debug, Clone)]
pub struct StoredReport {
    /// The merged document.
    pub doc: Automerge,
    /// The village (fixed at creation).
    pub village: VillageCode,
    /// Receipts of its updates.
    pub receipts: Vec<Receipt>,
    /// Seq of its latest update.
    pub last_seq: u64,
}

/// Why the in-memory server refused a whole request.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Undecodable body.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Unknown village, duplicate scope…
    #[error(transparent)]
    Plan(#[from] steps::PlanError),
}

/// The server's steps, all in memory.
#[derive(Debug, Default)]
pub struct MemoryServer {
    reports: BTreeMap<ReportId, StoredReport>,
    held: BTreeMap<ReportId, Vec<Submission>>,
    seq: u64,
    clock_ms: i64,
    /// Page size of feeds (small values exercise paging).
    pub page_limit: Option<usize>,
    /// Who owns what: each device that syncs is a person of its own (the simulated network has no
    /// accounts) unless [`MemoryServer::one_person`] says otherwise, and actors bound to their
    /// first uploader.
    book: Book,
    budget: HeldBudget,
    person: Option<String>,
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
        let mut server = Self::new();
        let principal = Arc::new(Principal::server());
        for v in villages {
            if let Ok((report, change)) = Report::village_profile(*v) {
                server.ingest(report.id(), vec![change], &principal, Origin::Server);
            }
        }
        server
    }

    /// Every device that syncs is a device of one person, `user` (a shell standing in for one
    /// volunteer's phones: a re-tokened phone keeps its actor).
    pub fn one_person(mut self, user: &str) -> Self {
        self.person = Some(user.to_owned());
        self
    }

    /// A stored report.
    pub fn report(&self, id: &ReportId) -> Option<&StoredReport> {
        self.reports.get(id)
    }

    /// Every stored report id.
    pub fn report_ids(&self) -> Vec<ReportId> {
        self.reports.keys().copied().collect()
    }

    /// Admit changes into one report and store the result (one "transaction").
    fn ingest(
        &mut self,
        id: ReportId,
        changes: Vec<Change>,
        by: &Arc<Principal>,
        origin: Origin,
    ) -> HashMap<ChangeHash, Verdict> {
        self.clock_ms += 1;
        // Take the report out (no copy); it goes back below with the admitted state.
        let mut stored = self.reports.remove(&id);
        let mut doc = stored
            .as_mut()
            .map(|s| std::mem::take(&mut s.doc))
            .unwrap_or_default();
        // Held changes first: a resend never changes whose access judges a change.
        let mut all = self.held.remove(&id).unwrap_or_default();
        all.extend(changes.into_iter().map(|change| Submission {
            change,
            by: by.clone(),
            origin,
        }));
        let mut judge = rules::Judge {
            actors: &self.book,
            held: &mut self.budget,
            now: self.clock_ms,
        };
        let admission = rules::admit(&mut doc, id, all, &mut judge);
        self.book.bind(&admission.bindings);
        if !admission.held.is_empty() {
            self.held.insert(id, admission.held.clone());
        }
        if !admission.applied.is_empty() {
            let village = admission
                .state
                .as_ref()
                .and_then(|s| s["village"].as_str())
                .and_then(|v| VillageCode::parse(v).ok());
            if let Some(village) = village {
                self.seq += 1;
                let entry = stored.get_or_insert_with(|| StoredReport {
                    doc: Automerge::new(),
                    village,
                    receipts: Vec::new(),
                    last_seq: 0,
                });
                entry.last_seq = self.seq;
                steps::record_receipt(
                    &mut entry.receipts,
                    Receipt {
                        seq: self.seq,
                        received_at: self.clock_ms,
                        heads: doc.get_heads().iter().map(|h| h.0).collect(),
                    },
                );
            }
        }
        // admit leaves `doc` as the new state (refused and held changes are not in it).
        if let Some(mut entry) = stored {
            entry.doc = doc;
            self.reports.insert(id, entry);
        }
        admission.verdicts
    }

    /// A coordinator's edit through the API: an ordinary change that flows to devices.
    pub fn coordinator_edit(
        &mut self,
        id: ReportId,
        edits: &[Edit],
        writer: &Writer,
    ) -> Result<Option<Change>, ReportError> {
        let stored = self
            .reports
            .get(&id)
            .ok_or_else(|| ReportError::NotAReport(format!("no report {id}")))?;
        let mut report = Report::from_doc(id, stored.doc.clone())?;
        let Some(change) = report.edit(edits, writer)? else {
            return Ok(None);
        };
        let device =
            DeviceId::from_actor(&writer.actor).map_or(crate::SERVER_DEVICE, |(device, _)| device);
        let by = Arc::new(Principal {
            user: "office".into(),
            device,
            access: Access::everywhere(writer.role),
        });
        let verdicts = self.ingest(id, vec![change.clone()], &by, Origin::Server);
        match verdicts.get(&change.hash()) {
            Some(Verdict::Accepted) => Ok(Some(change)),
            Some(Verdict::Refused(r)) => Err(ReportError::Refused(r.clone())),
            _ => Err(ReportError::NotAReport("change held".into())),
        }
    }

    /// Answer one encoded sync request.
    pub fn handle(&mut self, body: &[u8]) -> Result<Vec<u8>, ServerError> {
        let request = SyncRequest::decode(body)?;
        let plan = steps::plan(&request)?;
        // The simulated network has no tokens: the request's device is taken at its word, a
        // person of its own.
        let mut principal = device_principal(request.device);
        if let Some(user) = &self.person {
            principal.user = user.clone();
        }
        let principal = Arc::new(principal);
        if !self.book.devices.contains_key(&request.device) {
            self.book.enrol(request.device, &principal.user);
        }
        let mut judged = HashMap::new();
        for (id, changes) in plan.reports() {
            let verdicts = self.ingest(*id, changes.clone(), &principal, Origin::Uploaded);
            judged.insert(*id, verdicts);
        }
        let verdicts = plan.verdicts(&judged);
        let rebuilds = judged
            .iter()
            .filter(|(_, v)| v.values().any(|v| matches!(v, Verdict::Refused(_))))
            .filter_map(|(id, verdicts)| {
                let doc = self.reports.get(id).map(|s| &s.doc);
                steps::rebuild_for(*id, doc, &principal.access, verdicts)
            })
            .collect();
        let exclude = plan.uploaded();
        let none = HashSet::new();
        let mut feeds = Vec::new();
        for (scope, village, position) in plan.positions() {
            let mut rows: Vec<(&ReportId, &StoredReport)> = self
                .reports
                .iter()
                .filter(|(id, r)| {
                    r.village == *village
                        && r.last_seq > position.since
                        && position
                            .after
                            .is_none_or(|m| (r.last_seq, **id) > (m.seq, m.report))
                })
                .collect();
            rows.sort_by_key(|(id, r)| (r.last_seq, **id));
            let mut builder = match self.page_limit {
                Some(limit) => {
                    FeedBuilder::with_limits(*scope, *position, limit, steps::PAGE_BYTES)
                }
                None => FeedBuilder::new(*scope, *position),
            };
            let mut rows = rows.into_iter().peekable();
            while builder.has_room() {
                let Some((id, r)) = rows.next() else { break };
                let mine = exclude.get(id).unwrap_or(&none);
                builder.push(*id, r.last_seq, &r.doc, &r.receipts, mine);
            }
            feeds.push(builder.finish(rows.peek().is_some()));
        }
        Ok(SyncResponse {
            verdicts,
            rebuilds,
            feeds,
        }
        .encode())
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
