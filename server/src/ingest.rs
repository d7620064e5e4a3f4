//! Group commit: every ingest — a device's sync, a coordinator's edit, the village profiles — goes
//! to one writer thread, which takes all the ingests waiting at that moment, admits them one after
//! another in memory (each sees the ones before it) and commits them in **one** store transaction.
//! One fsync then acknowledges many devices' changes: under load the cost of durability is shared,
//! and an idle server answers a lone device as fast as before.
//!
//! Nothing is acknowledged before the commit returns; if it fails, every ingest of the group gets
//! the error and the documents they touched are dropped from the cache (the next request reloads
//! the committed state).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::Arc;

use sync_core::automerge::{Change, ChangeHash};
use sync_core::protocol::server::{self as steps, Receipt};
use sync_core::rules::{self, Verdict};
use sync_core::ReportId;

use crate::audit::{Action, AuditEvent};
use crate::auth::Principal;
use crate::engine::{load_working, materialized_row, now_ms, EngineError, Shared, Working};
use crate::store::{Commit, ReportWrite, COMPACT_AFTER};

/// Verdicts per report of one ingest.
pub type Judged = HashMap<ReportId, HashMap<ChangeHash, Verdict>>;

/// At most this many ingests share a commit (bounds the latency of the first one)…
const MAX_GROUP: usize = 64;
/// …and a group stops taking more once it touches this many reports (bounds the documents held
/// in memory at once: each is tens of KiB).
const MAX_GROUP_REPORTS: usize = 1024;

/// Where a job's outcome goes.
type Reply = mpsc::SyncSender<Result<Judged, EngineError>>;

struct Job {
    batches: Vec<(ReportId, Vec<Change>)>,
    principal: Principal,
    via: Via,
    /// Audit events to commit with the group (reads: a download is recorded before it is sent).
    audit: Vec<AuditEvent>,
    reply: Reply,
}

/// How changes arrived, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /api/v1/sync`.
    Sync,
    /// The automerge-repo WebSocket.
    Ws,
    /// A coordinator's edit through the API.
    Api,
    /// The server's own writes (village profiles).
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
}

/// The handle requests use to reach the writer thread.
pub struct Ingestor {
    jobs: mpsc::Sender<Job>,
}

impl Ingestor {
    /// Start the writer thread. It stops when the `Ingestor` is dropped.
    pub fn start(shared: Arc<Shared>) -> std::io::Result<Ingestor> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("desa-ingest".into())
            .spawn(move || run(&shared, &queue))?;
        Ok(Ingestor { jobs })
    }

    /// Admit and durably commit `batches`; blocks until the commit that carries them returned.
    pub fn submit(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Principal,
        via: Via,
    ) -> Result<Judged, EngineError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Job {
                batches,
                principal: principal.clone(),
                via,
                audit: Vec::new(),
                reply,
            })
            .map_err(|_| EngineError::Poisoned)?;
        answer.recv().map_err(|_| EngineError::Poisoned)?
    }

    /// Durably append audit events, sharing the next group commit (and its fsync) with whatever
    /// else is being committed; blocks until it returned.
    pub fn audit(&self, events: Vec<AuditEvent>) -> Result<(), EngineError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Job {
                batches: Vec::new(),
                principal: Principal::server(),
                via: Via::Server,
                audit: events,
                reply,
            })
            .map_err(|_| EngineError::Poisoned)?;
        answer
            .recv()
            .map_err(|_| EngineError::Poisoned)?
            .map(|_| ())
    }
}

fn run(shared: &Shared, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
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
    }
}

/// One report's state within a group.
struct Staged {
    working: Working,
    held_before: HashSet<ChangeHash>,
    applied: Vec<Change>,
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

fn commit_group(shared: &Shared, group: Vec<Job>) {
    let now = now_ms();
    let seq = match shared.store.last_seq() {
        Ok(last) => last + 1,
        Err(e) => {
            let e = EngineError::from(e);
            for job in group {
                let _ = job.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut staged: HashMap<ReportId, Staged> = HashMap::new();
    let mut order: Vec<ReportId> = Vec::new();
    let mut answers: Vec<(Reply, Result<Judged, EngineError>)> = Vec::new();
    let mut audit: Vec<AuditEvent> = Vec::new();
    for mut job in group {
        audit.append(&mut job.audit);
        // Load everything the job touches first: a damaged report fails this job only.
        let loaded = job.batches.iter().try_for_each(|(id, _)| {
            if !staged.contains_key(id) {
                let working = take(shared, id)?;
                let held_before = working.held.iter().map(Change::hash).collect();
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
            answers.push((job.reply, Err(e)));
            continue;
        }
        let mut judged: Judged = HashMap::new();
        for (id, changes) in job.batches {
            let Some(s) = staged.get_mut(&id) else {
                continue;
            };
            let waiting: HashSet<ChangeHash> = s.working.held.iter().map(Change::hash).collect();
            let mut all = std::mem::take(&mut s.working.held);
            all.extend(changes.into_iter().filter(|c| !waiting.contains(&c.hash())));
            let admission = rules::admit(&mut s.working.doc, id, all, &job.principal.access);
            s.working.held = admission.held;
            let refused: Vec<String> = admission
                .verdicts
                .iter()
                .filter_map(|(h, v)| match v {
                    Verdict::Refused(r) => Some(format!("{h}: {}", r.code.as_str())),
                    _ => None,
                })
                .collect();
            if !admission.applied.is_empty() || !refused.is_empty() {
                audit.push(AuditEvent::now(
                    job.principal.who(),
                    Action::Write {
                        report: id.to_string(),
                        changes: admission
                            .applied
                            .iter()
                            .map(|c| c.hash().to_string())
                            .collect(),
                        fields: sync_core::view::fields_written(&s.working.doc, &admission.applied),
                        refused,
                        via: job.via.as_str().into(),
                    },
                ));
            }
            if !admission.applied.is_empty() {
                s.applied.extend(admission.applied);
                s.state = admission.state;
            }
            judged.entry(id).or_default().extend(admission.verdicts);
        }
        answers.push((job.reply, Ok(judged)));
    }

    let mut commit = match build_commit(&mut staged, &order, seq, now) {
        Ok(commit) => commit,
        Err(e) => return fail(answers, e),
    };
    commit.audit = audit;
    if !commit.writes.is_empty() || !commit.held.is_empty() || !commit.audit.is_empty() {
        if let Err(e) = shared.store.commit(&commit) {
            // The staged documents are dropped: the cache never runs ahead of the store.
            return fail(answers, e.into());
        }
    }
    let changed: Vec<ReportId> = commit.writes.iter().map(|w| w.row.id).collect();
    if let Ok(mut cache) = shared.cache() {
        for (id, s) in staged {
            if s.working.exists || !s.working.held.is_empty() {
                cache.put(id, Arc::new(s.working));
            }
        }
    }
    for (reply, answer) in answers {
        let _ = reply.send(answer);
    }
    if !changed.is_empty() {
        // No listener is not an error: nobody has a WebSocket open.
        let _ = shared.committed.send(Arc::new(changed));
    }
}

fn fail(answers: Vec<(Reply, Result<Judged, EngineError>)>, e: EngineError) {
    for (reply, answer) in answers {
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
        let held_after: HashSet<ChangeHash> = s.working.held.iter().map(Change::hash).collect();
        if held_after != s.held_before {
            commit.held.push((
                *id,
                s.working
                    .held
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
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
        w.recent.record(seq, &s.applied);
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
                .map(|c| (c.hash().0, c.raw_bytes().to_vec()))
                .collect(),
            snapshot,
            receipts: w.receipts.clone(),
        });
    }
    Ok(commit)
}
