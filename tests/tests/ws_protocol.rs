//! `/ws` at the level of protocol messages: the handshake, binary frames only, and a document that
//! arrives after a peer asked for it — pushed to that peer, never announced to one that did not ask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use desa_tests::ws::{self, join, next, send, Socket};
use desa_tests::Server;
use futures::SinkExt;
use sync_core::automerge::sync::{State, SyncDoc};
use sync_core::automerge::Automerge;
use sync_core::protocol::repo::RepoMessage;
use sync_core::protocol::{Bytes, SyncRequest, Upload};
use sync_core::{DeviceId, ReportId};
use tokio_tungstenite::tungstenite::Message;

async fn connect(server: &Server) -> Socket {
    ws::connect(&server.ws_url(&server.coordinator))
        .await
        .expect("upgrade")
}

fn incident(id: ReportId) -> sync_core::automerge::Change {
    sync_core::sim::sample_incident(id, DeviceId::from_bytes([7; 16]), "arrives later")
        .unwrap()
        .1
}

#[tokio::test]
async fn handshake_and_binary_frames_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut socket = connect(&server).await;
    match join(&mut socket, "peer-a").await {
        RepoMessage::Peer {
            target_id,
            selected_protocol_version,
            metadata,
            ..
        } => {
            assert_eq!(target_id, "peer-a");
            assert_eq!(selected_protocol_version, "1");
            assert!(metadata.storage_id.is_some() && !metadata.is_ephemeral);
        }
        other => panic!("expected peer, got {other:?}"),
    }
    socket.send(Message::Text("hello".into())).await.unwrap();
    assert!(matches!(
        next(&mut socket, Duration::from_secs(5)).await,
        Some(RepoMessage::Error { .. })
    ));
    assert!(
        next(&mut socket, Duration::from_secs(5)).await.is_none(),
        "the connection is closed"
    );
}

#[tokio::test]
async fn a_document_that_arrives_later_reaches_the_peer_that_asked_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (mut asking, mut other) = (connect(&server).await, connect(&server).await);
    join(&mut asking, "asking").await;
    join(&mut other, "other").await;

    // The asking peer requests a report nobody has created yet.
    let id = ReportId::new_random();
    let mut empty = Automerge::new();
    let mut state = State::new();
    let request = empty
        .generate_sync_message(&mut state)
        .expect("a first message")
        .encode();
    send(
        &mut asking,
        RepoMessage::Request {
            sender_id: "asking".into(),
            target_id: String::new(),
            document_id: id.to_string(),
            data: request,
        },
    )
    .await;
    match next(&mut asking, Duration::from_secs(5)).await {
        Some(RepoMessage::DocUnavailable { document_id, .. }) => {
            assert_eq!(document_id, id.to_string())
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }

    // A field device then creates it over HTTP sync.
    let upload = SyncRequest {
        device: DeviceId::from_bytes([7; 16]),
        positions: vec![],
        uploads: vec![Upload {
            report: id,
            changes: vec![Bytes(incident(id).raw_bytes().to_vec())],
        }],
    };
    let (status, _) = server.post_sync(&upload.encode());
    assert_eq!(status, 200);

    // It is pushed to the peer that asked, which can load it from the sync exchange.
    let pushed = loop {
        match next(&mut asking, Duration::from_secs(10)).await {
            Some(RepoMessage::Sync {
                document_id, data, ..
            }) if document_id == id.to_string() => break data,
            Some(_) => continue,
            None => panic!("the report was not pushed to the peer that asked for it"),
        }
    };
    let message = sync_core::automerge::sync::Message::decode(&pushed).unwrap();
    empty.receive_sync_message(&mut state, message).unwrap();
    if empty.get_heads().is_empty() {
        // The first push may only announce heads; answer it and take the changes.
        let reply = empty.generate_sync_message(&mut state).unwrap().encode();
        send(
            &mut asking,
            RepoMessage::Sync {
                sender_id: "asking".into(),
                target_id: String::new(),
                document_id: id.to_string(),
                data: reply,
            },
        )
        .await;
        while empty.get_heads().is_empty() {
            match next(&mut asking, Duration::from_secs(10)).await {
                Some(RepoMessage::Sync { data, .. }) => {
                    let m = sync_core::automerge::sync::Message::decode(&data).unwrap();
                    empty.receive_sync_message(&mut state, m).unwrap();
                }
                Some(_) => continue,
                None => panic!("no changes came"),
            }
        }
    }
    assert_eq!(
        sync_core::view::materialize(&empty)["title"],
        "arrives later"
    );

    // The peer that never asked hears nothing of it.
    assert!(
        next(&mut other, Duration::from_millis(500)).await.is_none(),
        "announced to a peer that did not ask"
    );
}
