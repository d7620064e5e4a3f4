//! Entry points for the fuzz targets (`fuzz/`) and their regression test: each feeds untrusted
//! bytes to one decoder and everything behind it. None may panic, whatever the bytes.

use automerge::{Automerge, Change};

use crate::rules::{self, Role};
use crate::sim::{MemoryDevice, MemoryServer};
use crate::{DeviceId, ReportId, ReportKind, VillageCode};

const VOLUNTEER: rules::Access = rules::Access::everywhere(Role::Volunteer);

fn village() -> Option<VillageCode> {
    VillageCode::parse("6302010001").ok()
}

/// Bytes as the body of `POST /api/v1/sync`, to a server holding one village profile.
pub fn sync_request(bytes: &[u8]) {
    let Some(v) = village() else { return };
    let mut server = MemoryServer::with_village_profiles(&[v]);
    let _ = server.handle(bytes);
}

/// Bytes as the server's answer, to a device with a report waiting to be sent.
pub fn sync_response(bytes: &[u8]) {
    let Some(v) = village() else { return };
    let mut device = MemoryDevice::new(DeviceId::from_bytes([1; 16]), v);
    if device
        .create(ReportKind::Incident, &crate::sim::sample_fields("fuzz"))
        .is_ok()
    {
        let _ = device.handle_response(bytes);
    }
}

/// Bytes as an uploaded change of an existing report: parsing and admission.
pub fn change(bytes: &[u8]) {
    let Ok(change) = Change::from_bytes(bytes.to_vec()) else {
        return;
    };
    let Some(v) = village() else { return };
    let Ok((report, genesis)) = crate::Report::village_profile(v) else {
        return;
    };
    let mut doc = Automerge::new();
    if doc.apply_changes([genesis]).is_ok() {
        let _ = rules::admit(&mut doc, report.id(), vec![change.clone()], &VOLUNTEER);
    }
    // And as the first change of a new report.
    let _ = rules::admit(
        &mut Automerge::new(),
        ReportId::from_random([9; 16]),
        vec![change],
        &VOLUNTEER,
    );
}

/// Bytes as a stored document (a snapshot, possibly followed by changes): loading and reading.
pub fn stored_doc(bytes: &[u8]) {
    let Ok(doc) = Automerge::load(bytes) else {
        return;
    };
    let _ = crate::view::materialize(&doc);
    let _ = crate::view::conflicts(&doc);
    let _ = rules::report_kind(&doc);
}

/// Bytes as one WebSocket frame from an automerge-repo peer: the CBOR message decoder, and behind
/// it what the server does with a sync message (document id, automerge sync message, the changes
/// it carries). A decoded message must survive its own encoding unchanged.
pub fn ws_message(bytes: &[u8]) {
    use crate::protocol::repo::{changes_of, RepoMessage};
    let Ok(message) = RepoMessage::decode(bytes) else {
        return;
    };
    assert_eq!(
        RepoMessage::decode(&message.encode()).as_ref(),
        Ok(&message),
        "a decoded message does not survive its own encoding"
    );
    if let RepoMessage::Sync {
        document_id, data, ..
    }
    | RepoMessage::Request {
        document_id, data, ..
    } = &message
    {
        let _ = document_id.parse::<ReportId>();
        if let Ok(sync) = automerge::sync::Message::decode(data) {
            let _ = changes_of(&sync);
        }
    }
}

/// Bytes as the columns the server reads back from its database, decoded the way it decodes them:
/// a report's receipts (postcard), a peer's saved sync state, the materialized JSON, and a
/// snapshot followed by one change of its tail (or held), loaded as `engine::load_working` does —
/// the snapshot, then each change parsed and applied. The first two bytes (little-endian) give the
/// snapshot's length.
pub fn stored_row(bytes: &[u8]) {
    let _ = postcard::from_bytes::<Vec<crate::protocol::server::Receipt>>(bytes);
    let _ = automerge::sync::State::decode(bytes);
    let _ = serde_json::from_slice::<serde_json::Value>(bytes);
    let [lo, hi, rest @ ..] = bytes else { return };
    let (snapshot, tail) =
        rest.split_at(usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len()));
    let mut doc = if snapshot.is_empty() {
        Automerge::new()
    } else {
        match Automerge::load(snapshot) {
            Ok(doc) => doc,
            Err(_) => return,
        }
    };
    if let Ok(change) = Change::from_bytes(tail.to_vec()) {
        if doc.apply_changes([change]).is_ok() {
            let _ = crate::view::materialize(&doc);
            let _ = crate::view::conflicts(&doc);
            let _ = rules::report_kind(&doc);
        }
    }
}
