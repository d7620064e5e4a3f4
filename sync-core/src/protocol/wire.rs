//! The two messages of the device–server exchange and their byte encoding.
//!
//! Every body starts with a 4-byte header — `D` `S` (magic), the protocol version and the message
//! type (1 = request, 2 = response) — followed by the message in the
//! [postcard](https://postcard.jamesmunns.com/wire-format) encoding: unsigned integers as LEB128
//! varints, sequences and byte strings as a varint length and their items, enums as a varint variant
//! index then the variant's fields, `Option` as 0 or 1 then the value, fixed arrays (`[u8; 16]`) as
//! their bytes with no length. `docs/protocol.md` gives each message field by field.
//!
//! **Versions.** A version's message shapes are frozen. Version 1 is the message alone. Version 2
//! adds, after it, a list of [`Extension`]s: tagged additions that a peer which does not know a tag
//! ignores — unless the tag is *critical* (odd), which it must refuse. A server speaks every
//! version in [`VERSIONS`] and answers a request in the request's version, so a device keeps
//! working unchanged whatever the server learns later; a device sends [`BASE_VERSION`], which
//! every server speaks, until it learns what the server speaks (`GET /api/v1/me`,
//! `sync_versions`). What needs a new version, and what an extension: `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::rules::{Refusal, RefusalCode};
use crate::{DeviceId, ReportId, VillageCode};

/// Magic bytes that open every message.
pub const MAGIC: [u8; 2] = *b"DS";
/// The protocol versions this crate speaks, oldest first.
pub const VERSIONS: [u8; 2] = [1, 2];
/// The newest version this crate speaks.
pub const VERSION: u8 = 2;
/// The version every server speaks: what a device sends until it knows better.
pub const BASE_VERSION: u8 = 1;
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
    /// A version this side does not speak.
    #[error("unsupported protocol version {0} (this side speaks versions 1 to {VERSION})")]
    UnsupportedVersion(u8),
    /// A critical extension this side does not know: it may not ignore it.
    #[error("unknown critical extension {0} (this side speaks versions 1 to {VERSION})")]
    UnknownCriticalExtension(u64),
    /// Extensions in a version that has none (1).
    #[error("extensions are not part of protocol version {0}")]
    NoExtensions(u8),
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

/// A tagged addition to a message, from version 2 on. An even tag may be ignored by a peer that
/// does not know it; an odd (critical) one may not: the message is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// What it is (`docs/protocol.md` keeps the registry; none is defined yet).
    pub tag: u64,
    /// Its content, in the encoding its tag defines.
    pub data: Bytes,
}

impl Extension {
    /// Whether a peer that does not know the tag must refuse the message.
    pub fn is_critical(&self) -> bool {
        self.tag & 1 == 1
    }
}

/// Extension tags this crate knows (and so may act on). None yet.
const KNOWN_EXTENSIONS: [u64; 0] = [];

/// A decoded message and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<T> {
    /// The version it was encoded in (answer in the same).
    pub version: u8,
    /// The message.
    pub message: T,
    /// The extensions it carried that this side knows; unknown ones (never critical) are left out.
    pub extensions: Vec<Extension>,
}

fn encode<T: Serialize>(kind: u8, version: u8, msg: &T, extensions: &[Extension]) -> Vec<u8> {
    let version = if VERSIONS.contains(&version) {
        version
    } else {
        BASE_VERSION
    };
    let out = vec![MAGIC[0], MAGIC[1], version, kind];
    // Serializing these plain structs into a Vec cannot fail: postcard only fails on writer errors
    // (none for a Vec) and on types serde cannot express (none here).
    let out = match postcard::to_extend(msg, out) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail on an in-memory Vec: {e}"),
    };
    if version == 1 {
        // Version 1 has no extensions: a peer that speaks only it never gets any.
        return out;
    }
    match postcard::to_extend(extensions, out) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail on an in-memory Vec: {e}"),
    }
}

fn decode<'a, T: Deserialize<'a>>(kind: u8, bytes: &'a [u8]) -> Result<Envelope<T>, WireError> {
    let [m0, m1, version, t, body @ ..] = bytes else {
        return Err(WireError::TooShort(bytes.len()));
    };
    if [*m0, *m1] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if !VERSIONS.contains(version) {
        return Err(WireError::UnsupportedVersion(*version));
    }
    if *t != kind {
        return Err(WireError::WrongType(*t));
    }
    let malformed = |e: postcard::Error| WireError::Malformed(e.to_string());
    let (message, mut rest) = postcard::take_from_bytes(body).map_err(malformed)?;
    let mut extensions = Vec::new();
    if *version >= 2 {
        let (all, after): (Vec<Extension>, _) =
            postcard::take_from_bytes(rest).map_err(malformed)?;
        rest = after;
        for extension in all {
            if KNOWN_EXTENSIONS.contains(&extension.tag) {
                extensions.push(extension);
            } else if extension.is_critical() {
                return Err(WireError::UnknownCriticalExtension(extension.tag));
            }
        }
    }
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(Envelope {
        version: *version,
        message,
        extensions,
    })
}

impl SyncRequest {
    /// Encode with its header, in [`BASE_VERSION`] (every server speaks it).
    pub fn encode(&self) -> Vec<u8> {
        encode(TYPE_REQUEST, BASE_VERSION, self, &[])
    }

    /// Encode in `version` (one of [`VERSIONS`]), with `extensions` from version 2 on.
    pub fn encode_as(&self, version: u8, extensions: &[Extension]) -> Vec<u8> {
        encode(TYPE_REQUEST, version, self, extensions)
    }

    /// Decode untrusted bytes, of any version this side speaks.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Self::open(bytes).map(|e| e.message)
    }

    /// Decode untrusted bytes, with their version and extensions.
    pub fn open(bytes: &[u8]) -> Result<Envelope<Self>, WireError> {
        decode(TYPE_REQUEST, bytes)
    }

    /// Number of uploaded changes.
    pub fn change_count(&self) -> usize {
        self.uploads.iter().map(|u| u.changes.len()).sum()
    }
}

impl SyncResponse {
    /// Encode with its header, in [`BASE_VERSION`].
    pub fn encode(&self) -> Vec<u8> {
        encode(TYPE_RESPONSE, BASE_VERSION, self, &[])
    }

    /// Encode in `version` (the request's), with `extensions` from version 2 on.
    pub fn encode_as(&self, version: u8, extensions: &[Extension]) -> Vec<u8> {
        encode(TYPE_RESPONSE, version, self, extensions)
    }

    /// Decode untrusted bytes, of any version this side speaks.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Self::open(bytes).map(|e| e.message)
    }

    /// Decode untrusted bytes, with their version and extensions.
    pub fn open(bytes: &[u8]) -> Result<Envelope<Self>, WireError> {
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
            SyncRequest::decode(b"DS\x03\x01\x00"),
            Err(WireError::UnsupportedVersion(3))
        );
        assert_eq!(
            SyncRequest::decode(b"DS\x00\x01\x00"),
            Err(WireError::UnsupportedVersion(0))
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
        // Version 2: the message, then its extensions (none: one byte, 0).
        let empty = SyncRequest {
            device: DeviceId::from_bytes([0; 16]),
            positions: vec![],
            uploads: vec![],
        };
        let mut v2 = empty.encode_as(2, &[]);
        assert_eq!(v2[2], 2);
        assert_eq!(v2.last(), Some(&0));
        assert_eq!(SyncRequest::open(&v2).map(|e| e.version), Ok(2));
        v2.pop();
        assert!(matches!(
            SyncRequest::decode(&v2),
            Err(WireError::Malformed(_))
        ));
    }
}
