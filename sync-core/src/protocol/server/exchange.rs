//! The server's answer to one `POST /api/v1/sync` body, in one round trip: the uploads judged with
//! the caller's access and committed ([`super::writer`], through the shell), a verdict per change,
//! a rebuild of each report with a refusal, and every scope's feed of what the device is missing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use automerge::{Change, ChangeHash};

use super::{plan, rebuild_for, EngineError, FeedBuilder, Judged, Receipt, Working, PAGE_BYTES};
use crate::audit::{Action, AuditEvent, Who};
use crate::protocol::{Envelope, Position, Scope, ScopeFeed, SyncRequest, SyncResponse};
use crate::rules::Verdict;
use crate::store::{FeedRow, StoredDoc};
use crate::{Principal, ReportId, VillageCode};

/// What the exchange reads of the server, and the one thing it asks it to do: commit uploads.
pub trait Exchange {
    /// Admit and durably commit changes uploaded by `principal` (through the shell's writer);
    /// returns once they are committed.
    fn ingest(
        &self,
        batches: Vec<(ReportId, Vec<Change>)>,
        principal: &Arc<Principal>,
    ) -> Result<Judged, EngineError>;
    /// A report's committed state, from the cache or the store (`None`: no such report).
    fn working(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError>;
    /// A report's state if the shell has it in memory.
    fn cached(&self, id: &ReportId) -> Result<Option<Arc<Working>>, EngineError>;
    /// What the store keeps of a report.
    fn stored(&self, id: &ReportId) -> Result<Option<StoredDoc>, EngineError>;
    /// The reports of `village` updated after `position`, ordered by (seq, id), at most `limit`.
    fn feed_rows(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, EngineError>;
}

/// The answer to a sync request.
#[derive(Debug)]
pub struct Answer {
    /// The encoded [`SyncResponse`].
    pub body: Vec<u8>,
    /// Who downloaded which reports: the shell appends it to the audit trail, durably, **before**
    /// the body leaves (`None`: nothing was sent, nothing to record).
    pub read: Option<AuditEvent>,
}

/// Answer one sync request from `principal`: its uploads are judged with the principal's access,
/// and only scopes (villages) it covers may be asked for. Feeds pages hold at most `page_reports`
/// reports (and stop at [`PAGE_BYTES`]).
pub fn sync<E: Exchange + ?Sized>(
    server: &E,
    body: &[u8],
    principal: &Arc<Principal>,
    page_reports: usize,
    now: i64,
) -> Result<Answer, EngineError> {
    let access = &principal.access;
    if !access.may_write() {
        return Err(EngineError::Forbidden(format!(
            "the {} role does not sync reports",
            access.role()
        )));
    }
    // Answered in the request's version: a device keeps working unchanged whatever the server
    // learns later.
    let Envelope {
        version,
        message: request,
        ..
    } = SyncRequest::open(body)?;
    let plan = plan(&request)?;
    if let Some((_, village, _)) = plan.positions().iter().find(|(_, v, _)| !access.covers(*v)) {
        return Err(EngineError::Forbidden(format!(
            "village {village} is not one of your villages"
        )));
    }
    let judged = if plan.reports().is_empty() {
        HashMap::new()
    } else {
        server.ingest(plan.reports().to_vec(), principal)?
    };
    let verdicts = plan.verdicts(&judged);
    let mut rebuilds = Vec::new();
    for (id, v) in &judged {
        if !v.values().any(|v| matches!(v, Verdict::Refused(_))) {
            continue;
        }
        // Only what the caller may see: a report of another village, or one the server does not
        // have, gets no rebuild at all.
        let working = server.working(id)?;
        let doc = working.as_ref().filter(|w| w.exists).map(|w| &w.doc);
        rebuilds.extend(rebuild_for(*id, doc, access, v));
    }
    rebuilds.sort_by_key(|r| r.report);
    let uploaded = plan.uploaded();
    let mut feeds = Vec::new();
    for (scope, village, position) in plan.positions() {
        feeds.push(feed(
            server,
            *scope,
            *village,
            *position,
            &uploaded,
            page_reports.max(1),
        )?);
    }
    let sent: Vec<String> = feeds
        .iter()
        .flat_map(|f| f.items.iter().map(|i| i.report.to_string()))
        .collect();
    // A sync with nothing new writes nothing to the trail.
    let read = (!sent.is_empty()).then(|| {
        AuditEvent::at(
            now,
            Who::from(&**principal),
            Action::Read {
                via: "sync".into(),
                reports: sent,
                redacted: false,
            },
        )
    });
    let body = SyncResponse {
        verdicts,
        rebuilds,
        feeds,
    }
    .encode_as(version, &[]);
    Ok(Answer { body, read })
}

/// One scope's feed: each report updated after the device's position, as the changes it lacks or
/// — a device with none of the report — the stored bytes as they are (no automerge work on the
/// server for a new device's catch-up).
fn feed<E: Exchange + ?Sized>(
    server: &E,
    scope: Scope,
    village: VillageCode,
    position: Position,
    uploaded: &HashMap<ReportId, HashSet<ChangeHash>>,
    page_reports: usize,
) -> Result<ScopeFeed, EngineError> {
    let none = HashSet::new();
    let rows = server.feed_rows(village, &position, page_reports + 1)?;
    let mut builder = FeedBuilder::with_limits(scope, position, page_reports, PAGE_BYTES);
    let mut rows = rows.into_iter().peekable();
    while builder.has_room() {
        let Some(row) = rows.next() else { break };
        let exclude = uploaded.get(&row.id).unwrap_or(&none);
        let knows_some = |receipts: &[Receipt]| {
            !exclude.is_empty() || receipts.iter().any(|r| r.seq <= position.since)
        };
        match server.cached(&row.id)? {
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
                let Some(stored) = server.stored(&row.id)? else {
                    continue;
                };
                if knows_some(&stored.receipts) {
                    let working = super::working::load_working(&row.id, &stored)?;
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
