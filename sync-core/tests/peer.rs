//! The automerge-repo peer protocol at the core: sync-core's peer state machine driven by frames
//! as an automerge-repo client sends them, against the in-memory server (the same writer and rules
//! `desa-server` runs). The client side is automerge's own sync, as the JS client and samod use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{note, village};
use sync_core::automerge::sync::{Message, State, SyncDoc};
use sync_core::automerge::{Automerge, Change};
use sync_core::protocol::repo::{PeerMetadata, RepoMessage};
use sync_core::protocol::server::peer::{Effect, Identity, Input, Peer};
use sync_core::rules::{Access, Role};
use sync_core::sim::{sample_incident, volunteer, MemoryServer};
use sync_core::{DeviceId, Principal, Report, ReportId, VillageCode};

const CLIENT: &str = "client-peer";

fn identity() -> Arc<Identity> {
    Arc::new(Identity {
        peer_id: "server-peer".into(),
        storage_id: "server-storage".into(),
    })
}

/// A connection of `device` (a volunteer of every village), joined.
fn joined(server: &MemoryServer, connection: u64, device: DeviceId) -> Peer {
    let principal = server.principal(device);
    joined_as(server, connection, principal)
}

fn joined_as(server: &MemoryServer, connection: u64, principal: Arc<Principal>) -> Peer {
    let mut peer = Peer::new(connection, principal, identity());
    let effects = send(&mut peer, server, join(Some("phone-storage")));
    assert!(
        matches!(&effects[..], [Effect::Send(RepoMessage::Peer { target_id, selected_protocol_version, .. })]
            if target_id == CLIENT && selected_protocol_version == "1"),
        "{effects:?}"
    );
    peer
}

fn join(storage: Option<&str>) -> RepoMessage {
    RepoMessage::Join {
        sender_id: CLIENT.into(),
        supported_protocol_versions: vec!["1".into()],
        metadata: PeerMetadata {
            storage_id: storage.map(str::to_owned),
            is_ephemeral: false,
        },
    }
}

fn send(peer: &mut Peer, server: &MemoryServer, message: RepoMessage) -> Vec<Effect> {
    peer.handle(server, Input::Frame(message.encode()), server.now())
}

fn sync_message(doc: &str, message: &Message) -> RepoMessage {
    RepoMessage::Sync {
        sender_id: CLIENT.into(),
        target_id: "server-peer".into(),
        document_id: doc.into(),
        data: message.clone().encode(),
    }
}

/// The sync messages among `effects`, for `doc`.
fn syncs(effects: &[Effect], doc: &str) -> Vec<Message> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(RepoMessage::Sync {
                document_id, data, ..
            }) if document_id == doc => Some(Message::decode(data).unwrap()),
            _ => None,
        })
        .collect()
}

fn errors(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(RepoMessage::Error { message }) => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Sync a client's document with the server until neither side has anything to say; every
/// effect the server produced along the way.
fn converse(
    peer: &mut Peer,
    server: &MemoryServer,
    doc: &mut Automerge,
    state: &mut State,
    id: &str,
) -> Vec<Effect> {
    let mut all = Vec::new();
    for _ in 0..20 {
        let Some(message) = doc.generate_sync_message(state) else {
            break;
        };
        let effects = send(peer, server, sync_message(id, &message));
        for answer in syncs(&effects, id) {
            doc.receive_sync_message(state, answer).unwrap();
        }
        all.extend(effects);
    }
    all
}

fn phone(n: u8) -> DeviceId {
    DeviceId::from_bytes([n; 16])
}

/// A report made offline on `device`, and `edits` more changes on top.
fn offline_report(device: DeviceId, title: &str, notes: usize) -> (ReportId, Automerge) {
    let id = ReportId::from_random([title.len() as u8; 16]);
    let (mut report, _) = sample_incident(id, device, title).unwrap();
    for n in 0..notes {
        report
            .edit(
                &[note(&format!("n{n}"), "seen at the harbour")],
                &volunteer(device),
            )
            .unwrap();
    }
    (id, report.into_doc())
}

#[test]
fn join_is_answered_and_an_unknown_protocol_version_closes() {
    let server = MemoryServer::new();
    joined(&server, 1, phone(1));
    let mut peer = Peer::new(2, server.principal(phone(1)), identity());
    let effects = send(
        &mut peer,
        &server,
        RepoMessage::Join {
            sender_id: CLIENT.into(),
            supported_protocol_versions: vec!["9".into()],
            metadata: PeerMetadata::default(),
        },
    );
    assert_eq!(errors(&effects).len(), 1);
    assert_eq!(effects.last(), Some(&Effect::Close));
    // Nothing before join.
    let mut early = Peer::new(3, server.principal(phone(1)), identity());
    let (id, doc) = offline_report(phone(1), "early", 0);
    let message = doc
        .clone()
        .generate_sync_message(&mut State::new())
        .unwrap();
    let effects = send(&mut early, &server, sync_message(&id.to_string(), &message));
    assert_eq!(errors(&effects), vec!["send join first".to_owned()]);
}

#[test]
fn a_report_made_offline_syncs_change_by_change_and_is_audited() {
    let server = MemoryServer::new();
    let mut peer = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "recruiter at the pier", 3);
    let effects = converse(
        &mut peer,
        &server,
        &mut doc,
        &mut State::new(),
        &id.to_string(),
    );
    assert!(errors(&effects).is_empty(), "{effects:?}");
    let stored = server.report(&id).expect("the server has the report");
    assert_eq!(stored.doc.get_heads(), doc.get_heads());
    assert_eq!(stored.doc.get_changes(&[]).len(), 4);
    // One write, via the WebSocket, under the uploader.
    let trail = sync_core::store::AuditStore::audit_entries(server.store(), 0, 100).unwrap();
    let writes: Vec<_> = trail
        .iter()
        .filter(|e| e.record.contains("\"via\":\"ws\"") && e.record.contains("write"))
        .collect();
    assert_eq!(writes.len(), 1, "{trail:?}");
}

#[test]
fn several_changes_in_one_message_are_judged_one_by_one() {
    let server = MemoryServer::new();
    let mut peer = joined(&server, 1, phone(1));
    let (id, doc) = offline_report(phone(1), "many at once", 2);
    // A volunteer's change of status is refused; the notes around it are not.
    let report = Report::from_doc(id, doc).unwrap();
    let status: Change = {
        let mut trial = report.doc().clone();
        trial.set_actor(volunteer(phone(1)).actor);
        let mut tx = trial.transaction();
        sync_core::automerge::transaction::Transactable::put(
            &mut tx,
            sync_core::automerge::ROOT,
            "status",
            "closed",
        )
        .unwrap();
        tx.commit();
        trial.get_last_local_change().unwrap().clone()
    };
    let changes: Vec<Vec<u8>> = report
        .doc()
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .chain([status.raw_bytes().to_vec()])
        .collect();
    let mut message = Automerge::new()
        .generate_sync_message(&mut State::new())
        .unwrap();
    message.heads = vec![status.hash()];
    message.changes = changes.into();
    let effects = send(&mut peer, &server, sync_message(&id.to_string(), &message));
    let said = errors(&effects);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(&status.hash().to_string()), "{said:?}");
    let stored = server.report(&id).expect("the rest is stored");
    assert_eq!(stored.doc.get_changes(&[]).len(), 3);
    // The server's answer never asks for the refused change…
    for answer in syncs(&effects, &id.to_string()) {
        assert!(!answer.need.contains(&status.hash()));
    }
    // …and offered again, it is dropped without a word (samod would reconnect on each error).
    let effects = send(&mut peer, &server, sync_message(&id.to_string(), &message));
    assert!(errors(&effects).is_empty(), "{effects:?}");
    assert_eq!(server.report(&id).unwrap().doc.get_changes(&[]).len(), 3);
}

#[test]
fn a_missing_document_is_unavailable_then_pushed_when_it_appears() {
    let server = MemoryServer::new();
    let mut waiting = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(2), "arrives later", 1);
    let doc_id = id.to_string();
    let mut empty = Automerge::new();
    let mut state = State::new();
    let request = empty.generate_sync_message(&mut state).unwrap();
    let effects = send(
        &mut waiting,
        &server,
        RepoMessage::Request {
            sender_id: CLIENT.into(),
            target_id: "server-peer".into(),
            document_id: doc_id.clone(),
            data: request.encode(),
        },
    );
    assert!(
        matches!(&effects[..], [Effect::Send(RepoMessage::DocUnavailable { document_id, .. })] if *document_id == doc_id),
        "{effects:?}"
    );
    // Another phone uploads it; the commit reaches the waiting connection, which offers it.
    let mut other = joined(&server, 2, phone(2));
    converse(&mut other, &server, &mut doc, &mut State::new(), &doc_id);
    let committed = server.take_committed();
    assert!(committed.contains(&id));
    let effects = waiting.handle(&server, Input::Committed(Arc::new(committed)), server.now());
    let offers = syncs(&effects, &doc_id);
    assert_eq!(offers.len(), 1, "{effects:?}");
    // The waiting client takes it from there.
    let mut state = State::new();
    empty
        .receive_sync_message(&mut state, offers[0].clone())
        .unwrap();
    converse(&mut waiting, &server, &mut empty, &mut state, &doc_id);
    assert_eq!(empty.get_heads(), doc.get_heads());
}

#[test]
fn another_villages_document_is_exactly_a_missing_one() {
    let server = MemoryServer::new();
    let mut author = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "in the first village", 0);
    converse(
        &mut author,
        &server,
        &mut doc,
        &mut State::new(),
        &id.to_string(),
    );
    assert!(server.report(&id).is_some());
    // A volunteer of another village asks for it, and for an id nobody has.
    let elsewhere = VillageCode::parse("6302010002").unwrap();
    assert_ne!(elsewhere, village());
    let outsider = Arc::new(Principal {
        access: Access::in_villages(Role::Volunteer, [elsewhere]),
        ..(*server.principal(phone(3))).clone()
    });
    let ask = |peer: &mut Peer, doc_id: &str| {
        let request = Automerge::new()
            .generate_sync_message(&mut State::new())
            .unwrap();
        let effects = send(
            peer,
            &server,
            RepoMessage::Request {
                sender_id: CLIENT.into(),
                target_id: "server-peer".into(),
                document_id: doc_id.into(),
                data: request.encode(),
            },
        );
        effects
            .into_iter()
            .map(|e| format!("{e:?}").replace(doc_id, "DOC"))
            .collect::<Vec<_>>()
    };
    let mut peer = joined_as(&server, 2, outsider.clone());
    let theirs = ask(&mut peer, &id.to_string());
    let missing = ask(&mut peer, &ReportId::from_random([9; 16]).to_string());
    assert_eq!(theirs, missing);
    // Offering changes to it: refused with the same words as changes to a missing report.
    let (_, mut forged) = offline_report(phone(3), "forged", 1);
    forged.merge(&mut doc.clone()).unwrap();
    let mut peer = joined_as(&server, 3, outsider);
    let effects = converse(
        &mut peer,
        &server,
        &mut forged,
        &mut State::new(),
        &id.to_string(),
    );
    assert!(!errors(&effects).is_empty());
    assert!(errors(&effects)
        .iter()
        .all(|e| e.contains("not permitted") || e.contains("refused")));
    assert_eq!(server.report(&id).unwrap().doc.get_heads(), doc.get_heads());
}

#[test]
fn ephemeral_messages_reach_other_peers_with_the_document_open_once() {
    let server = MemoryServer::new();
    let mut a = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "shared", 0);
    let doc_id = id.to_string();
    converse(&mut a, &server, &mut doc, &mut State::new(), &doc_id);
    let mut b = joined(&server, 2, phone(2));
    let mut copy = Automerge::new();
    converse(&mut b, &server, &mut copy, &mut State::new(), &doc_id);
    let mut c = joined(&server, 3, phone(3)); // has nothing open
    let cursor = |count: u64| RepoMessage::Ephemeral {
        sender_id: CLIENT.into(),
        target_id: "server-peer".into(),
        count,
        session_id: "session-1".into(),
        document_id: doc_id.clone(),
        data: vec![0xa1, 0x61, b'x', 0x01],
    };
    let effects = send(&mut a, &server, cursor(1));
    let [Effect::Relay(relayed)] = &effects[..] else {
        panic!("{effects:?}")
    };
    let relayed = Arc::new(relayed.clone());
    let to_b = b.handle(&server, Input::Relayed(relayed.clone()), server.now());
    assert!(
        matches!(&to_b[..], [Effect::Send(RepoMessage::Ephemeral { count: 1, document_id, .. })] if *document_id == doc_id),
        "{to_b:?}"
    );
    assert!(a
        .handle(&server, Input::Relayed(relayed.clone()), 0)
        .is_empty());
    assert!(c.handle(&server, Input::Relayed(relayed), 0).is_empty());
    // The same count again is a duplicate.
    assert!(send(&mut a, &server, cursor(1)).is_empty());
    assert_eq!(send(&mut a, &server, cursor(2)).len(), 1);
}

/// Ephemeral messages are relayed under the id the peer joined with, whatever sender they name;
/// a flood of new sessions (or of huge session ids) does not grow the connection's memory.
#[test]
fn ephemeral_senders_cannot_be_forged_and_a_flood_of_sessions_is_bounded() {
    use sync_core::protocol::server::peer::{EPHEMERAL_SESSIONS, SESSION_ID_BYTES};
    let server = MemoryServer::new();
    let mut a = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "flooded", 0);
    let doc_id = id.to_string();
    converse(&mut a, &server, &mut doc, &mut State::new(), &doc_id);
    let message = |sender: &str, session: String| RepoMessage::Ephemeral {
        sender_id: sender.into(),
        target_id: "server-peer".into(),
        count: 1,
        session_id: session,
        document_id: doc_id.clone(),
        data: vec![0xa0],
    };
    let effects = send(&mut a, &server, message("coordinator-peer", "s".into()));
    let [Effect::Relay(relayed)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(
        relayed.sender_id, CLIENT,
        "relayed under the joined peer id"
    );
    for n in 0..EPHEMERAL_SESSIONS * 4 {
        send(&mut a, &server, message(CLIENT, format!("session-{n}")));
        assert!(a.ephemeral_sessions() <= EPHEMERAL_SESSIONS);
    }
    let huge = "x".repeat(SESSION_ID_BYTES + 1);
    assert!(send(&mut a, &server, message(CLIENT, huge)).is_empty());
}

#[test]
fn leave_or_a_revoked_device_closes_and_sync_states_are_handed_over() {
    let server = MemoryServer::new();
    let mut peer = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "kept", 0);
    converse(
        &mut peer,
        &server,
        &mut doc,
        &mut State::new(),
        &id.to_string(),
    );
    let (storage, states) = peer.sync_states().expect("a peer with a storage id");
    assert!(storage.ends_with("/phone-storage"));
    assert_eq!(states.len(), 1);
    assert_eq!(
        send(
            &mut peer,
            &server,
            RepoMessage::Leave {
                sender_id: CLIENT.into()
            }
        ),
        vec![Effect::Close]
    );
    let mut other = joined(&server, 2, phone(2));
    let effects = other.handle(&server, Input::Access(None), 0);
    assert_eq!(
        errors(&effects),
        vec!["this device has been revoked".to_owned()]
    );
    assert_eq!(effects.last(), Some(&Effect::Close));
    // Unchanged access goes on; changed access closes (the device reconnects with the new one).
    let mut third = joined(&server, 3, phone(3));
    let same = server.principal(phone(3));
    assert!(third
        .handle(&server, Input::Access(Some(same.clone())), 0)
        .is_empty());
    let fewer = Arc::new(Principal {
        access: Access::in_villages(Role::Volunteer, [village()]),
        ..(*same).clone()
    });
    let effects = third.handle(&server, Input::Access(Some(fewer)), 0);
    assert_eq!(effects.last(), Some(&Effect::Close));
    // Garbage is an error, not a close.
    let effects = third.handle(&server, Input::Frame(vec![0xff, 0x00]), 0);
    assert_eq!(errors(&effects).len(), 1);
    assert!(!effects.contains(&Effect::Close));
}

/// An automerge-repo client whose advertised heads lag behind its document (two people typing
/// into one narrative) answers every answer with the same message. The server answers it once:
/// the same answer again would tell the client nothing, and the ping-pong would cost the field's
/// bytes and, counted as a stalled sync, the connection.
#[test]
fn the_same_idle_message_again_is_not_answered_again() {
    let server = MemoryServer::new();
    let mut typist = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "two typists", 1);
    let doc_id = id.to_string();
    let mut state = State::new();
    converse(&mut typist, &server, &mut doc, &mut state, &doc_id);
    // The client's view as it was before the next edit reached it.
    let lagging = doc.clone();
    // The same person edits on another connection; the commit is pushed to the first.
    let report = Report::from_doc(id, doc.clone()).unwrap();
    let mut other_doc = report.into_doc();
    let mut edited = Report::from_doc(id, other_doc.clone()).unwrap();
    edited
        .edit(&[note("n9", "a second boat")], &volunteer(phone(1)))
        .unwrap();
    other_doc = edited.into_doc();
    let mut other = joined(&server, 2, phone(1));
    converse(
        &mut other,
        &server,
        &mut other_doc,
        &mut State::new(),
        &doc_id,
    );
    let committed = server.take_committed();
    let pushed = typist.handle(&server, Input::Committed(Arc::new(committed)), server.now());
    assert_eq!(syncs(&pushed, &doc_id)[0].changes.len(), 1, "{pushed:?}");
    // The lagging message, sent again and again: answered once, then not at all.
    let stale = lagging.generate_sync_message(&mut State::new()).unwrap();
    let first = syncs(
        &send(&mut typist, &server, sync_message(&doc_id, &stale)),
        &doc_id,
    );
    assert_eq!(first.len(), 1);
    assert!(first[0].changes.is_empty() && first[0].need.is_empty());
    for _ in 0..100 {
        let again = send(&mut typist, &server, sync_message(&doc_id, &stale));
        assert!(again.is_empty(), "{again:?}");
    }
    // Anything new is answered as always: the client's next edit.
    let mut state = State::new();
    let mut next = Report::from_doc(id, other_doc.clone()).unwrap();
    next.edit(&[note("n10", "the boat left")], &volunteer(phone(1)))
        .unwrap();
    let mut next_doc = next.into_doc();
    let effects = converse(&mut typist, &server, &mut next_doc, &mut state, &doc_id);
    assert!(errors(&effects).is_empty(), "{effects:?}");
    assert_eq!(
        server.report(&id).unwrap().doc.get_heads(),
        next_doc.get_heads()
    );
}

/// A sync that asks in vain — the client advertises a change it believes it sent, which the
/// server never got and automerge does not resend on the same connection — is closed after
/// [`MAX_STALLED_ANSWERS`] answers, so that the client reconnects with a fresh state.
#[test]
fn a_sync_that_asks_in_vain_is_closed() {
    use sync_core::protocol::server::peer::MAX_STALLED_ANSWERS;
    let server = MemoryServer::new();
    let mut peer = joined(&server, 1, phone(1));
    let (id, mut doc) = offline_report(phone(1), "lost change", 1);
    let doc_id = id.to_string();
    converse(&mut peer, &server, &mut doc, &mut State::new(), &doc_id);
    let mut report = Report::from_doc(id, doc).unwrap();
    report
        .edit(&[note("n5", "never arrives")], &volunteer(phone(1)))
        .unwrap();
    let doc = report.into_doc();
    // Its heads, none of its changes.
    let claim = doc.generate_sync_message(&mut State::new()).unwrap();
    assert!(claim.changes.is_empty());
    let mut answers = 0;
    for _ in 0..=MAX_STALLED_ANSWERS + 1 {
        let effects = send(&mut peer, &server, sync_message(&doc_id, &claim));
        for answer in syncs(&effects, &doc_id) {
            assert_eq!(answer.need, doc.get_heads(), "the server asks for it");
            answers += 1;
        }
        if effects.iter().any(|e| matches!(e, Effect::Close)) {
            let said = errors(&effects);
            assert!(
                said.iter().any(|e| e.contains("not converging")),
                "{said:?}"
            );
            assert!(answers >= MAX_STALLED_ANSWERS as usize, "{answers} answers");
            return;
        }
    }
    panic!("a stalled sync was never closed ({answers} answers)");
}
