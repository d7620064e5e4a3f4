//! The two messages of the device–server exchange and their byte encoding.
//!
//! Every body starts with a 4-byte header — `D` `S` (magic), the protocol version (1) and the
//! message type (1 = request, 2 = response) — followed by the message in the
//! [postcard](https://postcard.jamesmunns.com/wire-format) encoding: unsigned integers as LEB128
//! varints, sequences and byte strings as a varint length and their items, enums as a varint variant
//! index then the variant's fields, `Option` as 0 or 1 then the value, fixed arrays (`[u8; 16]`) as
//! their bytes with no length. `docs/protocol.md` gives each message field by field.

use serde::{Deserialize, Serialize};

use crate::rules::{Refusal, RefusalCode};
use crate::{DeviceId, ReportId, VillageCode};

/// Magic bytes that open every message.
pub const MAGIC: [u8; 2] = *b"DS";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Header type byte of a [`SyncRequest`].
pub const TYPE_REQUEST: u8 = 1;
/// Header type byte of a [`SyncResponse`].
pub const TYPE_RESPONSE: u8 = 2;

/// A set of reports a device follows. Today a village; several per device later.
///
/// On the wire a village is its numeric code; [`Scope::check`] looks it up, so that an unknown
/// village is a clear refusal of the request rather than a decoding error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every report of one village (its 10-digit code as a number).
    Village(u64),
}

impl Scope {
    /// The scope of a village.
    pub fn village(code: VillageCode) -> Self {
        Scope::Village(code.as_u64())
    }

    /// The village, if it is one of the working area.
    pub fn check(&self) -> Result<VillageCode, crate::VillageError> {
        match self {
            Scope::Village(code) => VillageCode::from_u64(*code),
        }
    }
}

/// Where a device stands in one scope's feed.
///
/// The server numbers every accepted update with an increasing sequence number (`seq`). `since`
/// says the device has every change of the scope up to and including `since`. A catch-up too large
/// for one answer is paged: `after` marks the last report already sent (its seq and id); the next
/// page continues after it with the same `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Every change with a seq up to this one has been received.
    pub since: u64,
    /// Paging mark inside a catch-up, if one is under way.
    pub after: Option<PageMark>,
}

/// The last report sent in a page: the feed is ordered by (seq of the report's latest update, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageMark {
    /// The seq of that report's latest update.
    pub seq: u64,
    /// The report.
    pub report: ReportId,
}

/// A device's position in one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopePosition {
    /// The scope.
    pub scope: Scope,
    /// The position.
    pub position: Position,
}

/// Changes of one report, sent by a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// The report.
    pub report: ReportId,
    /// Raw automerge change chunks, in the device's causal order.
    pub changes: Vec<Bytes>,
}

/// A byte string, encoded as varint length + bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

/// Device → server: everything not yet acknowledged, and where the device stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The device (authentication, a later layer, must agree).
    pub device: DeviceId,
    /// One position per scope the device follows.
    pub positions: Vec<ScopePosition>,
    /// Unacknowledged changes, grouped per report.
    pub uploads: Vec<Upload>,
}

/// The verdict on one uploaded change, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireVerdict {
    /// Durably stored (now or before).
    Accepted,
    /// Refused, never stored or relayed.
    Refused(Refusal),
    /// Kept until these dependencies (change hashes) arrive; the device should send them if it has
    /// them.
    Held(Vec<[u8; 32]>),
}

/// What the device is missing of one report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delta {
    /// Changes to apply (the device has everything they depend on, or will once the rest of the
    /// feed is applied).
    Changes(Vec<Bytes>),
    /// The whole compacted document, to merge: sent when it is smaller than the changes, and to
    /// devices that have none of the report.
    Snapshot(Bytes),
}

/// One report in a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedItem {
    /// The report.
    pub report: ReportId,
    /// What the device is missing of it.
    pub delta: Delta,
}

/// What is new in one scope since the device's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeFeed {
    /// The scope.
    pub scope: Scope,
    /// Reports with something new.
    pub items: Vec<FeedItem>,
    /// The device's position once it has applied `items`. `after` is set when more pages follow.
    pub position: Position,
}

/// The server's state of a report in which some change was refused: the device rebuilds from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    /// The report.
    pub report: ReportId,
    /// The server's whole document; empty if the server has none (its creation was refused).
    pub snapshot: Bytes,
}

/// Server → device: one verdict per uploaded change, and everything the device is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// One verdict per uploaded change, in request order (uploads, then changes within each).
    pub verdicts: Vec<WireVerdict>,
    /// The server's state of each report with a refused change.
    pub rebuilds: Vec<Rebuild>,
    /// One feed per position of the request.
    pub feeds: Vec<ScopeFeed>,
}

impl SyncResponse {
    /// Whether more pages follow in some scope.
    pub fn has_more(&self) -> bool {
        self.feeds.iter().any(|f| f.position.after.is_some())
    }
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the header.
    #[error("message too short ({0} bytes)")]
    TooShort(usize),
    /// Wrong magic bytes.
    #[error("not a desa-sync message (bad magic)")]
    BadMagic,
    /// A version this server does not speak.
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// A request where a response was expected or the other way round.
    #[error("unexpected message type {0}")]
    WrongType(u8),
    /// The body does not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn encode<T: Serialize>(kind: u8, msg: &T) -> Vec<u8> {
    let out = vec![MAGIC[0], MAGIC[1], VERSION, kind];
    // Serializing these plain structs into a Vec cannot fail: postcard only fails on writer errors
    // (none for a Vec) and on types serde cannot express (none here).
    match postcard::to_extend(msg, out) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail on an in-memory Vec: {e}"),
    }
}

fn decode<'a, T: Deserialize<'a>>(kind: u8, bytes: &'a [u8]) -> Result<T, WireError> {
    let [m0, m1, version, t, body @ ..] = bytes else {
        return Err(WireError::TooShort(bytes.len()));
    };
    if [*m0, *m1] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if *version != VERSION {
        return Err(WireError::UnsupportedVersion(*version));
    }
    if *t != kind {
        return Err(WireError::WrongType(*t));
    }
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(msg)
}

impl SyncRequest {
    /// Encode with its header.
    pub fn encode(&self) -> Vec<u8> {
        encode(TYPE_REQUEST, self)
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        decode(TYPE_REQUEST, bytes)
    }

    /// Number of uploaded changes.
    pub fn change_count(&self) -> usize {
        self.uploads.iter().map(|u| u.changes.len()).sum()
    }
}

impl SyncResponse {
    /// Encode with its header.
    pub fn encode(&self) -> Vec<u8> {
        encode(TYPE_RESPONSE, self)
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        decode(TYPE_RESPONSE, bytes)
    }
}

impl Refusal {
    /// A refusal for bytes that are not an automerge change.
    pub fn undecodable(detail: impl Into<String>) -> Self {
        Refusal::new(RefusalCode::Undecodable, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The byte layout documented in docs/protocol.md, pinned.
    #[test]
    fn no_op_request_bytes() {
        let request = SyncRequest {
            device: DeviceId::from_bytes([0x11; 16]),
            positions: vec![ScopePosition {
                scope: Scope::Village(6_302_010_001),
                position: Position {
                    since: 300,
                    after: None,
                },
            }],
            uploads: vec![],
        };
        let bytes = request.encode();
        assert_eq!(
            hex(&bytes),
            "44 53 01 01 \
             10 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 \
             01 00 91 95 84 bd 17 ac 02 00 \
             00"
        );
        assert_eq!(bytes.len(), 32);
    }

    #[test]
    fn response_bytes() {
        let response = SyncResponse {
            verdicts: vec![
                WireVerdict::Accepted,
                WireVerdict::Refused(Refusal {
                    code: RefusalCode::StatusNotPermitted,
                    detail: "no".into(),
                }),
                WireVerdict::Held(vec![[0xAA; 32]]),
            ],
            rebuilds: vec![],
            feeds: vec![ScopeFeed {
                scope: Scope::Village(6_302_010_001),
                items: vec![FeedItem {
                    report: ReportId::from_random([0x22; 16]),
                    delta: Delta::Changes(vec![Bytes(vec![0x85, 0x6f])]),
                }],
                position: Position {
                    since: 301,
                    after: None,
                },
            }],
        };
        let bytes = response.encode();
        let aa = vec!["aa"; 32].join(" ");
        let rid = vec!["22"; 16].join(" ");
        assert_eq!(
            hex(&bytes),
            format!(
                "44 53 01 02 \
                 03 00 01 06 02 6e 6f 02 01 {aa} \
                 00 \
                 01 00 91 95 84 bd 17 01 {rid} 00 01 02 85 6f ad 02 00"
            )
        );
        assert_eq!(SyncResponse::decode(&bytes), Ok(response));
    }

    #[test]
    fn header_errors() {
        assert_eq!(SyncRequest::decode(b"DS"), Err(WireError::TooShort(2)));
        assert_eq!(
            SyncRequest::decode(b"XX\x01\x01\x00"),
            Err(WireError::BadMagic)
        );
        assert_eq!(
            SyncRequest::decode(b"DS\x02\x01\x00"),
            Err(WireError::UnsupportedVersion(2))
        );
        assert_eq!(
            SyncRequest::decode(b"DS\x01\x02\x00"),
            Err(WireError::WrongType(2))
        );
        let mut ok = SyncRequest {
            device: DeviceId::from_bytes([0; 16]),
            positions: vec![],
            uploads: vec![],
        }
        .encode();
        ok.push(0);
        assert_eq!(SyncRequest::decode(&ok), Err(WireError::Trailing(1)));
    }
}
