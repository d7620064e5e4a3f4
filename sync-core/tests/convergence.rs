//! Property tests: random offline edit schedules across 3–5 devices and a server, synced in random
//! orders (with lost responses, coordinator edits and merges that break the schema), always end
//! with every device holding exactly the server's documents, and no edit lost: every edit is in
//! the final state or was reported to its device as refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use sync_core::sim::{MemoryDevice, MemoryServer};
use sync_core::{DeviceId, ReportId, Role, Writer};

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Edit(usize, usize, EditKind),
    Sync(usize),
    /// The server commits the request but the device never sees the answer.
    LostSync(usize),
    Coordinator(usize, usize),
}

#[derive(Debug, Clone)]
enum EditKind {
    Title(u8),
    Risk(u8),
    Place(u8),
    Note,
    Narrative,
    /// Long enough that two concurrent ones exceed the narrative limit once merged.
    LongNarrative,
    Person,
}

fn op(devices: usize) -> impl Strategy<Value = Op> {
    let edit = prop_oneof![
        2 => any::<u8>().prop_map(EditKind::Title),
        1 => (0u8..4).prop_map(EditKind::Risk),
        1 => any::<u8>().prop_map(EditKind::Place),
        2 => Just(EditKind::Note),
        2 => Just(EditKind::Narrative),
        2 => Just(EditKind::LongNarrative),
        1 => Just(EditKind::Person),
    ];
    prop_oneof![
        1 => (0..devices).prop_map(Op::Create),
        2 => (0..devices).prop_map(Op::Sync),
        6 => (0..devices, 0..3usize, edit).prop_map(|(d, r, e)| Op::Edit(d, r, e)),
        3 => (0..devices).prop_map(Op::Sync),
        1 => (0..devices).prop_map(Op::LostSync),
        1 => (0..8usize, 0..6usize).prop_map(|(r, s)| Op::Coordinator(r, s)),
    ]
}

fn schedule() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (3usize..=5).prop_flat_map(|n| (Just(n), proptest::collection::vec(op(n), 1..50)))
}

const STATUSES: [&str; 6] = [
    "new",
    "under_review",
    "verified",
    "referred",
    "closed",
    "dismissed",
];
const RISKS: [&str; 4] = ["low", "medium", "high", "urgent"];

/// An edit marker that must survive (or be reported refused on its device).
struct Marker {
    device: usize,
    text: String,
}

fn run(devices: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut server = MemoryServer::new();
    let mut ds: Vec<MemoryDevice> = (0..devices).map(|i| device(i as u8 + 1)).collect();
    let coordinator = Writer {
        actor: DeviceId::from_bytes([0xC0; 16]).actor(0),
        role: Role::Coordinator,
        time: 1,
    };
    let mut markers: Vec<Marker> = Vec::new();
    let mut counter = 0;
    // A shared starting point: two reports every device has, so concurrent edits are common.
    for i in 0..2 {
        new_incident(&mut ds[0], &format!("shared {i}"));
    }
    for d in ds.iter_mut() {
        d.sync_with(&mut server)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let pick = |d: &MemoryDevice, r: usize| -> Option<ReportId> {
        let ids = d.report_ids();
        (!ids.is_empty()).then(|| ids[r % ids.len()])
    };
    for op in ops {
        counter += 1;
        match op {
            Op::Create(d) => {
                new_incident(&mut ds[d], &format!("report {counter}"));
            }
            Op::Edit(d, r, kind) => {
                let Some(id) = pick(&ds[d], r) else { continue };
                let token = format!("<{d}:{counter}>");
                let edits = match kind {
                    EditKind::Title(n) => vec![set("title", json!(format!("title {n}")))],
                    EditKind::Risk(n) => vec![set("risk", json!(RISKS[n as usize]))],
                    EditKind::Place(n) => vec![set("location.place", json!(format!("place {n}")))],
                    EditKind::Note => vec![note(&token, "seen")],
                    EditKind::Narrative => vec![append_text("narrative", &token)],
                    EditKind::LongNarrative => vec![append_text("narrative", &"x".repeat(11_000))],
                    EditKind::Person => {
                        vec![add("people", json!({"role": "witness", "name": token}))]
                    }
                };
                // A local refusal (e.g. the device's own narrative would be too long) commits nothing.
                if ds[d].edit(id, &edits).is_ok()
                    && !matches!(
                        kind,
                        EditKind::LongNarrative
                            | EditKind::Title(_)
                            | EditKind::Risk(_)
                            | EditKind::Place(_)
                    )
                {
                    markers.push(Marker {
                        device: d,
                        text: token,
                    });
                }
            }
            Op::Sync(d) => {
                ds[d]
                    .sync_with(&mut server)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::LostSync(d) => {
                let request = ds[d].request();
                server
                    .handle(&request)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Coordinator(r, s) => {
                let ids = server.report_ids();
                if ids.is_empty() {
                    continue;
                }
                let id = ids[r % ids.len()];
                server
                    .coordinator_edit(id, &[set("status", json!(STATUSES[s]))], &coordinator)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
    }
    // Back in range: everyone syncs until nothing is waiting (re-applied edits need a round).
    for _round in 0..6 {
        for d in ds.iter_mut() {
            d.sync_with(&mut server)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        if ds.iter().all(|d| d.waiting() == 0) {
            break;
        }
    }
    for d in ds.iter_mut() {
        d.sync_with(&mut server)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    for d in &ds {
        prop_assert_eq!(d.waiting(), 0);
        prop_assert_eq!(d.report_ids(), server.report_ids());
        for id in server.report_ids() {
            let local = d.report(&id).unwrap();
            let mut a = local.heads();
            let mut b = server.report(&id).unwrap().doc.get_heads();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
            prop_assert_eq!(local.to_json(), server_json(&server, &id));
        }
    }
    let everything: String = server
        .report_ids()
        .iter()
        .map(|id| server_json(&server, id).to_string())
        .collect();
    for m in &markers {
        let kept = everything.contains(&m.text);
        let reported = !ds[m.device].refusals.is_empty();
        prop_assert!(
            kept || reported,
            "edit {} of device {} was lost silently",
            m.text,
            m.device
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_converge_and_lose_nothing((devices, ops) in schedule()) {
        run(devices, ops)?;
    }
}

/// Encoders round-trip, and decoders refuse garbage without panicking.
mod wire {
    use super::*;
    use sync_core::protocol::{
        Bytes, Position, Scope, ScopePosition, SyncRequest, SyncResponse, Upload,
    };

    fn request() -> impl Strategy<Value = SyncRequest> {
        (
            any::<[u8; 16]>(),
            proptest::collection::vec(
                (
                    any::<u64>(),
                    any::<u64>(),
                    proptest::option::of((any::<u64>(), any::<[u8; 16]>())),
                ),
                0..4,
            ),
            proptest::collection::vec(
                (
                    any::<[u8; 16]>(),
                    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
                ),
                0..4,
            ),
        )
            .prop_map(|(device, positions, uploads)| SyncRequest {
                device: DeviceId::from_bytes(device),
                positions: positions
                    .into_iter()
                    .map(|(v, since, after)| ScopePosition {
                        scope: Scope::Village(v),
                        position: Position {
                            since,
                            after: after.map(|(seq, r)| sync_core::protocol::PageMark {
                                seq,
                                report: ReportId::from_random(r),
                            }),
                        },
                    })
                    .collect(),
                uploads: uploads
                    .into_iter()
                    .map(|(r, cs)| Upload {
                        report: ReportId::from_random(r),
                        changes: cs.into_iter().map(Bytes).collect(),
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request()) {
            prop_assert_eq!(SyncRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SyncRequest::decode(&bytes);
            let _ = SyncResponse::decode(&bytes);
            let mut framed = b"DS\x01\x01".to_vec();
            framed.extend_from_slice(&bytes);
            if let Ok(req) = SyncRequest::decode(&framed) {
                let mut server = MemoryServer::new();
                let _ = server.handle(&req.encode());
            }
        }

        #[test]
        fn truncated_requests_are_refused(req in request(), cut in 1usize..64) {
            let bytes = req.encode();
            let cut = cut.min(bytes.len());
            prop_assert!(SyncRequest::decode(&bytes[..bytes.len() - cut]).is_err());
        }
    }
}
