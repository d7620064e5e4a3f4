//! Entry points for the fuzz targets (`fuzz/`) and their regression test: each feeds untrusted
//! bytes to one decoder and everything behind it, through the same calls the server and the devices
//! make (automerge behind [`crate::guard`] wherever they put it there). None may panic, whatever
//! the bytes: a panic that `guard` contains is an error like any other, one that escapes is a bug.

use automerge::{Automerge, Change};

use std::sync::{Arc, OnceLock};

use crate::rules::{self, Actors, HeldBudget, Judge, Origin, Submission};
use crate::sim::{device_principal, MemoryDevice, MemoryServer};
use crate::{DeviceId, ReportId, ReportKind, VillageCode};

/// Nobody owns anything yet: every actor binds to its first uploader.
struct Nobody;

impl Actors for Nobody {
    fn device_owner(&self, _: DeviceId) -> Option<String> {
        None
    }
    fn actor_owner(&self, _: &automerge::ActorId) -> Option<String> {
        None
    }
}

fn admit_uploaded(doc: &mut Automerge, id: ReportId, changes: Vec<Change>) {
    let by = Arc::new(device_principal(DeviceId::from_bytes([1; 16])));
    let mut budget = HeldBudget::default();
    let mut judge = Judge {
        actors: &Nobody,
        held: &mut budget,
        now: 0,
        schemas: crate::schema::Schemas::builtin(),
    };
    let submissions = changes
        .into_iter()
        .map(|change| Submission {
            change,
            by: by.clone(),
            origin: Origin::Uploaded,
        })
        .collect();
    let _ = rules::admit(doc, id, submissions, &mut judge);
}

fn village() -> Option<VillageCode> {
    VillageCode::parse("6302010001").ok()
}

/// The village profile the server makes for [`village`]: a report that exists, to change or to
/// sync with. Made once (creating it validates it against its schema, which is slow).
fn village_profile() -> Option<(ReportId, Automerge)> {
    static PROFILE: OnceLock<Option<(ReportId, Change)>> = OnceLock::new();
    let (id, genesis) = PROFILE
        .get_or_init(|| {
            let (report, genesis) = crate::Report::village_profile(village()?).ok()?;
            Some((report.id(), genesis))
        })
        .as_ref()?;
    let mut doc = Automerge::new();
    doc.apply_changes([genesis.clone()]).ok()?;
    Some((*id, doc))
}

/// Bytes as the body of `POST /api/v1/sync`, to a server holding one village profile.
pub fn sync_request(bytes: &[u8]) {
    let Some(v) = village() else { return };
    let mut server = MemoryServer::with_village_profiles(&[v]);
    let _ = server.handle(bytes);
}

/// Bytes as the server's answer, to a device with a report waiting to be sent.
pub fn sync_response(bytes: &[u8]) {
    // Made once (creating a report validates it, which is slow), then copied for each input.
    static DEVICE: OnceLock<Option<MemoryDevice>> = OnceLock::new();
    let waiting = DEVICE.get_or_init(|| {
        let mut device = MemoryDevice::new(DeviceId::from_bytes([1; 16]), village()?);
        device
            .create(ReportKind::Incident, &crate::sim::sample_fields("fuzz"))
            .ok()?;
        Some(device)
    });
    if let Some(device) = waiting {
        let _ = device.clone().handle_response(bytes);
    }
}

/// Bytes as an uploaded change of an existing report: parsing and admission.
pub fn change(bytes: &[u8]) {
    let Ok(change) = crate::guard::parse_change(bytes.to_vec()) else {
        return;
    };
    if let Some((id, mut doc)) = village_profile() {
        admit_uploaded(&mut doc, id, vec![change.clone()]);
    }
    // And as the first change of a new report.
    admit_uploaded(
        &mut Automerge::new(),
        ReportId::from_random([9; 16]),
        vec![change],
    );
}

/// Bytes as a stored document (a snapshot, possibly followed by changes): loading and reading.
pub fn stored_doc(bytes: &[u8]) {
    let Ok(doc) = crate::guard::load(bytes) else {
        return;
    };
    let _ = crate::view::materialize(&doc);
    let _ = crate::view::conflicts(&doc);
    let _ = rules::report_kind(&doc);
}

/// Bytes as one WebSocket frame from an automerge-repo peer: the CBOR message decoder, then the
/// server's peer state machine (the one `desa-server` runs) taking it in on a joined connection to
/// a server holding one village profile — as it came, and, when it is a sync message, once more
/// about that profile, so that its changes are judged and its sync message answered from a
/// document with history. A decoded message must survive its own encoding unchanged.
pub fn ws_message(bytes: &[u8]) {
    use crate::protocol::repo::{PeerMetadata, RepoMessage};
    use crate::protocol::server::peer::{Identity, Input, Peer};
    let decoded = RepoMessage::decode(bytes);
    if let Ok(message) = &decoded {
        assert_eq!(
            RepoMessage::decode(&message.encode()).as_ref(),
            Ok(message),
            "a decoded message does not survive its own encoding"
        );
    }
    let Some(v) = village() else { return };
    let server = MemoryServer::with_village_profiles(&[v]);
    let identity = std::sync::Arc::new(Identity {
        peer_id: "server".into(),
        storage_id: "storage".into(),
    });
    let device = DeviceId::from_bytes([1; 16]);
    let mut peer = Peer::new(1, server.principal(device), identity);
    let join = RepoMessage::Join {
        sender_id: "fuzz".into(),
        supported_protocol_versions: vec!["1".into()],
        metadata: PeerMetadata::default(),
    };
    let _ = peer.handle(&server, Input::Frame(join.encode()), 1);
    let _ = peer.handle(&server, Input::Frame(bytes.to_vec()), 2);
    let profile = ReportId::village_profile(v).to_string();
    if let Ok(RepoMessage::Sync { data, .. } | RepoMessage::Request { data, .. }) = decoded {
        let about_profile = RepoMessage::Sync {
            sender_id: "fuzz".into(),
            target_id: "server".into(),
            document_id: profile,
            data,
        };
        let _ = peer.handle(&server, Input::Frame(about_profile.encode()), 3);
    }
}

/// Bytes as the columns the server reads back from its database, decoded the way it decodes them:
/// a report's receipts (postcard), a peer's saved sync state, the materialized JSON, and a
/// snapshot followed by one change of its tail (or held), loaded as `engine::load_working` does —
/// the snapshot, then each change parsed and applied. The first two bytes (little-endian) give the
/// snapshot's length.
pub fn stored_row(bytes: &[u8]) {
    let _ = postcard::from_bytes::<Vec<crate::protocol::server::Receipt>>(bytes);
    let _ = crate::guard::sync_state(bytes);
    let _ = serde_json::from_slice::<serde_json::Value>(bytes);
    let [lo, hi, rest @ ..] = bytes else { return };
    let (snapshot, tail) =
        rest.split_at(usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len()));
    let mut doc = if snapshot.is_empty() {
        Automerge::new()
    } else {
        match crate::guard::load(snapshot) {
            Ok(doc) => doc,
            Err(_) => return,
        }
    };
    if let Ok(change) = crate::guard::parse_change(tail.to_vec()) {
        if crate::guard::apply(&mut doc, vec![change]).is_ok() {
            let _ = crate::view::materialize(&doc);
            let _ = crate::view::conflicts(&doc);
            let _ = rules::report_kind(&doc);
        }
    }
}
