//! Group commit: every ingest — a device's sync, a coordinator's edit, the village profiles — goes
//! to one writer thread, which takes all the ingests waiting at that moment, admits them one after
//! another in memory (each sees the ones before it) and commits them in **one** store transaction.
//! One fsync then acknowledges many devices' changes: under load the cost of durability is shared,
//! and an idle server answers a lone device as fast as before.
//!
//! Nothing is acknowledged before the commit returns; if it fails, every ingest of the group gets
//! the error and the documents they touched are dropped from the cache (the next request reloads
//! the committed state).
//!
//! **Who judges a change.** Every change is admitted with the access of the device that uploaded
//! it. A held change keeps its uploader's device; when its dependencies arrive it is judged with
//! that device's access *as it stands then* (from the directory): a revoked device's held changes
//! are dropped, never applied with the access of whoever completed them. Each write is audited
//! under the person who uploaded it.
//!
//! **No input stops the writer.** automerge's panics on hostile changes are contained in
//! `sync-core` (`guard`); should anything else panic while a group is admitted, that ingest is
//! answered with an error, and the rest of the group is admitted again from the committed state.
//! Should the thread itself die, it is restarted; `/healthz` asks it to answer ([`Ingestor::probe`])
//! and reports 503 when it does not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_core::automerge::{ActorId, Change, ChangeHash};
use sync_core::protocol::server::{self as steps, Receipt};
use sync_core::rules::{self, Actors, Admission, HeldBudget, Judge, Origin, Submission, Verdict};
use sync_core::{DeviceId, Principal, ReportId};

use crate::audit::{Action, AuditEvent, Who};
use crate::engine::{load_working, materialized_row, EngineError, HeldChange, Shared, Working};
use crate::store::{
    ActorBinding, Commit, HeldRow, ReportWrite, StoredChange, Uploader, COMPACT_AFTER,
};

/// Verdicts per report of one ingest.
pub type Judged = HashMap<ReportId, HashMap<ChangeHash, Verdict>>;

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

struct Job {
    batches: Vec<(ReportId, Vec<Change>)>,
    principal: Arc<Principal>,
    via: Via,
    /// Audit events to commit with the group (reads: a download is recorded before it is sent).
    audit: Vec<AuditEvent>,
    reply: Reply,
}

/// How changes arrived, for the rules and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /api/v1/sync`.
    Sync,
    /// The automerge-repo WebSocket.
    Ws,
    /// A coordinator's edit through the API (the server writes the change).
    Api,
    /// The server's own writes (village profiles, expiry of held changes).
    Server,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Sync => "sync",
            Via::Ws => "ws",
            Via::Api => "api",
            Via::Server => "server",
        }
    }

    fn origin(self) -> Origin {
        match self {
            Via::Sync | Via::Ws => Origin::Uploaded,
            Via::Api | Via::Server => Origin::Server,
        }
    }
}

/// The handle requests use to reach the writer thread.
pub struct Ingestor {
    jobs: mpsc::Sender<Job>,
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

    fn send(&self, job: Job) -> Result<(), EngineError> {
        self.jobs
            .send(job)
            .map_err(|_| EngineError::Unavailable("the writer thread has stopped".into()))
    }

    /// Admit and durably commit `batches`; blocks until the commit that carries them returned.
    pub fn submit(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Arc<Principal>,
        via: Via,
    ) -> Result<Judged, EngineError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job {
            batches,
            principal: principal.clone(),
            via,
            audit: Vec::new(),
            reply,
        })?;
        answer.recv().map_err(|_| lost())?
    }

    /// Durably append audit events, sharing the next group commit (and its fsync) with whatever
    /// else is being committed; blocks until it returned.
    pub fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job {
            batches: Vec::new(),
            principal: Arc::new(Principal::server()),
            via: Via::Server,
            audit: events,
            reply,
        })?;
        answer.recv().map_err(|_| lost())?.map(|_| ())
    }

    /// Whether the writer thread takes and answers work within `timeout` (an empty job: nothing is
    /// written).
    pub fn probe(&self, timeout: Duration) -> Result<(), EngineError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job {
            batches: Vec::new(),
            principal: Arc::new(Principal::server()),
            via: Via::Server,
            audit: Vec::new(),
            reply,
        })?;
        match answer.recv_timeout(timeout) {
            Ok(outcome) => outcome.map(|_| ()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(EngineError::Unavailable(format!(
                "the writer thread did not answer within {} ms",
                timeout.as_millis()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(lost()),
        }
    }
}

fn lost() -> EngineError {
    EngineError::Unavailable("the writer thread failed while handling this request".into())
}

/// Run the writer loop, starting it over after a panic (the panicking group's jobs were dropped,
/// so their callers get an error; documents they had taken out of the cache are reloaded from the
/// store when next needed).
fn supervise(shared: &Shared, queue: &mpsc::Receiver<Job>) {
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

fn run(shared: &Shared, queue: &mpsc::Receiver<Job>) {
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
        let mut reports = first.batches.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && reports < MAX_GROUP_REPORTS {
            match queue.try_recv() {
                Ok(job) => {
                    reports += job.batches.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(shared, group);
        if last_sweep.elapsed() > EXPIRY_SWEEP {
            sweep(shared);
            last_sweep = Instant::now();
        }
    }
}

/// Drop held changes that expired on reports nobody wrote since: re-admitting a report's held
/// changes on their own drops those past their age (and applies none: their dependencies are
/// still missing).
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
    let job = Job {
        batches: reports.into_iter().map(|id| (id, Vec::new())).collect(),
        principal: Arc::new(Principal::server()),
        via: Via::Server,
        audit: Vec::new(),
        reply,
    };
    commit_group(shared, vec![job]);
}

/// One report's state within a group.
struct Staged {
    working: Working,
    held_before: HashSet<ChangeHash>,
    /// Applied changes with their uploaders, in causal order.
    applied: Vec<Submission>,
    state: Option<serde_json::Value>,
}

fn take(shared: &Shared, id: &ReportId) -> Result<Working, EngineError> {
    if let Some(w) = shared.cache()?.pop(id) {
        return Ok(Arc::try_unwrap(w).unwrap_or_else(|shared| (*shared).clone()));
    }
    match shared.store.load(id)? {
        Some(stored) => load_working(id, &stored),
        None => Ok(Working::default()),
    }
}

/// Who owns devices and actors, for one group: the directory for devices, the store (and this
/// group's new bindings) for other actors.
struct GroupActors<'a> {
    shared: &'a Shared,
    bound: HashMap<ActorId, String>,
}

impl GroupActors<'_> {
    /// Look up, once per group, the owners of the actors of `changes` that are not devices'.
    fn learn<'c>(&mut self, changes: impl Iterator<Item = &'c Change>) -> Result<(), EngineError> {
        let mut unknown: Vec<Vec<u8>> = Vec::new();
        let mut seen: HashSet<&ActorId> = HashSet::new();
        for change in changes {
            let actor = change.actor_id();
            if !seen.insert(actor) || self.bound.contains_key(actor) {
                continue;
            }
            let device_owned = DeviceId::from_actor(actor)
                .is_some_and(|(d, _)| self.shared.directory.device_owner(d).is_some());
            if !device_owned {
                unknown.push(actor.to_bytes().to_vec());
            }
        }
        if let Ok(mut cache) = self.shared.bound.lock() {
            unknown.retain(|actor| {
                let actor = ActorId::from(actor.as_slice());
                match cache.get(&actor) {
                    Some(user) => {
                        self.bound.insert(actor, user.clone());
                        false
                    }
                    None => true,
                }
            });
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let found = self.shared.store.actor_owners(&unknown)?;
        if let Ok(mut cache) = self.shared.bound.lock() {
            for (actor, user) in &found {
                cache.put(ActorId::from(actor.as_slice()), user.clone());
            }
        }
        for (actor, user) in found {
            self.bound.insert(ActorId::from(actor), user);
        }
        Ok(())
    }
}

impl Actors for GroupActors<'_> {
    fn device_owner(&self, device: DeviceId) -> Option<String> {
        self.shared.directory.device_owner(device)
    }

    fn actor_owner(&self, actor: &ActorId) -> Option<String> {
        self.bound.get(actor).cloned()
    }
}

/// What admitting a group produced, before it is committed.
struct Admitted {
    staged: HashMap<ReportId, Staged>,
    order: Vec<ReportId>,
    answers: Vec<Result<Judged, EngineError>>,
    audit: Vec<AuditEvent>,
    bindings: Vec<ActorBinding>,
}

fn commit_group(shared: &Shared, mut group: Vec<Job>) {
    loop {
        let now = shared.clock.now();
        let outcome = sync_core::guard::contain(|| admit_group(shared, &group, now));
        let admitted = match outcome {
            Ok(Ok(admitted)) => admitted,
            Ok(Err(e)) => {
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return;
            }
            Err(_) => {
                // Something panicked while admitting; the documents the group took out of the
                // cache may be half-changed and are dropped. Find the job at fault by admitting
                // each alone, answer it with an error, and admit the rest again.
                let culprit = (0..group.len()).find(|i| {
                    sync_core::guard::contain(|| {
                        admit_group(shared, std::slice::from_ref(&group[*i]), now)
                    })
                    .is_err()
                });
                let Some(culprit) = culprit else {
                    // Only together do they fail: answer them all.
                    for job in group {
                        let _ = job.reply.send(Err(EngineError::Unavailable(
                            "admitting this request failed".into(),
                        )));
                    }
                    return;
                };
                let job = group.remove(culprit);
                tracing::error!(via = job.via.as_str(), user = %job.principal.user, "admitting an ingest panicked; it was refused whole");
                let _ = job.reply.send(Err(EngineError::Unavailable(
                    "admitting this request failed; nothing of it was stored".into(),
                )));
                if group.is_empty() {
                    return;
                }
                continue;
            }
        };
        finish_group(shared, group, admitted, now);
        return;
    }
}

/// Admit every job of the group, in order, in memory.
fn admit_group(shared: &Shared, group: &[Job], now: i64) -> Result<Admitted, EngineError> {
    let mut staged: HashMap<ReportId, Staged> = HashMap::new();
    let mut order: Vec<ReportId> = Vec::new();
    let mut answers: Vec<Result<Judged, EngineError>> = Vec::new();
    let mut audit: Vec<AuditEvent> = Vec::new();
    let mut bindings: Vec<ActorBinding> = Vec::new();
    let mut actors = GroupActors {
        shared,
        bound: HashMap::new(),
    };
    let mut budget = HeldBudget::new(shared.held_limits);
    for job in group {
        audit.extend(job.audit.iter().cloned());
        // Load everything the job touches first: a damaged report fails this job only.
        let loaded = job.batches.iter().try_for_each(|(id, _)| {
            if !staged.contains_key(id) {
                let working = take(shared, id)?;
                let held_before = working.held.iter().map(|h| h.change.hash()).collect();
                staged.insert(
                    *id,
                    Staged {
                        working,
                        held_before,
                        applied: Vec::new(),
                        state: None,
                    },
                );
                order.push(*id);
            }
            Ok::<(), EngineError>(())
        });
        if let Err(e) = loaded {
            answers.push(Err(e));
            continue;
        }
        // Who owns the actors and how much each uploader has held, once per job.
        let changes = job.batches.iter().flat_map(|(_, cs)| cs.iter()).chain(
            job.batches
                .iter()
                .filter_map(|(id, _)| staged.get(id))
                .flat_map(|s| s.working.held.iter().map(|h| &h.change)),
        );
        actors.learn(changes)?;
        let mut devices: Vec<DeviceId> = vec![job.principal.device];
        for (id, _) in &job.batches {
            if let Some(s) = staged.get(id) {
                devices.extend(s.working.held.iter().map(|h| h.device));
            }
        }
        devices.retain(|d| !budget.knows(*d));
        devices.sort();
        devices.dedup();
        if !devices.is_empty() {
            for (device, (n, bytes)) in shared.store.held_usage(&devices)? {
                budget.set_usage(device, n, bytes);
            }
        }

        let mut judged: Judged = HashMap::new();
        for (id, changes) in &job.batches {
            let Some(s) = staged.get_mut(id) else {
                continue;
            };
            let mine: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
            let (incoming, gone) = submissions(shared, s, changes, job);
            let mut judge = Judge {
                actors: &actors,
                held: &mut budget,
                now,
            };
            let admission = rules::admit(&mut s.working.doc, *id, incoming, &mut judge);
            record(
                &mut audit,
                &mut bindings,
                &mut actors,
                *id,
                job,
                &mine,
                &admission,
                &gone,
                s,
                now,
            );
            let Admission {
                verdicts,
                applied,
                held,
                state,
                ..
            } = admission;
            s.working.held = held
                .into_iter()
                .map(|h| HeldChange {
                    since: h.held_since(now),
                    device: h.by.device,
                    change: h.change,
                })
                .collect();
            if !applied.is_empty() {
                s.applied.extend(applied);
                s.state = state;
            }
            let mine_judged = verdicts.into_iter().filter(|(h, _)| mine.contains(h));
            judged.entry(*id).or_default().extend(mine_judged);
        }
        answers.push(Ok(judged));
    }
    Ok(Admitted {
        staged,
        order,
        answers,
        audit,
        bindings,
    })
}

/// A report's batch as submissions: its held changes first (each judged with its uploader's
/// access as it stands now; those whose device is revoked or whose user is removed are returned
/// apart, to be dropped), then the job's changes not already held.
fn submissions(
    shared: &Shared,
    s: &mut Staged,
    changes: &[Change],
    job: &Job,
) -> (Vec<Submission>, Vec<HeldChange>) {
    let mut incoming = Vec::with_capacity(s.working.held.len() + changes.len());
    let mut gone = Vec::new();
    for h in std::mem::take(&mut s.working.held) {
        match shared.directory.principal_of(h.device) {
            Some(by) => incoming.push(Submission {
                change: h.change,
                by,
                origin: Origin::Held { since: h.since },
            }),
            None => gone.push(h),
        }
    }
    // A change held for an uploader who is still active keeps that uploader; one whose uploader
    // is gone is judged anew if this job uploads it again.
    let waiting: HashSet<ChangeHash> = incoming.iter().map(|s| s.change.hash()).collect();
    incoming.extend(
        changes
            .iter()
            .filter(|c| !waiting.contains(&c.hash()))
            .map(|change| Submission {
                change: change.clone(),
                by: job.principal.clone(),
                origin: job.via.origin(),
            }),
    );
    (incoming, gone)
}

/// The audit entries and new bindings of one report's admission.
#[allow(clippy::too_many_arguments)]
fn record(
    audit: &mut Vec<AuditEvent>,
    bindings: &mut Vec<ActorBinding>,
    actors: &mut GroupActors<'_>,
    id: ReportId,
    job: &Job,
    mine: &HashSet<ChangeHash>,
    admission: &Admission,
    gone: &[HeldChange],
    s: &Staged,
    now: i64,
) {
    for b in &admission.bindings {
        actors.bound.insert(b.actor.clone(), b.user.clone());
        bindings.push(ActorBinding {
            actor: b.actor.to_bytes().to_vec(),
            user: b.user.clone(),
            device: b.device,
            at: now,
        });
    }
    // What the job's own uploads came to.
    let refused: Vec<String> = admission
        .verdicts
        .iter()
        .filter(|(h, _)| mine.contains(*h))
        .filter_map(|(h, v)| match v {
            Verdict::Refused(r) => Some(format!("{h}: {}", r.code.as_str())),
            _ => None,
        })
        .collect();
    let held: Vec<String> = admission
        .held
        .iter()
        .map(|h| h.change.hash())
        .filter(|h| mine.contains(h) && !s.held_before.contains(h))
        .map(|h| h.to_string())
        .collect();
    // Applied changes, under whoever uploaded each.
    let mut by_uploader: BTreeMap<(String, DeviceId, bool), Vec<Change>> = BTreeMap::new();
    for a in &admission.applied {
        let was_held = matches!(a.origin, Origin::Held { .. });
        by_uploader
            .entry((a.by.user.clone(), a.by.device, was_held))
            .or_default()
            .push(a.change.clone());
    }
    let own_key = (job.principal.user.clone(), job.principal.device, false);
    let own = by_uploader.remove(&own_key).unwrap_or_default();
    if !own.is_empty() || !refused.is_empty() || !held.is_empty() {
        audit.push(AuditEvent::at(
            now,
            Who::from(&*job.principal),
            Action::Write {
                report: id.to_string(),
                changes: own.iter().map(|c| c.hash().to_string()).collect(),
                fields: sync_core::view::fields_written(&s.working.doc, &own),
                refused,
                held,
                via: job.via.as_str().into(),
            },
        ));
    }
    for ((user, device, _), changes) in by_uploader {
        let principal = admission
            .applied
            .iter()
            .find(|a| a.by.user == user && a.by.device == device)
            .map(|a| Who::from(&*a.by));
        let Some(who) = principal else { continue };
        audit.push(AuditEvent::at(
            now,
            who,
            Action::Write {
                report: id.to_string(),
                changes: changes.iter().map(|c| c.hash().to_string()).collect(),
                fields: sync_core::view::fields_written(&s.working.doc, &changes),
                refused: Vec::new(),
                held: Vec::new(),
                via: "held".into(),
            },
        ));
    }
    // Held changes that left without being applied.
    let mut dropped: BTreeMap<(String, DeviceId), (Who, Vec<String>)> = BTreeMap::new();
    for d in &admission.dropped {
        let by = &d.submission.by;
        dropped
            .entry((by.user.clone(), by.device))
            .or_insert_with(|| (Who::from(&**by), Vec::new()))
            .1
            .push(format!(
                "{}: {}",
                d.submission.change.hash(),
                d.refusal.code.as_str()
            ));
    }
    for h in gone {
        let owner = actors
            .shared
            .directory
            .device_owner(h.device)
            .unwrap_or_else(|| "-".into());
        dropped
            .entry((owner.clone(), h.device))
            .or_insert_with(|| {
                (
                    Who {
                        user: owner,
                        role: "-".into(),
                        device: Some(h.device.to_string()),
                    },
                    Vec::new(),
                )
            })
            .1
            .push(format!("{}: uploader revoked or removed", h.change.hash()));
    }
    for (_, (who, changes)) in dropped {
        audit.push(AuditEvent::at(
            now,
            who,
            Action::HeldDropped {
                report: id.to_string(),
                changes,
            },
        ));
    }
}

/// Commit what the group admitted, then answer.
fn finish_group(shared: &Shared, group: Vec<Job>, admitted: Admitted, now: i64) {
    let Admitted {
        mut staged,
        order,
        answers,
        audit,
        bindings,
    } = admitted;
    let replies: Vec<Reply> = group.into_iter().map(|j| j.reply).collect();
    let seq = match shared.store.last_seq() {
        Ok(last) => last + 1,
        Err(e) => return fail(replies, answers, e.into()),
    };
    let mut commit = match build_commit(&mut staged, &order, seq, now) {
        Ok(commit) => commit,
        Err(e) => return fail(replies, answers, e),
    };
    commit.audit = audit;
    commit.bindings = bindings;
    if !commit.writes.is_empty()
        || !commit.held.is_empty()
        || !commit.audit.is_empty()
        || !commit.bindings.is_empty()
    {
        if let Err(e) = shared.store.commit(&commit) {
            // The staged documents are dropped: the cache never runs ahead of the store.
            return fail(replies, answers, e.into());
        }
    }
    let changed: Vec<ReportId> = commit.writes.iter().map(|w| w.row.id).collect();
    // Committed bindings only: one made by a group that failed to commit is made again.
    if let Ok(mut bound) = shared.bound.lock() {
        for b in &commit.bindings {
            bound.put(ActorId::from(b.actor.as_slice()), b.user.clone());
        }
    }
    if let Ok(mut cache) = shared.cache() {
        for (id, s) in staged {
            if s.working.exists || !s.working.held.is_empty() {
                cache.put(id, Arc::new(s.working));
            }
        }
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
    if !changed.is_empty() {
        // No listener is not an error: nobody has a WebSocket open.
        let _ = shared.committed.send(Arc::new(changed));
    }
}

fn fail(replies: Vec<Reply>, answers: Vec<Result<Judged, EngineError>>, e: EngineError) {
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer.and(Err(e.clone())));
    }
}

/// The one commit of a group: per report, its accepted changes, new row, one receipt, and a
/// snapshot when it is new or its tail has grown long.
fn build_commit(
    staged: &mut HashMap<ReportId, Staged>,
    order: &[ReportId],
    seq: u64,
    now: i64,
) -> Result<Commit, EngineError> {
    let mut commit = Commit {
        seq,
        received_at: now,
        ..Commit::default()
    };
    for id in order {
        let Some(s) = staged.get_mut(id) else {
            continue;
        };
        let held_after: HashSet<ChangeHash> =
            s.working.held.iter().map(|h| h.change.hash()).collect();
        if held_after != s.held_before {
            commit.held.push((
                *id,
                s.working
                    .held
                    .iter()
                    .map(|h| HeldRow {
                        hash: h.change.hash().0,
                        bytes: h.change.raw_bytes().to_vec(),
                        device: h.device,
                        since: h.since,
                    })
                    .collect(),
            ));
        }
        let (false, Some(state)) = (s.applied.is_empty(), &s.state) else {
            continue;
        };
        let row = materialized_row(*id, state, seq, now)?;
        let w = &mut s.working;
        steps::record_receipt(
            &mut w.receipts,
            Receipt {
                seq,
                received_at: now,
                heads: w.doc.get_heads().iter().map(|h| h.0).collect(),
            },
        );
        let changes: Vec<Change> = s.applied.iter().map(|a| a.change.clone()).collect();
        w.recent.record(seq, &changes);
        w.tail_len += s.applied.len();
        let snapshot = if !w.exists || w.tail_len >= COMPACT_AFTER {
            w.tail_len = 0;
            Some(w.doc.save())
        } else {
            None
        };
        w.exists = true;
        commit.writes.push(ReportWrite {
            row,
            changes: s
                .applied
                .iter()
                .map(|a| StoredChange {
                    hash: a.change.hash().0,
                    bytes: a.change.raw_bytes().to_vec(),
                    uploader: Uploader {
                        device: a.by.device,
                        user: a.by.user.clone(),
                    },
                })
                .collect(),
            snapshot,
            receipts: w.receipts.clone(),
        });
    }
    Ok(commit)
}
