//! Judging one report's batch of incoming changes.
//!
//! Each change comes as a [`Submission`]: the change, the [`Principal`] that uploaded it, and how
//! it arrived ([`Origin`]). A batch is judged in steps:
//!
//! 0. **Visibility.** A change to a report outside the uploader's villages, or a later (non-first)
//!    change to a report the server does not have, is refused with one and the same
//!    [`Refusal::not_permitted`] — before anything else, so that no answer tells whether the
//!    report exists, and nothing is held for it.
//! 1. **Known changes** (resends) are accepted without more ado.
//! 2. **Authorship and text**: the change's actor must belong to the uploader ([`authorship`]),
//!    and it may not insert forbidden characters ([`super::text`]).
//! 3. **Creation**: a first change must alone make a valid report of a village the uploader covers,
//!    whose `created_by` is one of the uploader's devices.
//! 4. **Dependencies.** A change whose dependencies are neither stored nor in the batch is *held*
//!    (kept, never dropped) until they arrive — within the bounds of [`super::held`]. Held changes
//!    are never given to automerge: it would queue them and apply them later without checks.
//! 5. **Each change on its own** (causal order): fixed fields, containers, `status`. A change that
//!    depends on a refused change is refused too.
//! 6. **The merged state** after the whole batch must pass the schema. If it does not, the changes
//!    are taken one by one in causal order and each one that breaks the schema is refused (with its
//!    dependents). This path is rare, so its cost (a rebuild of the previous state) does not matter.
//!
//! Every automerge call on a change goes through [`crate::guard`]: a change that makes automerge
//! panic is refused as `Undecodable`, and the document is restored to its state before the batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use automerge::{ActorId, Automerge, Change, ChangeHash};
use serde_json::Value;

use super::authorship::{judge_actor, judge_created_by, Actors, Authorship, Binding};
use super::checks::{check_change, check_creation, Created};
use super::held::HeldBudget;
use super::{report_kind, report_village, Principal, Refusal, RefusalCode, Verdict};
use crate::{guard, ReportId, ReportKind};

/// How a change reached admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Uploaded now by a device (an HTTP sync or an automerge-repo peer).
    Uploaded,
    /// Uploaded by a device at `since` (server clock, unix ms), held for its dependencies since.
    Held {
        /// When it was uploaded.
        since: i64,
    },
    /// Made by the server itself (village profiles; edits it writes for a person through the API),
    /// under an actor of its choosing.
    Server,
}

/// One change to admit, with who uploaded it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The change.
    pub change: Change,
    /// Who uploaded it, with their access as it stands now.
    pub by: Arc<Principal>,
    /// How it arrived.
    pub origin: Origin,
}

impl Submission {
    fn made_by_server(&self) -> bool {
        self.origin == Origin::Server
    }

    /// When it was first received, for a held change (`now` for a new one).
    pub fn held_since(&self, now: i64) -> i64 {
        match self.origin {
            Origin::Held { since } => since,
            _ => now,
        }
    }
}

/// What admission needs besides the document and the batch.
pub struct Judge<'a> {
    /// Who owns devices and actors.
    pub actors: &'a dyn Actors,
    /// Room for held changes, per device.
    pub held: &'a mut HeldBudget,
    /// The server clock (unix ms): when new held changes were received, and when old ones expire.
    pub now: i64,
    /// The report schemas, by version.
    pub schemas: &'a crate::schema::Schemas,
}

/// A formerly held change that left without being applied: refused now (its uploader lost access,
/// or it breaks a rule) or expired. Nobody is waiting for its verdict; the server audits it.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The change and its uploader.
    pub submission: Submission,
    /// Why.
    pub refusal: Refusal,
}

/// The outcome of admitting a batch into one report.
#[derive(Debug)]
pub struct Admission {
    /// One verdict per distinct change of the batch.
    pub verdicts: HashMap<ChangeHash, Verdict>,
    /// Changes newly applied to the document, in causal order, with their uploaders: what to
    /// persist.
    pub applied: Vec<Submission>,
    /// Changes waiting for dependencies (all with [`Origin::Held`]): what to keep aside.
    pub held: Vec<Submission>,
    /// Formerly held changes that were refused or expired.
    pub dropped: Vec<Dropped>,
    /// Actors bound to their first uploader by this batch.
    pub bindings: Vec<Binding>,
    /// The merged document after the batch (a valid report) when anything was applied.
    pub state: Option<Value>,
}

/// Admit `incoming` changes into the report `id` whose stored document is `doc` (empty for a report
/// not yet created). On return `doc` holds the new state; refused and held changes are not in it.
/// When a change appears twice, the first submission counts (the server puts held changes first,
/// so a resend never changes whose access judges it).
pub fn admit(
    doc: &mut Automerge,
    id: ReportId,
    incoming: Vec<Submission>,
    judge: &mut Judge<'_>,
) -> Admission {
    let mut run = Run {
        verdicts: HashMap::new(),
        refused: HashSet::new(),
        batch: HashMap::new(),
        dropped: Vec::new(),
    };
    let stored_kind = report_kind(doc);
    let stored_village = report_village(doc);
    let creates = incoming.iter().any(|s| s.change.deps().is_empty());

    // 0. Visibility, and 1. known changes.
    for submission in incoming {
        let hash = submission.change.hash();
        if run.batch.contains_key(&hash) || run.verdicts.contains_key(&hash) {
            continue;
        }
        let hidden = !submission.made_by_server()
            && match stored_village {
                Some(village) if !submission.by.access.covers(village) => true,
                Some(_) => false,
                None => stored_kind.is_none() && !creates && !submission.change.deps().is_empty(),
            };
        let refusal = if hidden {
            Some(Refusal::not_permitted())
        } else if !submission.by.access.may_write() {
            Some(Refusal::new(
                RefusalCode::NotPermitted,
                format!("the {} role writes no reports", submission.by.role()),
            ))
        } else {
            None
        };
        match refusal {
            Some(refusal) => run.refuse(submission, refusal, judge.held),
            None if doc.get_change_meta_by_hash(&hash).is_some() => {
                give_back_if_held(&submission, judge.held);
                run.verdicts.insert(hash, Verdict::Accepted);
            }
            None => {
                run.batch.insert(hash, submission);
            }
        }
    }

    // 2. Authorship and text (text is part of the per-change checks below, which expand the
    //    change once; authorship needs no document).
    let mut bindings: HashMap<ActorId, Binding> = HashMap::new();
    let mut order = causal_order(&run.batch);
    for hash in &order {
        let Some(s) = run.batch.get(hash) else {
            continue;
        };
        let actor = s.change.actor_id();
        let owned = bindings.get(actor).map(|b| b.user == s.by.user);
        let verdict = match owned {
            Some(true) => Ok(None),
            Some(false) => Err(Refusal::new(
                RefusalCode::NotPermitted,
                format!("actor {actor} belongs to another person: upload only your own changes"),
            )),
            None => judge_actor(actor, &s.by, s.made_by_server(), judge.actors).map(|a| match a {
                Authorship::Owned => None,
                Authorship::Bind(b) => Some(b),
            }),
        };
        match verdict {
            Ok(Some(binding)) => {
                bindings.insert(binding.actor.clone(), binding);
            }
            Ok(None) => {}
            Err(refusal) => run.refuse_in_batch(*hash, refusal, judge.held),
        }
    }

    // 3. Creation.
    let mut kind = stored_kind;
    let mut created: Option<(ChangeHash, Created)> = None;
    for hash in &order {
        let Some(s) = run.batch.get(hash).filter(|s| s.change.deps().is_empty()) else {
            continue;
        };
        let outcome = check_creation(&s.change, id, s.by.role(), kind.is_some(), judge.schemas)
            .and_then(|c| {
                if !s.by.access.covers(c.village) {
                    return Err(Refusal::new(
                        RefusalCode::NotPermitted,
                        format!("village {} is not one of your villages", c.village),
                    ));
                }
                let created_by = c.state.get("created_by").and_then(Value::as_str);
                let actor = s.change.actor_id();
                judge_created_by(created_by, actor, &s.by, s.made_by_server(), judge.actors)?;
                Ok(c)
            });
        match outcome {
            Ok(c) => {
                kind = Some(c.kind);
                created = Some((*hash, c));
            }
            Err(refusal) => run.refuse_in_batch(*hash, refusal, judge.held),
        }
    }

    // 4. Dependencies.
    order.retain(|h| run.batch.contains_key(h));
    let created_hash = created.as_ref().map(|(h, _)| *h);
    let exists = kind.is_some();
    let mut waiting: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    let mut ready: Vec<ChangeHash> = Vec::new();
    for hash in &order {
        let Some(s) = run.batch.get(hash) else {
            continue;
        };
        if Some(*hash) == created_hash {
            continue;
        }
        if let Some(bad) = s.change.deps().iter().find(|d| run.refused.contains(*d)) {
            let refusal = depends_on_refused(bad);
            run.refuse_in_batch(*hash, refusal, judge.held);
            continue;
        }
        let mut missing = Vec::new();
        for dep in s.change.deps() {
            if let Some(m) = waiting.get(dep) {
                missing.extend(m.iter().copied());
            } else if !run.batch.contains_key(dep) && doc.get_change_meta_by_hash(dep).is_none() {
                missing.push(*dep);
            }
        }
        if missing.is_empty() {
            ready.push(*hash);
        } else {
            missing.sort();
            missing.dedup();
            waiting.insert(*hash, missing);
        }
    }

    // 5. Each change on its own.
    let mut candidates: Vec<ChangeHash> = Vec::new();
    for hash in ready {
        let Some(s) = run.batch.get(&hash) else {
            continue;
        };
        let verdict = if let Some(bad) = s.change.deps().iter().find(|d| run.refused.contains(*d)) {
            Err(depends_on_refused(bad))
        } else {
            match kind {
                Some(k) => check_change(&s.change, k, s.by.role(), judge.schemas),
                None => Err(Refusal::not_permitted()),
            }
        };
        match verdict {
            Ok(()) => candidates.push(hash),
            Err(refusal) => run.refuse_in_batch(hash, refusal, judge.held),
        }
    }
    // Waiting changes are judged on their own once their dependencies arrive; those that build on
    // a change refused above are refused now.
    let mut held = Vec::new();
    hold(&mut run, &order, &waiting, exists, judge, &mut held);

    // 6. The merged state.
    let bindings_of = |applied: &[Submission], held: &[Submission]| -> Vec<Binding> {
        let actors: HashSet<&ActorId> = applied
            .iter()
            .chain(held)
            .map(|s| s.change.actor_id())
            .collect();
        let mut out: Vec<Binding> = bindings
            .values()
            .filter(|b| actors.contains(&b.actor))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.actor.cmp(&b.actor));
        out
    };
    let Some(kind) = kind else {
        let bindings = bindings_of(&[], &held);
        return run.finish(Vec::new(), held, bindings, None);
    };
    // A new report starts from the document its checked first change made.
    let mut applied = Vec::new();
    let mut created_state = None;
    if let Some((hash, c)) = created {
        *doc = c.doc;
        created_state = Some(c.state);
        if let Some(s) = run.batch.remove(&hash) {
            applied.push(s);
        }
    }
    let state = match (candidates.is_empty(), created_state) {
        (true, state) => state,
        (false, _) => {
            let before = doc.clone();
            let changes: Vec<Change> = candidates
                .iter()
                .filter_map(|h| run.batch.get(h).map(|s| s.change.clone()))
                .collect();
            let fast = guard::apply(doc, changes).is_ok();
            let state = fast.then(|| crate::view::materialize(doc));
            match state {
                Some(state) if judge.schemas.validate(kind, &state).is_ok() => {
                    applied.extend(candidates.iter().filter_map(|h| run.batch.remove(h)));
                    Some(state)
                }
                _ => {
                    // Rare path: find the changes that break the merged state, one by one.
                    *doc = before;
                    let (one_by_one, state) = admit_one_by_one(
                        doc,
                        kind,
                        &candidates,
                        &mut run,
                        judge.held,
                        judge.schemas,
                    );
                    applied.extend(one_by_one);
                    Some(state)
                }
            }
        }
    };
    for s in &applied {
        give_back_if_held(s, judge.held);
    }
    let bindings = bindings_of(&applied, &held);
    run.finish(applied, held, bindings, state)
}

/// The bookkeeping of one admission.
struct Run {
    verdicts: HashMap<ChangeHash, Verdict>,
    refused: HashSet<ChangeHash>,
    /// Changes still being judged.
    batch: HashMap<ChangeHash, Submission>,
    dropped: Vec<Dropped>,
}

impl Run {
    /// Refuse a submission that is not (or no longer) in the batch.
    fn refuse(&mut self, submission: Submission, refusal: Refusal, budget: &mut HeldBudget) {
        let hash = submission.change.hash();
        self.refused.insert(hash);
        self.verdicts
            .insert(hash, Verdict::Refused(refusal.clone()));
        if let Origin::Held { .. } = submission.origin {
            give_back_if_held(&submission, budget);
            self.dropped.push(Dropped {
                submission,
                refusal,
            });
        }
    }

    /// Refuse a change of the batch, taking it out.
    fn refuse_in_batch(&mut self, hash: ChangeHash, refusal: Refusal, budget: &mut HeldBudget) {
        match self.batch.remove(&hash) {
            Some(s) => self.refuse(s, refusal, budget),
            None => {
                self.refused.insert(hash);
                self.verdicts.insert(hash, Verdict::Refused(refusal));
            }
        }
    }

    fn finish(
        mut self,
        applied: Vec<Submission>,
        held: Vec<Submission>,
        bindings: Vec<Binding>,
        state: Option<Value>,
    ) -> Admission {
        for s in &applied {
            self.verdicts.insert(s.change.hash(), Verdict::Accepted);
        }
        Admission {
            verdicts: self.verdicts,
            applied,
            held,
            dropped: self.dropped,
            bindings,
            state,
        }
    }
}

fn give_back_if_held(s: &Submission, budget: &mut HeldBudget) {
    if let Origin::Held { .. } = s.origin {
        budget.give_back(s.by.device, s.change.raw_bytes().len());
    }
}

fn depends_on_refused(bad: &ChangeHash) -> Refusal {
    Refusal::new(
        RefusalCode::DependsOnRefused,
        format!("depends on refused change {bad}"),
    )
}

/// Step 4's second half: keep the waiting changes that may wait, refuse the others.
///
/// Changes held before are kept first (they were admitted under the bounds, and are never refused
/// for them), unless they have expired; then new ones take room in causal order. For a report the
/// server still does not have, nothing waits: such changes get the same refusal as any change to a
/// report the uploader cannot see.
fn hold(
    run: &mut Run,
    order: &[ChangeHash],
    waiting: &HashMap<ChangeHash, Vec<ChangeHash>>,
    exists: bool,
    judge: &mut Judge<'_>,
    held: &mut Vec<Submission>,
) {
    let max_age = judge.held.limits().max_age_ms;
    let (mut report_changes, mut report_bytes) = (0usize, 0usize);
    let mut verdicts: Vec<(ChangeHash, Verdict)> = Vec::new();
    // Held before: keep, expire, or (report gone) refuse.
    for hash in order.iter().filter(|h| waiting.contains_key(*h)) {
        let Some(s) = run.batch.get(hash) else {
            continue;
        };
        let Origin::Held { since } = s.origin else {
            continue;
        };
        if !exists {
            run.refuse_in_batch(*hash, Refusal::not_permitted(), judge.held);
        } else if judge.now.saturating_sub(since) > max_age {
            let refusal = Refusal::new(
                RefusalCode::DependsOnRefused,
                "expired: its dependencies did not arrive in time",
            );
            run.refuse_in_batch(*hash, refusal, judge.held);
        } else if let Some(s) = run.batch.remove(hash) {
            report_changes += 1;
            report_bytes += s.change.raw_bytes().len();
            verdicts.push((
                *hash,
                Verdict::Held {
                    missing: waiting[hash].clone(),
                },
            ));
            held.push(s);
        }
    }
    // New ones, within the bounds.
    for hash in order.iter().filter(|h| waiting.contains_key(*h)) {
        let Some(s) = run.batch.get(hash) else {
            continue;
        };
        if let Some(bad) = s.change.deps().iter().find(|d| run.refused.contains(*d)) {
            let refusal = depends_on_refused(bad);
            run.refuse_in_batch(*hash, refusal, judge.held);
            continue;
        }
        if !exists {
            run.refuse_in_batch(*hash, Refusal::not_permitted(), judge.held);
            continue;
        }
        let bytes = s.change.raw_bytes().len();
        match judge
            .held
            .take(s.by.device, bytes, report_changes, report_bytes)
        {
            Ok(()) => {
                if let Some(mut s) = run.batch.remove(hash) {
                    report_changes += 1;
                    report_bytes += bytes;
                    s.origin = Origin::Held { since: judge.now };
                    verdicts.push((
                        *hash,
                        Verdict::Held {
                            missing: waiting[hash].clone(),
                        },
                    ));
                    held.push(s);
                }
            }
            Err(refusal) => run.refuse_in_batch(*hash, refusal, judge.held),
        }
    }
    run.verdicts.extend(verdicts);
}

fn admit_one_by_one(
    doc: &mut Automerge,
    kind: ReportKind,
    candidates: &[ChangeHash],
    run: &mut Run,
    budget: &mut HeldBudget,
    schemas: &crate::schema::Schemas,
) -> (Vec<Submission>, Value) {
    let mut applied = Vec::new();
    for hash in candidates {
        let Some(s) = run.batch.remove(hash) else {
            continue;
        };
        if let Some(bad) = s.change.deps().iter().find(|d| run.refused.contains(*d)) {
            let refusal = depends_on_refused(bad);
            run.refuse(s, refusal, budget);
            continue;
        }
        // A trial copy: a change that makes automerge fail (or panic) leaves `doc` untouched.
        let mut trial = doc.clone();
        let outcome = guard::apply(&mut trial, vec![s.change.clone()])
            .map_err(|e| Refusal::new(RefusalCode::Undecodable, e.to_string()))
            .and_then(|()| {
                schemas
                    .validate(kind, &crate::view::materialize(&trial))
                    .map_err(|v| Refusal::schema(&v))
            });
        match outcome {
            Ok(()) => {
                *doc = trial;
                applied.push(s);
            }
            Err(refusal) => run.refuse(s, refusal, budget),
        }
    }
    let state = crate::view::materialize(doc);
    (applied, state)
}

/// Batch changes in an order where every change follows the batch changes it depends on.
fn causal_order(batch: &HashMap<ChangeHash, Submission>) -> Vec<ChangeHash> {
    let mut order = Vec::with_capacity(batch.len());
    let mut done: HashSet<ChangeHash> = HashSet::new();
    let mut hashes: Vec<ChangeHash> = batch.keys().copied().collect();
    hashes.sort(); // deterministic
    for start in hashes {
        // Iterative DFS, post-order.
        let mut stack = vec![(start, false)];
        while let Some((hash, expanded)) = stack.pop() {
            if done.contains(&hash) {
                continue;
            }
            if expanded {
                done.insert(hash);
                order.push(hash);
                continue;
            }
            stack.push((hash, true));
            if let Some(s) = batch.get(&hash) {
                for dep in s.change.deps() {
                    if batch.contains_key(dep) && !done.contains(dep) {
                        stack.push((*dep, false));
                    }
                }
            }
        }
    }
    order
}
