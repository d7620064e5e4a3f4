//! Admitting ingests — a device's uploads, a coordinator's edit, the server's own writes — and
//! saying what to commit.
//!
//! The shell gives a group of [`Job`]s (one, or all that waited while the last commit ran: the
//! server's group commit) to [`admit`]: each job is admitted in memory after the ones before it
//! (each sees their changes). [`Admitted::commit`] then builds the **one** [`Commit`] for the
//! group; the shell stores it and hands the outcome to [`Admitted::settle`], which says what to
//! answer each job and which documents may be cached. Nothing is acknowledged before the commit
//! returns; if it fails, every job of the group gets the error and no document is cached.
//!
//! **Who judges a change.** Every change is admitted with the access of the device that uploaded
//! it. A held change keeps its uploader's device; when its dependencies arrive it is judged with
//! that device's access *as it stands then* ([`Lookup::principal_of`]): a revoked device's held
//! changes are dropped, never applied with the access of whoever completed them. Each write is
//! audited under the person who uploaded it.
//!
//! **No input stops the writer.** automerge's panics on hostile changes are contained
//! ([`crate::guard`]); should anything else panic while a group is admitted, [`admit`] finds the
//! job at fault by admitting each alone, fails it, and admits the rest again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use automerge::{ActorId, Change, ChangeHash};

use super::working::{materialized_row, HeldChange, Working};
use super::{record_receipt, EngineError, Judged, Receipt, Via};
use crate::audit::{Action, AuditEvent, Who};
use crate::rules::{
    self, Actors, Admission, HeldBudget, HeldLimits, Judge, Origin, Submission, Verdict,
};
use crate::schema::Schemas;
use crate::store::{
    ActorBinding, Commit, HeldRow, ReportWrite, StoredChange, Uploader, COMPACT_AFTER,
};
use crate::{DeviceId, Principal, ReportId};

/// What the writer reads of the server's state. The shell implements it over its cache, store and
/// directory (with whatever caching it likes: bindings never change once committed).
pub trait Lookup {
    /// A report's working state, to write on: taken out of the shell's cache (it goes back with
    /// [`Settled::workings`]) or loaded from the store; the default for a report that does not
    /// exist.
    fn take(&self, id: &ReportId) -> Result<Working, EngineError>;
    /// A device's access as it stands now; `None` if it is revoked or its person removed.
    fn principal_of(&self, device: DeviceId) -> Option<Arc<Principal>>;
    /// The person a device belongs to (revoked devices too).
    fn device_owner(&self, device: DeviceId) -> Option<String>;
    /// The people the given actors are bound to, for those that are bound.
    fn actor_owners(&self, actors: &[ActorId]) -> Result<HashMap<ActorId, String>, EngineError>;
    /// The report schemas the server judges with.
    fn schemas(&self) -> &Schemas;
    /// How many changes, and how many bytes, each device has held now.
    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, EngineError>;
}

/// One ingest: changes per report, from one principal, arriving one way; and audit events to
/// commit with them.
#[derive(Debug, Clone)]
pub struct Job {
    /// Each report's changes.
    pub batches: Vec<(ReportId, Vec<Change>)>,
    /// Who uploaded (or wrote) them: their access judges them.
    pub principal: Arc<Principal>,
    /// How they arrived.
    pub via: Via,
    /// Audit events committed with the group (a download is recorded before it is sent).
    pub audit: Vec<AuditEvent>,
}

impl Job {
    /// Changes to admit.
    pub fn ingest(
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: Arc<Principal>,
        via: Via,
    ) -> Job {
        Job {
            batches,
            principal,
            via,
            audit: Vec::new(),
        }
    }

    /// Audit events only, sharing the next commit. With none, a job that only asks the writer to
    /// answer (nothing is written).
    pub fn audit(audit: Vec<AuditEvent>) -> Job {
        Job {
            batches: Vec::new(),
            principal: Arc::new(Principal::server()),
            via: Via::Server,
            audit,
        }
    }

    /// Re-admit the held changes of `reports` on their own: those past their age are dropped, and
    /// none is applied (their dependencies are still missing).
    pub fn expiry(reports: Vec<ReportId>) -> Job {
        Job {
            batches: reports.into_iter().map(|id| (id, Vec::new())).collect(),
            ..Job::audit(Vec::new())
        }
    }
}

/// One report's state within a group.
struct Staged {
    working: Working,
    held_before: HashSet<ChangeHash>,
    /// Applied changes with their uploaders, in causal order.
    applied: Vec<Submission>,
    state: Option<serde_json::Value>,
}

/// Who owns devices and actors, for one group: the lookup, and this group's new bindings.
struct GroupActors<'a, L: ?Sized> {
    lookup: &'a L,
    bound: HashMap<ActorId, String>,
}

impl<L: Lookup + ?Sized> GroupActors<'_, L> {
    /// Look up, once per group, the owners of the actors of `changes` that are not devices'.
    fn learn<'c>(&mut self, changes: impl Iterator<Item = &'c Change>) -> Result<(), EngineError> {
        let mut unknown: Vec<ActorId> = Vec::new();
        let mut seen: HashSet<&ActorId> = HashSet::new();
        for change in changes {
            let actor = change.actor_id();
            if !seen.insert(actor) || self.bound.contains_key(actor) {
                continue;
            }
            let device_owned = DeviceId::from_actor(actor)
                .is_some_and(|(d, _)| self.lookup.device_owner(d).is_some());
            if !device_owned {
                unknown.push(actor.clone());
            }
        }
        if !unknown.is_empty() {
            self.bound.extend(self.lookup.actor_owners(&unknown)?);
        }
        Ok(())
    }
}

impl<L: Lookup + ?Sized> Actors for GroupActors<'_, L> {
    fn device_owner(&self, device: DeviceId) -> Option<String> {
        self.lookup.device_owner(device)
    }

    fn actor_owner(&self, actor: &ActorId) -> Option<String> {
        self.bound.get(actor).cloned()
    }
}

/// What admitting a group produced, before it is committed.
pub struct Admitted {
    staged: HashMap<ReportId, Staged>,
    order: Vec<ReportId>,
    /// Each job's answer, by its index in the group.
    answers: Vec<(usize, Result<Judged, EngineError>)>,
    audit: Vec<AuditEvent>,
    bindings: Vec<ActorBinding>,
    /// Reports the commit writes.
    changed: Vec<ReportId>,
}

/// What to do after the commit: answer each job, cache documents, tell live peers.
pub struct Settled {
    /// Each job's answer, by its index in the group.
    pub answers: Vec<(usize, Result<Judged, EngineError>)>,
    /// Documents to put (back) into the cache: only after a successful commit.
    pub workings: Vec<(ReportId, Working)>,
    /// Reports whose state changed (empty if the commit failed).
    pub changed: Vec<ReportId>,
    /// Actors bound by the commit (empty if it failed: a binding of a group that failed is made
    /// again).
    pub bindings: Vec<ActorBinding>,
}

/// Where a group's commit goes: the shell's store.
pub trait Commits {
    /// The seq of the last commit (0: none yet).
    fn last_seq(&self) -> Result<u64, EngineError>;
    /// Store `commit` atomically and durably.
    fn commit(&self, commit: &Commit) -> Result<(), EngineError>;
}

/// A group from start to end, as every shell runs it: [`admit`], [`Admitted::commit`] as the
/// next seq, store it (unless it is empty), [`Admitted::settle`].
pub fn write<S: Lookup + Commits + ?Sized>(
    server: &S,
    jobs: &[Job],
    limits: HeldLimits,
    now: i64,
) -> Settled {
    let mut admitted = admit(server, jobs, limits, now);
    let stored = server
        .last_seq()
        .and_then(|last| admitted.commit(last + 1, now))
        .and_then(|commit| {
            if !commit.is_empty() {
                server.commit(&commit)?;
            }
            Ok(commit.bindings)
        });
    match stored {
        Ok(bindings) => Settled {
            bindings,
            ..admitted.settle(Ok(()))
        },
        Err(e) => admitted.settle(Err(e)),
    }
}

/// Admit a group of jobs, in order, in memory. Jobs that cannot be admitted — a damaged report,
/// a panic — are answered with an error in [`Admitted`]'s answers; the others go on.
pub fn admit<L: Lookup + ?Sized>(
    lookup: &L,
    jobs: &[Job],
    limits: HeldLimits,
    now: i64,
) -> Admitted {
    let mut excluded: Vec<(usize, EngineError)> = Vec::new();
    loop {
        let included: Vec<(usize, &Job)> = jobs
            .iter()
            .enumerate()
            .filter(|(i, _)| !excluded.iter().any(|(x, _)| x == i))
            .collect();
        let outcome = crate::guard::contain(|| admit_all(lookup, &included, limits, now));
        match outcome {
            Ok(Ok(mut admitted)) => {
                admitted
                    .answers
                    .extend(excluded.into_iter().map(|(i, e)| (i, Err(e))));
                return admitted;
            }
            Ok(Err(e)) => {
                // The lookup failed (the store): nobody's changes can be judged.
                return Admitted::failed(
                    jobs.iter()
                        .enumerate()
                        .map(|(i, _)| (i, excluded_or(&excluded, i, &e))),
                );
            }
            Err(_) => {
                // Something panicked; the documents the group took may be half-changed and are
                // dropped (the next take loads them again). Find the job at fault by admitting
                // each alone, fail it, and admit the rest again.
                let culprit = included.iter().find(|(_, job)| {
                    crate::guard::contain(|| admit_all(lookup, &[(0, job)], limits, now)).is_err()
                });
                let Some((culprit, _)) = culprit else {
                    // Only together do they fail: answer them all.
                    let e = EngineError::Unavailable("admitting this request failed".into());
                    return Admitted::failed(
                        jobs.iter()
                            .enumerate()
                            .map(|(i, _)| (i, excluded_or(&excluded, i, &e))),
                    );
                };
                excluded.push((
                    *culprit,
                    EngineError::Unavailable(
                        "admitting this request failed; nothing of it was stored".into(),
                    ),
                ));
                if excluded.len() == jobs.len() {
                    return Admitted::failed(excluded.into_iter().map(|(i, e)| (i, Err(e))));
                }
            }
        }
    }
}

fn excluded_or(
    excluded: &[(usize, EngineError)],
    i: usize,
    e: &EngineError,
) -> Result<Judged, EngineError> {
    Err(excluded
        .iter()
        .find(|(x, _)| *x == i)
        .map_or_else(|| e.clone(), |(_, own)| own.clone()))
}

/// Admit every job of `jobs`, in order.
fn admit_all<L: Lookup + ?Sized>(
    lookup: &L,
    jobs: &[(usize, &Job)],
    limits: HeldLimits,
    now: i64,
) -> Result<Admitted, EngineError> {
    let mut admitted = Admitted::failed(std::iter::empty());
    let mut actors = GroupActors {
        lookup,
        bound: HashMap::new(),
    };
    let mut budget = HeldBudget::new(limits);
    for (index, job) in jobs {
        admitted.audit.extend(job.audit.iter().cloned());
        // Load everything the job touches first: a damaged report fails this job only.
        let loaded = job.batches.iter().try_for_each(|(id, _)| {
            if !admitted.staged.contains_key(id) {
                let working = lookup.take(id)?;
                let held_before = working.held.iter().map(|h| h.change.hash()).collect();
                admitted.staged.insert(
                    *id,
                    Staged {
                        working,
                        held_before,
                        applied: Vec::new(),
                        state: None,
                    },
                );
                admitted.order.push(*id);
            }
            Ok::<(), EngineError>(())
        });
        if let Err(e) = loaded {
            admitted.answers.push((*index, Err(e)));
            continue;
        }
        // Who owns the actors and how much each uploader has held, once per job.
        let staged = &admitted.staged;
        let held_of = |id: &ReportId| staged.get(id).map(|s| s.working.held.as_slice());
        let changes = job.batches.iter().flat_map(|(_, cs)| cs.iter()).chain(
            job.batches
                .iter()
                .filter_map(|(id, _)| held_of(id))
                .flat_map(|held| held.iter().map(|h| &h.change)),
        );
        actors.learn(changes)?;
        let mut devices: Vec<DeviceId> = vec![job.principal.device];
        for (id, _) in &job.batches {
            devices.extend(held_of(id).unwrap_or_default().iter().map(|h| h.device));
        }
        devices.retain(|d| !budget.knows(*d));
        devices.sort();
        devices.dedup();
        if !devices.is_empty() {
            for (device, (n, bytes)) in lookup.held_usage(&devices)? {
                budget.set_usage(device, n, bytes);
            }
        }

        let mut judged: Judged = HashMap::new();
        for (id, changes) in &job.batches {
            let Some(s) = admitted.staged.get_mut(id) else {
                continue;
            };
            let mine: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
            let (incoming, gone) = submissions(lookup, s, changes, job);
            let mut judge = Judge {
                actors: &actors,
                held: &mut budget,
                now,
                schemas: lookup.schemas(),
            };
            let admission = rules::admit(&mut s.working.doc, *id, incoming, &mut judge);
            let ingest = Ingest {
                id: *id,
                job,
                mine: &mine,
                gone: &gone,
                now,
            };
            ingest.record(
                &mut admitted.audit,
                &mut admitted.bindings,
                &mut actors,
                &admission,
                s,
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
            migrate(
                *id,
                s,
                &mut admitted.audit,
                lookup.schemas(),
                &mut budget,
                &actors,
                now,
            );
        }
        admitted.answers.push((*index, Ok(judged)));
    }
    Ok(admitted)
}

/// Bring a report created (or written) in an older schema version up to the newest, in the same
/// commit: the server's migration change ([`migration`]), admitted like any server write.
fn migrate<L: Lookup + ?Sized>(
    id: ReportId,
    s: &mut Staged,
    audit: &mut Vec<AuditEvent>,
    schemas: &Schemas,
    budget: &mut HeldBudget,
    actors: &GroupActors<'_, L>,
    now: i64,
) {
    let Some(change) = migration(&s.working.doc, schemas) else {
        return;
    };
    let server = Arc::new(Principal::server());
    let submission = Submission {
        change,
        by: server.clone(),
        origin: Origin::Server,
    };
    let mut judge = Judge {
        actors,
        held: budget,
        now,
        schemas,
    };
    let admission = rules::admit(&mut s.working.doc, id, vec![submission], &mut judge);
    if admission.applied.is_empty() {
        return;
    }
    let changes: Vec<Change> = admission.applied.iter().map(|a| a.change.clone()).collect();
    audit.push(AuditEvent::at(
        now,
        Who::from(&*server),
        written(
            id,
            &s.working.doc,
            &changes,
            "migration",
            Default::default(),
        ),
    ));
    s.applied.extend(admission.applied);
    s.state = admission.state;
}

/// The audit record of `changes` written to report `id` (whose document `doc` now holds them):
/// the changes, the fields they touched, how they came, and the same request's changes that were
/// `(refused, held)`.
fn written(
    id: ReportId,
    doc: &automerge::Automerge,
    changes: &[Change],
    via: &str,
    (refused, held): (Vec<String>, Vec<String>),
) -> Action {
    Action::Write {
        report: id.to_string(),
        changes: changes.iter().map(|c| c.hash().to_string()).collect(),
        fields: crate::view::fields_written(doc, changes),
        refused,
        held,
        via: via.into(),
    }
}

/// The server's change that brings a report of an older schema version to the newest one: it
/// raises `schema_version` and creates the containers the newer versions add — the server alone
/// creates them, once, so that two devices can never create the same container concurrently and
/// lose one side's contents. `None` when the report is new enough (or not a report).
pub fn migration(doc: &automerge::Automerge, schemas: &Schemas) -> Option<Change> {
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::ReadDoc;
    let kind = rules::report_kind(doc)?;
    let version = match doc.get(automerge::ROOT, "schema_version").ok()?? {
        (automerge::Value::Scalar(s), _) => match s.as_ref() {
            automerge::ScalarValue::Int(n) => u64::try_from(*n).ok()?,
            automerge::ScalarValue::Uint(n) => *n,
            _ => return None,
        },
        _ => return None,
    };
    let newest = schemas.newest();
    if version >= newest {
        return None;
    }
    let mut trial = doc.clone();
    trial.set_actor(crate::SERVER_DEVICE.actor(0));
    let mut tx = trial.transaction();
    tx.put(automerge::ROOT, "schema_version", newest as i64)
        .ok()?;
    for (name, kind_of) in schemas.containers(kind, newest) {
        if tx.get(automerge::ROOT, name.as_str()).ok()?.is_none() {
            tx.put_object(automerge::ROOT, name.as_str(), kind_of)
                .ok()?;
        }
    }
    tx.commit_with(
        CommitOptions::default()
            .with_time(0)
            .with_message(format!("schema {newest}")),
    );
    trial.get_last_local_change()
}

/// A report's batch as submissions: its held changes first (each judged with its uploader's
/// access as it stands now; those whose device is revoked or whose person is removed are returned
/// apart, to be dropped), then the job's changes not already held.
fn submissions<L: Lookup + ?Sized>(
    lookup: &L,
    s: &mut Staged,
    changes: &[Change],
    job: &Job,
) -> (Vec<Submission>, Vec<HeldChange>) {
    let mut incoming = Vec::with_capacity(s.working.held.len() + changes.len());
    let mut gone = Vec::new();
    for h in std::mem::take(&mut s.working.held) {
        match lookup.principal_of(h.device) {
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

/// One report's admission within a job, for the audit trail.
struct Ingest<'a> {
    id: ReportId,
    job: &'a Job,
    /// The hashes this job uploaded for the report.
    mine: &'a HashSet<ChangeHash>,
    /// Held changes dropped because their uploader is gone.
    gone: &'a [HeldChange],
    now: i64,
}

impl Ingest<'_> {
    /// The audit entries and new bindings of the admission.
    fn record<L: Lookup + ?Sized>(
        &self,
        audit: &mut Vec<AuditEvent>,
        bindings: &mut Vec<ActorBinding>,
        actors: &mut GroupActors<'_, L>,
        admission: &Admission,
        s: &Staged,
    ) {
        let (id, job, mine, now) = (self.id, self.job, self.mine, self.now);
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
            let event = written(id, &s.working.doc, &own, job.via.as_str(), (refused, held));
            audit.push(AuditEvent::at(now, Who::from(&*job.principal), event));
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
                written(id, &s.working.doc, &changes, "held", Default::default()),
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
        for h in self.gone {
            let owner = actors
                .lookup
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
}

impl Admitted {
    fn failed(answers: impl Iterator<Item = (usize, Result<Judged, EngineError>)>) -> Admitted {
        Admitted {
            staged: HashMap::new(),
            order: Vec::new(),
            answers: answers.collect(),
            audit: Vec::new(),
            bindings: Vec::new(),
            changed: Vec::new(),
        }
    }

    /// The one commit of the group, as update `seq` (the store's last seq + 1): per report, its
    /// accepted changes, new row, one receipt, and a snapshot when it is new or its tail has grown
    /// long; the held changes of reports whose held set changed; new bindings; audit events.
    /// [`Commit::is_empty`] when there is nothing to store.
    pub fn commit(&mut self, seq: u64, now: i64) -> Result<Commit, EngineError> {
        let mut commit = Commit {
            seq,
            received_at: now,
            audit: std::mem::take(&mut self.audit),
            bindings: std::mem::take(&mut self.bindings),
            ..Commit::default()
        };
        for id in &self.order {
            let Some(s) = self.staged.get_mut(id) else {
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
            record_receipt(
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
        self.changed = commit.writes.iter().map(|w| w.row.id).collect();
        Ok(commit)
    }

    /// What to do once the commit returned (or could not be built or stored): on success, answer
    /// every job and cache its documents; on failure, every job gets the error (or its own) and
    /// nothing is cached — the cache never runs ahead of the store.
    pub fn settle(self, committed: Result<(), EngineError>) -> Settled {
        match committed {
            Ok(()) => Settled {
                answers: self.answers,
                workings: self
                    .staged
                    .into_iter()
                    .filter(|(_, s)| s.working.exists || !s.working.held.is_empty())
                    .map(|(id, s)| (id, s.working))
                    .collect(),
                changed: self.changed,
                bindings: Vec::new(),
            },
            Err(e) => Settled {
                answers: self
                    .answers
                    .into_iter()
                    .map(|(i, answer)| (i, answer.and(Err(e.clone()))))
                    .collect(),
                workings: Vec::new(),
                changed: Vec::new(),
                bindings: Vec::new(),
            },
        }
    }
}

/// A coordinator's (or any API writer's) edit, made on the report's committed state: the change
/// to ingest like any other, so that it flows to devices on their next sync (`None`: the edit
/// changes nothing).
///
/// `nonce` goes into the change (its message), so that nobody can predict the change's hash and
/// pre-build changes on top of it: the shell passes fresh randomness.
pub fn api_change(
    working: Option<&Working>,
    id: ReportId,
    edits: &[crate::Edit],
    writer: &crate::Writer,
    nonce: [u8; 16],
) -> Result<Option<Change>, EngineError> {
    let working = working
        .filter(|w| w.exists)
        .ok_or(EngineError::NotFound(id))?;
    let mut report = crate::Report::from_doc(id, working.doc.clone())
        .map_err(|e| EngineError::Corrupt(id, e.to_string()))?;
    let message = format!("api {}", crate::audit::hex(&nonce));
    match report.edit_with_message(edits, writer, Some(message)) {
        Ok(change) => Ok(change),
        Err(crate::ReportError::Refused(r)) => Err(EngineError::Refused(r)),
        Err(e) => Err(EngineError::BadEdit(e.to_string())),
    }
}

/// What the verdict on an API change means to the person who made it.
pub fn api_verdict(judged: &Judged, id: ReportId, hash: ChangeHash) -> Result<(), EngineError> {
    match judged.get(&id).and_then(|v| v.get(&hash)) {
        Some(Verdict::Accepted) => Ok(()),
        Some(Verdict::Refused(r)) => Err(EngineError::Refused(r.clone())),
        _ => Err(EngineError::BadEdit("the edit could not be applied".into())),
    }
}
