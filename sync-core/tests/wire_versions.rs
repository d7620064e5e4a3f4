//! Old devices and new servers: the sync exchange's versions (`docs/protocol.md`, Versions).
//!
//! `v1` below is the codec a device released with protocol version 1 runs, kept verbatim: the
//! property tests check that whatever such a device sends, a server of today reads, and that what
//! the server answers it, it reads; and that version 2's extensions are ignored or refused as the
//! rules say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use proptest::prelude::*;
use sync_core::protocol::wire::{Extension, VERSION, VERSIONS};
use sync_core::protocol::{
    Bytes, Delta, FeedItem, PageMark, Position, Rebuild, Scope, ScopeFeed, ScopePosition,
    SyncRequest, SyncResponse, Upload, WireError, WireVerdict,
};
use sync_core::rules::{Refusal, RefusalCode};
use sync_core::sim::{MemoryDevice, MemoryServer};
use sync_core::{DeviceId, ReportId};

/// The codec of protocol version 1, as released.
mod v1 {
    use serde::{Deserialize, Serialize};

    pub fn encode<T: Serialize>(kind: u8, msg: &T) -> Vec<u8> {
        let out = vec![b'D', b'S', 1, kind];
        postcard::to_extend(msg, out).unwrap()
    }

    pub fn decode<'a, T: Deserialize<'a>>(kind: u8, bytes: &'a [u8]) -> Result<T, String> {
        let [m0, m1, version, t, body @ ..] = bytes else {
            return Err("too short".into());
        };
        if [*m0, *m1] != *b"DS" {
            return Err("bad magic".into());
        }
        if *version != 1 {
            return Err(format!("unsupported protocol version {version}"));
        }
        if *t != kind {
            return Err(format!("type {t}"));
        }
        let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        Ok(msg)
    }
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes)
}

fn report() -> impl Strategy<Value = ReportId> {
    any::<[u8; 16]>().prop_map(ReportId::from_random)
}

fn position() -> impl Strategy<Value = Position> {
    (any::<u64>(), proptest::option::of((any::<u64>(), report()))).prop_map(|(since, after)| {
        Position {
            since,
            after: after.map(|(seq, report)| PageMark { seq, report }),
        }
    })
}

fn request() -> impl Strategy<Value = SyncRequest> {
    (
        any::<[u8; 16]>(),
        proptest::collection::vec((any::<u64>(), position()), 0..4),
        proptest::collection::vec((report(), proptest::collection::vec(bytes(), 0..4)), 0..4),
    )
        .prop_map(|(device, positions, uploads)| SyncRequest {
            device: DeviceId::from_bytes(device),
            positions: positions
                .into_iter()
                .map(|(code, position)| ScopePosition {
                    scope: Scope::Village(code),
                    position,
                })
                .collect(),
            uploads: uploads
                .into_iter()
                .map(|(report, changes)| Upload { report, changes })
                .collect(),
        })
}

fn verdict() -> impl Strategy<Value = WireVerdict> {
    prop_oneof![
        Just(WireVerdict::Accepted),
        "[a-z ]{0,30}"
            .prop_map(|detail| WireVerdict::Refused(Refusal::new(RefusalCode::Schema, detail))),
        proptest::collection::vec(any::<[u8; 32]>(), 0..3).prop_map(WireVerdict::Held),
    ]
}

fn response() -> impl Strategy<Value = SyncResponse> {
    let item = (
        report(),
        prop_oneof![
            proptest::collection::vec(bytes(), 0..3).prop_map(Delta::Changes),
            bytes().prop_map(Delta::Snapshot),
        ],
    )
        .prop_map(|(report, delta)| FeedItem { report, delta });
    let feed = (
        any::<u64>(),
        proptest::collection::vec(item, 0..3),
        position(),
    )
        .prop_map(|(code, items, position)| ScopeFeed {
            scope: Scope::Village(code),
            items,
            position,
        });
    (
        proptest::collection::vec(verdict(), 0..4),
        proptest::collection::vec(
            (report(), bytes()).prop_map(|(report, snapshot)| Rebuild { report, snapshot }),
            0..2,
        ),
        proptest::collection::vec(feed, 0..3),
    )
        .prop_map(|(verdicts, rebuilds, feeds)| SyncResponse {
            verdicts,
            rebuilds,
            feeds,
        })
}

fn extensions(critical: bool) -> impl Strategy<Value = Vec<Extension>> {
    proptest::collection::vec((any::<u64>(), bytes()), 0..4).prop_map(move |all| {
        all.into_iter()
            .map(|(tag, data)| Extension {
                tag: if critical { tag | 1 } else { tag & !1 },
                data,
            })
            .collect()
    })
}

proptest! {
    /// What an old device sends, a server of today reads as it was meant; what the server answers
    /// it (in the request's version), the old device reads.
    #[test]
    fn an_old_device_and_a_new_server_understand_each_other(
        req in request(),
        resp in response(),
    ) {
        let sent = v1::encode(1, &req);
        let read = SyncRequest::open(&sent).unwrap();
        prop_assert_eq!(read.version, 1);
        prop_assert_eq!(&read.message, &req);
        let answer = resp.encode_as(read.version, &[]);
        prop_assert_eq!(v1::decode::<SyncResponse>(2, &answer).unwrap(), resp.clone());
        // And the bytes of today's default encoding are version 1's.
        prop_assert_eq!(req.encode(), sent);
        prop_assert_eq!(resp.encode(), v1::encode(2, &resp));
    }

    /// Version 2's extensions: a peer ignores those it does not know, unless they are critical.
    #[test]
    fn unknown_extensions_are_ignored_unless_critical(
        req in request(),
        ignorable in extensions(false),
        critical in extensions(true),
    ) {
        let sent = req.encode_as(2, &ignorable);
        let read = SyncRequest::open(&sent).unwrap();
        prop_assert_eq!(read.version, 2);
        prop_assert_eq!(&read.message, &req);
        prop_assert!(read.extensions.is_empty());
        if let Some(first) = critical.first() {
            let mut all = ignorable.clone();
            all.extend(critical.iter().cloned());
            let refused = SyncRequest::open(&req.encode_as(2, &all));
            prop_assert!(matches!(
                refused,
                Err(WireError::UnknownCriticalExtension(tag)) if critical.iter().any(|c| c.tag == tag)
            ), "{:?} for {}", refused, first.tag);
        }
        // A version-1 peer never gets extensions, and refuses a version-2 message outright
        // (a server never sends it one: it answers in the request's version).
        prop_assert!(v1::decode::<SyncRequest>(1, &sent).is_err());
        prop_assert_eq!(req.encode_as(1, &ignorable), v1::encode(1, &req));
    }
}

#[test]
fn the_server_answers_in_the_requests_version_and_refuses_a_newer_one() {
    let mut server = MemoryServer::new();
    let mut device = MemoryDevice::new(DeviceId::from_bytes([1; 16]), common::village());
    common::new_incident(&mut device, "versions");
    let request = SyncRequest::decode(&device.request()).unwrap();
    for version in VERSIONS {
        let answer = server.handle(&request.encode_as(version, &[])).unwrap();
        assert_eq!(answer[2], version, "answered in version {version}");
        assert!(SyncResponse::decode(&answer).is_ok());
    }
    // An old device's sync goes through end to end, its report stored.
    let mut old = MemoryDevice::new(DeviceId::from_bytes([2; 16]), common::village());
    let id = common::new_incident(&mut old, "from an old device");
    let sent = old.request();
    assert_eq!(sent[2], 1);
    let answer = server.handle(&sent).unwrap();
    assert_eq!(answer[2], 1);
    assert!(v1::decode::<SyncResponse>(2, &answer).is_ok());
    old.handle_response(&answer).unwrap();
    assert!(server.report(&id).is_some());
    // A version from the future is refused with the versions the server speaks.
    let mut future = request.encode_as(2, &[]);
    future[2] = VERSION + 1;
    let refused = server.handle(&future).unwrap_err();
    assert!(refused.to_string().contains("versions 1 to 2"), "{refused}");
}
