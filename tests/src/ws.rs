//! A raw automerge-repo WebSocket peer for protocol-level tests: connect, send a message, wait
//! (bounded) for the next one.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sync_core::protocol::repo::{PeerMetadata, RepoMessage};
use tokio_tungstenite::tungstenite::Message;

/// A client WebSocket.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open `url`; `Err(status)` when the server refuses the upgrade with an HTTP answer.
pub async fn connect(url: &str) -> Result<Socket, u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connect to {url}: {e}"),
    }
}

/// Send one protocol message as a binary frame.
pub async fn send(socket: &mut Socket, message: RepoMessage) {
    socket
        .send(Message::Binary(message.encode().into()))
        .await
        .expect("send");
}

/// The next protocol message, or `None` if the connection closes or nothing comes within `wait`.
pub async fn next(socket: &mut Socket, wait: Duration) -> Option<RepoMessage> {
    loop {
        let frame = tokio::time::timeout(wait, socket.next())
            .await
            .ok()??
            .ok()?;
        match frame {
            Message::Binary(bytes) => {
                return Some(RepoMessage::decode(&bytes).expect("server sends valid messages"))
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Send `join` as ephemeral peer `peer`; the server's answer.
pub async fn join(socket: &mut Socket, peer: &str) -> RepoMessage {
    send(
        socket,
        RepoMessage::Join {
            sender_id: peer.into(),
            supported_protocol_versions: vec!["1".into()],
            metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
            },
        },
    )
    .await;
    next(socket, Duration::from_secs(5))
        .await
        .expect("an answer to join")
}

/// A `request` for `document`: what a peer that has none of it sends first.
pub fn request_for(document: &str) -> RepoMessage {
    use sync_core::automerge::sync::{State, SyncDoc};
    RepoMessage::Request {
        sender_id: "p".into(),
        target_id: String::new(),
        document_id: document.into(),
        data: sync_core::automerge::Automerge::new()
            .generate_sync_message(&mut State::new())
            .map(|m| m.encode())
            .unwrap_or_default(),
    }
}
