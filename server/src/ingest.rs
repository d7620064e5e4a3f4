//! The writer thread: every ingest — a device's sync, a coordinator's edit, the village profiles —
//! goes to one thread, which takes all the ingests waiting at that moment and runs them as one
//! group through the core's writer (`sync_core::protocol::server::writer::write`): admitted one
//! after another in memory (each sees the ones before it) and committed in **one** store
//! transaction. One fsync then acknowledges many devices' changes: under load the cost of
//! durability is shared, and an idle server answers a lone device as fast as before.
//!
//! Nothing is acknowledged before the commit returns; if it fails, every ingest of the group gets
//! the error and the documents they touched are not cached (the next request reloads the
//! committed state). Who judges a change, and how a panic while admitting is contained: the
//! writer's documentation.
//!
//! Should the thread itself die, it is restarted; `/healthz` asks it to answer
//! ([`Ingestor::probe`]) and reports 503 when it does not.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_core::automerge::{ActorId, Change};
use sync_core::protocol::server::writer::{self, Commits, Job, Lookup};
use sync_core::protocol::server::{load_working, EngineError, Judged, Via, Working};
use sync_core::schema::Schemas;
use sync_core::store::Commit;
use sync_core::{DeviceId, Principal, ReportId};

use crate::audit::AuditEvent;
use crate::shared::Shared;

/// At most this many ingests share a commit (bounds the latency of the first one)…
const MAX_GROUP: usize = 64;
/// …and a group stops taking more once it touches this many reports (bounds the documents held
/// in memory at once: each is tens of KiB).
const MAX_GROUP_REPORTS: usize = 1024;
/// How often the writer looks for held changes that expired on reports nobody has written since
/// (expired changes of a report being written are dropped with that write).
const EXPIRY_SWEEP: Duration = Duration::from_secs(3600);
/// Held changes expired per sweep at most (the next sweep takes the rest).
const EXPIRY_BATCH: usize = 512;

/// Where a job's outcome goes.
type Reply = mpsc::SyncSender<Result<Judged, EngineError>>;

/// The handle requests use to reach the writer thread.
pub struct Ingestor {
    jobs: mpsc::Sender<(Job, Reply)>,
}

impl Ingestor {
    /// Start the writer thread. It stops when the `Ingestor` is dropped; if it panics, it starts
    /// over (jobs it was working on are answered with an error).
    pub fn start(shared: Arc<Shared>) -> std::io::Result<Ingestor> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("desa-ingest".into())
            .spawn(move || supervise(&shared, &queue))?;
        Ok(Ingestor { jobs })
    }

    /// Hand `job` to the writer; wait (at most `timeout`) for the commit that carries it.
    fn run(&self, job: Job, timeout: Option<Duration>) -> Result<Judged, EngineError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send((job, reply))
            .map_err(|_| EngineError::Unavailable("the writer thread has stopped".into()))?;
        let Some(timeout) = timeout else {
            return answer.recv().map_err(|_| lost())?;
        };
        match answer.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(EngineError::Unavailable(format!(
                "the writer thread did not answer within {} ms",
                timeout.as_millis()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(lost()),
        }
    }

    /// Admit and durably commit `batches`; blocks until the commit that carries them returned.
    pub fn submit(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Arc<Principal>,
        via: Via,
    ) -> Result<Judged, EngineError> {
        self.run(Job::ingest(batches, principal.clone(), via), None)
    }

    /// Durably append audit events, sharing the next group commit (and its fsync) with whatever
    /// else is being committed; blocks until it returned.
    pub fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError> {
        self.run(Job::audit(events), None).map(|_| ())
    }

    /// Whether the writer thread takes and answers work within `timeout` (an empty job: nothing is
    /// written).
    pub fn probe(&self, timeout: Duration) -> Result<(), EngineError> {
        self.run(Job::audit(Vec::new()), Some(timeout)).map(|_| ())
    }
}

fn lost() -> EngineError {
    EngineError::Unavailable("the writer thread failed while handling this request".into())
}

/// Run the writer loop, starting it over after a panic (the panicking group's jobs were dropped,
/// so their callers get an error; documents they had taken out of the cache are reloaded from the
/// store when next needed).
fn supervise(shared: &Shared, queue: &mpsc::Receiver<(Job, Reply)>) {
    loop {
        match sync_core::guard::contain(|| run(shared, queue)) {
            Ok(()) => return, // every sender is gone: the server is stopping
            Err(_) => {
                tracing::error!("the writer thread panicked; starting it over");
                if let Ok(mut cache) = shared.cache() {
                    cache.clear();
                }
            }
        }
    }
}

fn run(shared: &Shared, queue: &mpsc::Receiver<(Job, Reply)>) {
    let mut last_sweep = Instant::now();
    loop {
        let first = match queue.recv_timeout(EXPIRY_SWEEP) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                sweep(shared);
                last_sweep = Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut reports = first.0.batches.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && reports < MAX_GROUP_REPORTS {
            match queue.try_recv() {
                Ok(job) => {
                    reports += job.0.batches.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let (jobs, replies): (Vec<Job>, Vec<Reply>) = group.into_iter().unzip();
        commit_group(shared, &jobs, replies);
        if last_sweep.elapsed() > EXPIRY_SWEEP {
            sweep(shared);
            last_sweep = Instant::now();
        }
    }
}

/// Drop held changes that expired on reports nobody wrote since.
fn sweep(shared: &Shared) {
    let before = shared.clock.now() - shared.held_limits.max_age_ms;
    let reports = match shared.store.reports_with_held_before(before, EXPIRY_BATCH) {
        Ok(reports) => reports,
        Err(e) => {
            tracing::warn!(error = %e, "looking for expired held changes");
            return;
        }
    };
    if reports.is_empty() {
        return;
    }
    let (reply, _answer) = mpsc::sync_channel(1);
    commit_group(shared, &[Job::expiry(reports)], vec![reply]);
}

/// Run one group through the core's writer, then do what it says: cache, remember bindings,
/// answer, tell live connections.
fn commit_group(shared: &Shared, jobs: &[Job], replies: Vec<Reply>) {
    let settled = writer::write(shared, jobs, shared.held_limits, shared.clock.now());
    if let Ok(mut bound) = shared.bound.lock() {
        for b in &settled.bindings {
            bound.put(ActorId::from(b.actor.as_slice()), b.user.clone());
        }
    }
    if let Ok(mut cache) = shared.cache() {
        for (id, working) in settled.workings {
            cache.put(id, Arc::new(working));
        }
    }
    for (index, answer) in settled.answers {
        if let Err(e) = &answer {
            let job = &jobs[index];
            tracing::warn!(via = job.via.as_str(), user = %job.principal.user, error = %e, "an ingest failed");
        }
        if let Some(reply) = replies.get(index) {
            let _ = reply.send(answer);
        }
    }
    if !settled.changed.is_empty() {
        // No listener is not an error: nobody has a WebSocket open.
        let _ = shared.committed.send(Arc::new(settled.changed));
    }
}

impl Lookup for Shared {
    fn take(&self, id: &ReportId) -> Result<Working, EngineError> {
        if let Some(w) = self.cache()?.pop(id) {
            return Ok(Arc::try_unwrap(w).unwrap_or_else(|shared| (*shared).clone()));
        }
        match self.store.load(id)? {
            Some(stored) => load_working(id, &stored),
            None => Ok(Working::default()),
        }
    }

    fn principal_of(&self, device: DeviceId) -> Option<Arc<Principal>> {
        self.directory.principal_of(device)
    }

    fn device_owner(&self, device: DeviceId) -> Option<String> {
        self.directory.device_owner(device)
    }

    /// Bindings never change once committed: those seen lately are remembered in memory, which
    /// spares a store lookup per group for the actors of apps that sync often.
    fn actor_owners(&self, actors: &[ActorId]) -> Result<HashMap<ActorId, String>, EngineError> {
        let mut found = HashMap::new();
        let mut unknown: Vec<Vec<u8>> = Vec::new();
        if let Ok(mut cache) = self.bound.lock() {
            for actor in actors {
                match cache.get(actor) {
                    Some(user) => {
                        found.insert(actor.clone(), user.clone());
                    }
                    None => unknown.push(actor.to_bytes().to_vec()),
                }
            }
        } else {
            unknown.extend(actors.iter().map(|a| a.to_bytes().to_vec()));
        }
        if unknown.is_empty() {
            return Ok(found);
        }
        let stored = self.store.actor_owners(&unknown)?;
        if let Ok(mut cache) = self.bound.lock() {
            for (actor, user) in &stored {
                cache.put(ActorId::from(actor.as_slice()), user.clone());
            }
        }
        found.extend(
            stored
                .into_iter()
                .map(|(actor, user)| (ActorId::from(actor), user)),
        );
        Ok(found)
    }

    fn schemas(&self) -> &Schemas {
        Schemas::builtin()
    }

    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, EngineError> {
        Ok(self.store.held_usage(devices)?)
    }
}

impl Commits for Shared {
    fn last_seq(&self) -> Result<u64, EngineError> {
        Ok(self.store.last_seq()?)
    }

    fn commit(&self, commit: &Commit) -> Result<(), EngineError> {
        Ok(self.store.commit(commit)?)
    }
}
