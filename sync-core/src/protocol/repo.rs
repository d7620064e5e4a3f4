//! The automerge-repo network protocol (version "1"), as `@automerge/automerge-repo` 2.5 and `samod`
//! speak it over WebSocket: one CBOR map per binary frame.
//!
//! Decoding is lenient where real clients are (unknown keys, CBOR `undefined`, floats where an
//! integer is expected) and strict where it matters (a message without its type, or a sync message
//! without a document id, is an error). Sync payloads (`data`) are automerge sync messages and are
//! not interpreted here.

use ciborium::Value;

use crate::guard::screen::{self, Chunk};

/// The protocol version this server selects.
pub const PROTOCOL_VERSION: &str = "1";

/// Metadata a peer announces about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// A stable id of the peer's storage, if it persists documents (sync state may then be kept
    /// for it across connections).
    pub storage_id: Option<String>,
    /// Whether the peer keeps nothing across connections.
    pub is_ephemeral: bool,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum RepoMessage {
    /// Client → server: the handshake.
    Join {
        /// The client's peer id.
        sender_id: String,
        /// Protocol versions it speaks.
        supported_protocol_versions: Vec<String>,
        /// About the client.
        metadata: PeerMetadata,
    },
    /// Server → client: the handshake answer.
    Peer {
        /// The server's peer id.
        sender_id: String,
        /// The client's peer id.
        target_id: String,
        /// Always [`PROTOCOL_VERSION`].
        selected_protocol_version: String,
        /// About the server.
        metadata: PeerMetadata,
    },
    /// "I want this document" (a sync message from a peer that may not have it).
    Request {
        /// Sender.
        sender_id: String,
        /// Recipient.
        target_id: String,
        /// The document (automerge-repo id).
        document_id: String,
        /// An automerge sync message.
        data: Vec<u8>,
    },
    /// A sync message for a document.
    Sync {
        /// Sender.
        sender_id: String,
        /// Recipient.
        target_id: String,
        /// The document.
        document_id: String,
        /// An automerge sync message.
        data: Vec<u8>,
    },
    /// "I do not have this document."
    DocUnavailable {
        /// Sender.
        sender_id: String,
        /// Recipient.
        target_id: String,
        /// The document.
        document_id: String,
    },
    /// Application data about a document, relayed to its other peers and never stored.
    Ephemeral {
        /// Sender.
        sender_id: String,
        /// Recipient.
        target_id: String,
        /// Increases per message of a session (used to drop duplicates).
        count: u64,
        /// The sender's session.
        session_id: String,
        /// The document.
        document_id: String,
        /// Opaque payload.
        data: Vec<u8>,
    },
    /// A problem, in words (the JavaScript client only logs it).
    Error {
        /// What went wrong.
        message: String,
    },
    /// The peer is leaving (automerge-repo 1.x).
    Leave {
        /// Sender.
        sender_id: String,
    },
    /// Any other type (`remote-subscription-change`, `remote-heads-changed`…): ignored.
    Other {
        /// Its type.
        kind: String,
    },
}

/// Why bytes are not a protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoWireError {
    /// Not CBOR.
    #[error("not CBOR: {0}")]
    NotCbor(String),
    /// CBOR, but not a map.
    #[error("a message must be a CBOR map")]
    NotAMap,
    /// A required field is missing or of the wrong type.
    #[error("{kind} message without a valid {field}")]
    Missing {
        /// Message type.
        kind: String,
        /// The field.
        field: &'static str,
    },
}

/// Messages larger than this are refused before decoding (the server's WebSocket frame limit is
/// the same).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
        .map(|(_, v)| v)
}

fn text(map: &[(Value, Value)], key: &str) -> Option<String> {
    match get(map, key)? {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    }
}

fn bytes(map: &[(Value, Value)], key: &str) -> Option<Vec<u8>> {
    match get(map, key)? {
        Value::Bytes(b) => Some(b.clone()),
        _ => None,
    }
}

fn count(map: &[(Value, Value)], key: &str) -> Option<u64> {
    match get(map, key)? {
        Value::Integer(i) => u64::try_from(i128::from(*i)).ok(),
        Value::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 9.0e15 => Some(*f as u64),
        _ => None,
    }
}

fn metadata(map: &[(Value, Value)]) -> PeerMetadata {
    let Some(Value::Map(meta)) = get(map, "peerMetadata") else {
        return PeerMetadata::default();
    };
    PeerMetadata {
        storage_id: text(meta, "storageId"),
        is_ephemeral: matches!(get(meta, "isEphemeral"), Some(Value::Bool(true))),
    }
}

impl RepoMessage {
    /// Decode one message (one binary frame).
    pub fn decode(frame: &[u8]) -> Result<RepoMessage, RepoWireError> {
        let value: Value =
            ciborium::from_reader(frame).map_err(|e| RepoWireError::NotCbor(e.to_string()))?;
        let Value::Map(map) = value else {
            return Err(RepoWireError::NotAMap);
        };
        let kind = text(&map, "type").ok_or(RepoWireError::Missing {
            kind: "untyped".into(),
            field: "type",
        })?;
        let need = |field: &'static str| RepoWireError::Missing {
            kind: kind.clone(),
            field,
        };
        let sender = || text(&map, "senderId").ok_or_else(|| need("senderId"));
        let target = || text(&map, "targetId").unwrap_or_default();
        let doc = || text(&map, "documentId").ok_or_else(|| need("documentId"));
        Ok(match kind.as_str() {
            "join" => RepoMessage::Join {
                sender_id: sender()?,
                supported_protocol_versions: match get(&map, "supportedProtocolVersions") {
                    Some(Value::Array(vs)) => vs
                        .iter()
                        .filter_map(|v| match v {
                            Value::Text(t) => Some(t.clone()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
                metadata: metadata(&map),
            },
            "peer" => RepoMessage::Peer {
                sender_id: sender()?,
                target_id: target(),
                selected_protocol_version: text(&map, "selectedProtocolVersion")
                    .unwrap_or_default(),
                metadata: metadata(&map),
            },
            "request" | "sync" => {
                let (sender_id, target_id, document_id) = (sender()?, target(), doc()?);
                let data = bytes(&map, "data").ok_or_else(|| need("data"))?;
                if kind == "request" {
                    RepoMessage::Request {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                } else {
                    RepoMessage::Sync {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                }
            }
            "doc-unavailable" => RepoMessage::DocUnavailable {
                sender_id: sender()?,
                target_id: target(),
                document_id: doc()?,
            },
            "ephemeral" => RepoMessage::Ephemeral {
                sender_id: sender()?,
                target_id: target(),
                count: count(&map, "count").ok_or_else(|| need("count"))?,
                session_id: text(&map, "sessionId").ok_or_else(|| need("sessionId"))?,
                document_id: doc()?,
                data: bytes(&map, "data").unwrap_or_default(),
            },
            "error" => RepoMessage::Error {
                message: text(&map, "message").unwrap_or_default(),
            },
            "leave" => RepoMessage::Leave {
                sender_id: sender()?,
            },
            _ => RepoMessage::Other { kind },
        })
    }

    /// Encode as one CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        let t = |s: &str| Value::Text(s.to_owned());
        let entry = |k: &str, v: Value| (t(k), v);
        let meta = |m: &PeerMetadata| {
            let mut fields = vec![entry("isEphemeral", Value::Bool(m.is_ephemeral))];
            if let Some(id) = &m.storage_id {
                fields.push(entry("storageId", t(id)));
            }
            Value::Map(fields)
        };
        let map = match self {
            RepoMessage::Join {
                sender_id,
                supported_protocol_versions,
                metadata,
            } => vec![
                entry("type", t("join")),
                entry("senderId", t(sender_id)),
                entry(
                    "supportedProtocolVersions",
                    Value::Array(supported_protocol_versions.iter().map(|v| t(v)).collect()),
                ),
                entry("peerMetadata", meta(metadata)),
            ],
            RepoMessage::Peer {
                sender_id,
                target_id,
                selected_protocol_version,
                metadata,
            } => vec![
                entry("type", t("peer")),
                entry("senderId", t(sender_id)),
                entry("targetId", t(target_id)),
                entry("selectedProtocolVersion", t(selected_protocol_version)),
                entry("peerMetadata", meta(metadata)),
            ],
            RepoMessage::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
            | RepoMessage::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            } => vec![
                entry(
                    "type",
                    t(if matches!(self, RepoMessage::Request { .. }) {
                        "request"
                    } else {
                        "sync"
                    }),
                ),
                entry("senderId", t(sender_id)),
                entry("targetId", t(target_id)),
                entry("documentId", t(document_id)),
                entry("data", Value::Bytes(data.clone())),
            ],
            RepoMessage::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            } => vec![
                entry("type", t("doc-unavailable")),
                entry("senderId", t(sender_id)),
                entry("targetId", t(target_id)),
                entry("documentId", t(document_id)),
            ],
            RepoMessage::Ephemeral {
                sender_id,
                target_id,
                count,
                session_id,
                document_id,
                data,
            } => vec![
                entry("type", t("ephemeral")),
                entry("senderId", t(sender_id)),
                entry("targetId", t(target_id)),
                entry("count", Value::Integer((*count).into())),
                entry("sessionId", t(session_id)),
                entry("documentId", t(document_id)),
                entry("data", Value::Bytes(data.clone())),
            ],
            RepoMessage::Error { message } => {
                vec![entry("type", t("error")), entry("message", t(message))]
            }
            RepoMessage::Leave { sender_id } => {
                vec![entry("type", t("leave")), entry("senderId", t(sender_id))]
            }
            RepoMessage::Other { kind } => vec![entry("type", t(kind))],
        };
        let mut out = Vec::new();
        // Writing a Value into a Vec cannot fail.
        let _ = ciborium::into_writer(&Value::Map(map), &mut out);
        out
    }
}

/// The changes a sync message carries, unpacked for judging.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Every change the message's chunks hold that could be read, one by one.
    pub changes: Vec<automerge::Change>,
    /// Document chunks holding changes whose dependencies are in neither the base document nor
    /// the message: automerge reads a partial document only on top of what it builds on, so
    /// those changes could not be read yet. Whoever keeps them may offer them again, with a later
    /// message that brings their dependencies.
    pub incomplete: Vec<Vec<u8>>,
}

/// The changes carried by an automerge sync message, one by one (so that each can be judged),
/// whatever its entries pack them in: one change, several change chunks end to end (automerge
/// 0.12's V2 messages), a whole document, or a *partial* document — automerge 3's way of
/// sending several changes — whose changes build on changes `base` (the receiver's document) or
/// earlier chunks already hold, and which automerge reads only on top of them.
///
/// `base` must be a document the sender may see (the report as stored, for a peer of its
/// village), or an empty one: which chunks can be read must not depend on a document the sender
/// may not see.
pub fn changes_of(
    message: &automerge::sync::Message,
    base: &automerge::Automerge,
) -> Result<Unpacked, String> {
    let mut out = Unpacked::default();
    // The base with what the message carried so far, built when a partial document needs it.
    let mut scratch: Option<automerge::Automerge> = None;
    for entry in message.changes.iter() {
        let chunks = screen::split(entry).map_err(|e| format!("sync message: {e}"))?;
        for Chunk { kind, bytes, .. } in chunks {
            let read = match kind {
                screen::CHANGE | screen::COMPRESSED => {
                    crate::guard::parse_change(bytes.to_vec()).map(|c| vec![c])
                }
                screen::DOCUMENT => {
                    // A whole or a partial document, read on top of what it may build on; only
                    // the changes the base lacks come out.
                    let s = match scratch.as_mut() {
                        Some(s) => s,
                        None => {
                            let mut s = base.clone();
                            let _ = crate::guard::apply(&mut s, out.changes.clone());
                            scratch.insert(s)
                        }
                    };
                    let before = s.get_heads();
                    crate::guard::load_incremental(s, bytes)
                        .map_err(|e| format!("sync message document chunk: {e}"))?;
                    // Changes automerge queued for their dependencies (this chunk's, or an
                    // earlier one's that this chunk did not complete).
                    if !automerge::ReadDoc::get_missing_deps(s, &[]).is_empty() {
                        out.incomplete.push(bytes.to_vec());
                    }
                    out.changes.extend(s.get_changes(&before));
                    continue;
                }
                screen::BUNDLE => return Err(format!("sync message: {}", screen::Refused::Bundle)),
                other => return Err(format!("unknown automerge chunk type {other}")),
            };
            match read {
                Ok(changes) => {
                    if let Some(s) = scratch.as_mut() {
                        // Best effort: a change that does not apply here is judged later.
                        let _ = crate::guard::apply(s, changes.clone());
                    }
                    out.changes.extend(changes);
                }
                Err(e) => return Err(format!("sync message chunk: {e}")),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let meta = PeerMetadata {
            storage_id: Some("s1".into()),
            is_ephemeral: false,
        };
        let messages = vec![
            RepoMessage::Join {
                sender_id: "a".into(),
                supported_protocol_versions: vec!["1".into()],
                metadata: meta.clone(),
            },
            RepoMessage::Peer {
                sender_id: "srv".into(),
                target_id: "a".into(),
                selected_protocol_version: "1".into(),
                metadata: meta,
            },
            RepoMessage::Request {
                sender_id: "a".into(),
                target_id: "srv".into(),
                document_id: "d".into(),
                data: vec![0x42, 1],
            },
            RepoMessage::Sync {
                sender_id: "a".into(),
                target_id: "srv".into(),
                document_id: "d".into(),
                data: vec![0x42],
            },
            RepoMessage::DocUnavailable {
                sender_id: "srv".into(),
                target_id: "a".into(),
                document_id: "d".into(),
            },
            RepoMessage::Ephemeral {
                sender_id: "a".into(),
                target_id: "b".into(),
                count: 7,
                session_id: "s".into(),
                document_id: "d".into(),
                data: vec![1],
            },
            RepoMessage::Error {
                message: "no".into(),
            },
            RepoMessage::Leave {
                sender_id: "a".into(),
            },
        ];
        for m in messages {
            assert_eq!(RepoMessage::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn lenient_where_clients_are() {
        // A JS-style join: unknown keys, `undefined` (0xf7) for a missing storage id.
        let value = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("join".into())),
            (Value::Text("senderId".into()), Value::Text("peer-1".into())),
            (
                Value::Text("supportedProtocolVersions".into()),
                Value::Array(vec![Value::Text("1".into())]),
            ),
            (
                Value::Text("peerMetadata".into()),
                Value::Map(vec![(Value::Text("isEphemeral".into()), Value::Bool(true))]),
            ),
            (Value::Text("unknownKey".into()), Value::Float(1.5)),
        ]);
        let mut frame = Vec::new();
        ciborium::into_writer(&value, &mut frame).expect("encode");
        let decoded = RepoMessage::decode(&frame).expect("decodes");
        assert!(matches!(
            decoded,
            RepoMessage::Join {
                metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: true
                },
                ..
            }
        ));
        // undefined as a value
        let with_undefined = [
            0xa2, 0x64, b't', b'y', b'p', b'e', 0x65, b'l', b'e', b'a', b'v', b'e', 0x68, b's',
            b'e', b'n', b'd', b'e', b'r', b'I', b'd', 0xf7,
        ];
        assert!(
            RepoMessage::decode(&with_undefined).is_err(),
            "leave without a sender id"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(RepoMessage::decode(b"").is_err());
        assert!(RepoMessage::decode(&[0xff, 0x00]).is_err());
        assert_eq!(RepoMessage::decode(&[0x01]), Err(RepoWireError::NotAMap));
        let sync_without_doc = RepoMessage::Other {
            kind: "sync".into(),
        }
        .encode();
        assert!(matches!(
            RepoMessage::decode(&sync_without_doc),
            Err(RepoWireError::Missing { .. })
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unpack_tests {
    use automerge::sync::{Message, State, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    use super::changes_of;

    /// A document with one change, and three more changes on top of it, each building on the last.
    fn base_and_three() -> (Automerge, Automerge) {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "title", "first").unwrap();
        tx.commit();
        let base = doc.clone();
        for i in 0..3 {
            let mut tx = doc.transaction();
            tx.put(ROOT, "title", format!("edit {i}")).unwrap();
            tx.commit();
        }
        (base, doc)
    }

    fn message_with(entries: Vec<Vec<u8>>) -> Message {
        let mut m = Automerge::new()
            .generate_sync_message(&mut State::new())
            .unwrap();
        m.changes = entries.into();
        m
    }

    #[test]
    fn change_chunks_end_to_end_and_documents_are_read_change_by_change_and_bundles_refused() {
        let (base, doc) = base_and_three();
        let new = doc.get_changes(&base.get_heads());
        // automerge 0.12's V2 message: the changes' chunks concatenated in one entry.
        let joined = message_with(vec![doc.save_after(&base.get_heads())]);
        let hashes = |cs: &[automerge::Change]| cs.iter().map(|c| c.hash()).collect::<Vec<_>>();
        let unpacked = changes_of(&joined, &base).unwrap();
        assert_eq!(hashes(&unpacked.changes), hashes(&new));
        assert!(unpacked.incomplete.is_empty());
        // A bundle of the three: refused (guard::screen), and nothing of the message is read.
        let bundle = doc.bundle(new.iter().map(|c| c.hash())).unwrap();
        let bundled = message_with(vec![
            doc.save_after(&base.get_heads()),
            bundle.bytes().to_vec(),
        ]);
        assert!(changes_of(&bundled, &base).is_err());
        // A whole document: only what the base lacks comes out.
        let whole = message_with(vec![doc.save()]);
        let unpacked = changes_of(&whole, &base).unwrap();
        assert_eq!(unpacked.changes.len(), 3);
        // Garbage is an error, not a panic.
        assert!(changes_of(&message_with(vec![vec![0x85, 0x6f, 0x4a, 0x83, 1]]), &base).is_err());
    }

    /// What automerge 3.5 (JS) sends (`tests/js/document-chunks.mjs` made them): a document of
    /// one change, and the document chunk its sync message carries after four more changes — the
    /// whole document, every time, which a reader without the base would take in whole.
    const BASE: &[u8] = include_bytes!("fixtures/base.automerge");
    const AFTER_BASE: &[u8] = include_bytes!("fixtures/document-after-base.chunk");

    #[test]
    fn a_document_chunk_yields_only_what_the_base_lacks() {
        let base = Automerge::load(BASE).unwrap();
        let message = message_with(vec![AFTER_BASE.to_vec()]);
        let unpacked = changes_of(&message, &base).unwrap();
        assert_eq!(unpacked.changes.len(), 4);
        assert!(unpacked.incomplete.is_empty());
        let base_hash = base.get_heads()[0];
        assert!(unpacked.changes.iter().all(|c| c.hash() != base_hash));
        // From nothing: all five, the first one included.
        let unpacked = changes_of(&message, &Automerge::new()).unwrap();
        assert_eq!(unpacked.changes.len(), 5);
    }
}
