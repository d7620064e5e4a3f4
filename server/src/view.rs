//! What coordinators read: report rows for lists, and the full view of one report — merged document,
//! conflicts at any depth, heads, and its history (which device changed which fields, the device's
//! time and the server's receipt time).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use sync_core::automerge::Automerge;
use sync_core::view::Conflict;
use sync_core::{DeviceId, ReportId};

use crate::store::{ChangeReceipt, ReportRow};
use sync_core::audit::rfc3339_ms;

/// A report in a list.
#[derive(Serialize)]
pub struct ReportItem<'a> {
    id: String,
    url: String,
    kind: &'static str,
    village: String,
    village_name: &'static str,
    district: String,
    status: Option<&'a str>,
    title: Option<&'a str>,
    created_at: &'a str,
    updated_at: String,
    seq: u64,
    document: &'a RawValue,
    /// For callers who do not see sensitive fields: the paths withheld from `document`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redacted: Option<Vec<String>>,
}

impl<'a> ReportItem<'a> {
    /// From a stored row; `document` is the row's JSON, not re-parsed.
    pub fn new(row: &'a ReportRow, document: &'a RawValue) -> Self {
        let village = row.village.village();
        ReportItem {
            id: row.id.to_string(),
            url: row.id.url(),
            kind: row.kind.as_str(),
            village: row.village.to_string(),
            village_name: &village.name,
            district: village.district.to_string(),
            status: row.status.as_deref(),
            title: row.title.as_deref(),
            created_at: &row.created_at,
            updated_at: rfc3339_ms(row.updated_at),
            seq: row.last_seq,
            document,
            redacted: None,
        }
    }

    /// Say which paths were withheld from the document (`None`: nothing was redacted).
    pub fn with_redacted(mut self, redacted: Option<Vec<String>>) -> Self {
        self.redacted = redacted;
        self
    }
}

/// One change in a report's history.
#[derive(Serialize, Debug, PartialEq)]
pub struct HistoryEntry {
    /// Change hash (hex).
    pub change: String,
    /// The authenticated device that uploaded it, as the server recorded it (`None` for changes
    /// stored before uploaders were recorded: see `recorded`).
    pub device: Option<DeviceId>,
    /// The person whose device uploaded it.
    pub user: Option<String>,
    /// Whether the server recorded who uploaded this change (`false`: stored by a version that
    /// did not; `actor` is then the only, unverified, trace of its author).
    pub recorded: bool,
    /// The automerge actor (hex) the change names — the uploader's claim, checked since uploaders
    /// are recorded.
    pub actor: String,
    /// The writer's clock (change timestamp, seconds), RFC 3339.
    pub device_time: String,
    /// When the server received it (absent for changes that came inside a snapshot).
    pub received_at: Option<String>,
    /// The seq of the update that brought it.
    pub seq: Option<u64>,
    /// Dotted paths of the fields it changed.
    pub fields: Vec<String>,
}

/// The full view of one report.
#[derive(Serialize)]
pub struct ReportView<'a> {
    #[serde(flatten)]
    item: ReportItem<'a>,
    heads: Vec<String>,
    conflicts: Vec<Conflict>,
    history: Vec<HistoryEntry>,
}

impl<'a> ReportView<'a> {
    /// Build the view.
    pub fn new(
        row: &'a ReportRow,
        document: &'a RawValue,
        doc: &Automerge,
        receipts: &[ChangeReceipt],
        redacted: Option<Vec<String>>,
    ) -> Self {
        let mut conflicts = sync_core::view::conflicts(doc);
        let mut redacted = redacted;
        if let Some(withheld) = redacted.as_mut() {
            // The concurrent values of a sensitive field are as sensitive as the winner.
            for conflict in &mut conflicts {
                for value in &mut conflict.values {
                    withheld.extend(sync_core::redact::redact_at(
                        row.kind,
                        &conflict.path,
                        &mut value.value,
                    ));
                }
            }
            withheld.sort();
            withheld.dedup();
        }
        ReportView {
            item: ReportItem::new(row, document).with_redacted(redacted),
            heads: doc.get_heads().iter().map(|h| h.to_string()).collect(),
            conflicts,
            history: history(doc, receipts),
        }
    }
}

/// The history of a document: every change, oldest first, with the fields it touched.
pub fn history(doc: &Automerge, receipts: &[ChangeReceipt]) -> Vec<HistoryEntry> {
    let received: HashMap<[u8; 32], &ChangeReceipt> =
        receipts.iter().map(|r| (r.hash, r)).collect();
    let mut fields = sync_core::view::FieldsWritten::new(doc);
    doc.get_changes(&[])
        .iter()
        .map(|change| {
            let hash = change.hash();
            let receipt = received.get(&hash.0);
            let uploader = receipt.and_then(|r| r.uploader.as_ref());
            let actor = change.actor_id();
            HistoryEntry {
                change: hash.to_string(),
                device: uploader.map(|u| u.device),
                user: uploader.map(|u| u.user.clone()),
                recorded: uploader.is_some(),
                actor: actor.to_hex_string(),
                device_time: rfc3339_ms(change.timestamp().saturating_mul(1000)),
                received_at: receipt.map(|r| rfc3339_ms(r.received_at)),
                seq: receipt.map(|r| r.seq),
                fields: fields.of(std::slice::from_ref(change)),
            }
        })
        .collect()
}

/// A report id from a path segment: the bare id or its `automerge:` URL.
pub fn parse_id(text: &str) -> Result<ReportId, crate::error::ApiError> {
    text.parse()
        .map_err(|e: sync_core::IdError| crate::error::ApiError::NotFound(e.to_string()))
}
