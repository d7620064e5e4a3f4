//! The audit trail: an append-only, keyed hash chain — what is recorded, and how the chain is
//! sealed and checked. Pure: the server keeps the anchor file (`desa-server`'s `audit` module) and
//! the stores keep the entries.
//!
//! Every write (which device and user, which report, which changes, which fields), every API read
//! of reports (the ids returned), every export, every failed authentication and every user or
//! device change is an [`AuditEvent`]. Stored, it becomes entry `seq` (1, 2, 3, … without gaps)
//! with its record — the event as JSON text, stored verbatim — and a MAC:
//!
//! ```text
//! mac(seq) = HMAC-SHA256(audit key, mac(seq - 1) ‖ seq as 8 bytes big-endian ‖ record)
//! mac(0)   = 32 zero bytes
//! ```
//!
//! The audit key is derived from the server's master key, which is kept outside the database, so
//! someone who can write the database file cannot re-seal an entry they edited, deleted or
//! inserted: [`verify`] finds the first entry whose MAC does not follow. Removing entries from the
//! *end* leaves a valid, shorter chain, so each commit that appends also records the head (last
//! seq and MAC) in an **anchor file** outside the data directory; [`verify`] checks the chain
//! reaches that head.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The key that seals the chain (derived from the master key; never stored in the database).
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// From 32 key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        AuditKey(bytes)
    }

    /// The MAC of entry `seq` holding `record`, after the entry whose MAC was `prev`.
    pub fn seal(&self, prev: &[u8; 32], seq: u64, record: &str) -> [u8; 32] {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(prev);
        mac.update(&seq.to_be_bytes());
        mac.update(record.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC-SHA256 takes keys of every length (RFC 2104); this is not reachable.
    std::process::abort()
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// Who did something. Never a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// The user's name (`server` for the server itself, `operator` for the command line).
    pub user: String,
    /// Their role.
    pub role: String,
    /// The device, if the action came through one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Changes to one report uploaded by `who` were accepted (and, if any, refused or held).
    Write {
        /// The report.
        report: String,
        /// Hashes of the accepted changes.
        changes: Vec<String>,
        /// Dotted paths of the fields they touched.
        fields: Vec<String>,
        /// Refused changes of the same request: `hash: reason`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<String>,
        /// Changes of the same request held for missing dependencies (judged, with `who`'s
        /// access, when they arrive).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        held: Vec<String>,
        /// How they came: `sync`, `ws`, `api`, `server`, `held` (uploaded earlier, applied now
        /// that their dependencies arrived), or `migration` (the server bringing a report of an
        /// older schema version up to the newest).
        via: String,
    },
    /// Changes `who` uploaded earlier and the server held for their dependencies were dropped:
    /// refused now (the uploader lost access, was revoked or removed, or the change breaks a
    /// rule) or expired.
    HeldDropped {
        /// The report.
        report: String,
        /// `hash: reason` of each dropped change.
        changes: Vec<String>,
    },
    /// Reports were read (one entry per request).
    Read {
        /// The endpoint or channel (`GET /api/v1/reports`, `sync`, `ws`).
        via: String,
        /// The ids returned.
        reports: Vec<String>,
        /// Whether sensitive fields were redacted.
        #[serde(default)]
        redacted: bool,
    },
    /// Reports were exported.
    Export {
        /// The filter used.
        query: String,
        /// The ids exported.
        reports: Vec<String>,
        /// Whether sensitive fields were redacted.
        redacted: bool,
    },
    /// Requests without a valid token from one client address, counted over an interval: one
    /// entry per address and interval, however many there were (a flood does not flood the
    /// trail).
    AuthFailed {
        /// The client address.
        peer: String,
        /// How many failed.
        count: u64,
        /// How many of them were answered 429 (over the address's allowance).
        #[serde(default, skip_serializing_if = "is_zero")]
        throttled: u64,
        /// Count per reason (missing, malformed, unknown device, wrong secret, revoked).
        reasons: std::collections::BTreeMap<String, u64>,
        /// Devices the tokens named, when they parsed (at most 16).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        devices: Vec<String>,
        /// Request paths, without queries (which may hold a token) (at most 8).
        paths: Vec<String>,
        /// The first and last failure of the interval (RFC 3339).
        first: String,
        /// The last failure.
        last: String,
    },
    /// A user was added.
    UserAdd {
        /// Name.
        name: String,
        /// Role.
        role: String,
        /// Villages (volunteers).
        villages: Vec<String>,
    },
    /// A device was added.
    DeviceAdd {
        /// Its owner.
        user: String,
        /// Its id.
        device: String,
    },
    /// A device was revoked.
    DeviceRevoke {
        /// Its id.
        device: String,
    },
    /// A user's role or villages changed.
    UserUpdate {
        /// Name.
        name: String,
        /// Role now.
        role: String,
        /// Villages now (volunteers).
        villages: Vec<String>,
    },
    /// A user was removed (and every device of theirs revoked).
    UserRemove {
        /// Name.
        name: String,
    },
    /// The audit trail itself was read.
    AuditRead {
        /// Entries returned.
        count: usize,
    },
}

/// An event before it is sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Server clock, RFC 3339.
    pub at: String,
    /// Who.
    pub who: Who,
    /// What.
    #[serde(flatten)]
    pub action: Action,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&crate::Principal> for Who {
    fn from(p: &crate::Principal) -> Self {
        Who {
            user: p.user.clone(),
            role: p.role().to_string(),
            device: Some(p.device.to_string()),
        }
    }
}

impl AuditEvent {
    /// An event at `ms` (server clock, unix ms).
    pub fn at(ms: i64, who: Who, action: Action) -> Self {
        AuditEvent {
            at: rfc3339_ms(ms),
            who,
            action,
        }
    }

    /// The record text that is stored and sealed.
    pub fn record(&self) -> String {
        // Serializing plain strings and vectors cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"unserializable\":\"{e}\"}}"))
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The event as JSON text, exactly as sealed.
    pub record: String,
    /// Its MAC.
    pub mac: [u8; 32],
}

/// The last entry's position and MAC, kept outside the database to detect truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Last seq.
    pub seq: u64,
    /// Its MAC.
    pub mac: [u8; 32],
}

impl Head {
    /// The anchor file's text: `seq hexmac`, always 86 bytes (the seq zero-padded), so that a
    /// newer head overwrites an older one in place.
    pub fn to_text(&self) -> String {
        format!("{:020} {}\n", self.seq, hex(&self.mac))
    }

    /// Parse an anchor file's text.
    pub fn parse(text: &str) -> Option<Head> {
        let (seq, mac) = text.trim().split_once(' ')?;
        Some(Head {
            seq: seq.parse().ok()?,
            mac: unhex(mac)?,
        })
    }
}

/// Seal `events` after `tail` (the chain's last entry, `None` if empty).
pub fn seal_after(key: &AuditKey, tail: Option<Head>, events: &[AuditEvent]) -> Vec<AuditEntry> {
    let (mut seq, mut prev) = tail.map(|h| (h.seq, h.mac)).unwrap_or((0, [0; 32]));
    events
        .iter()
        .map(|event| {
            seq += 1;
            let record = event.record();
            let mac = key.seal(&prev, seq, &record);
            prev = mac;
            AuditEntry { seq, record, mac }
        })
        .collect()
}

/// What [`verify`] found wrong: the first broken place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    /// An entry's MAC does not follow: it was edited, or an entry before it was deleted or
    /// inserted.
    #[error("entry {seq}: its seal does not match (edited, or an entry before it was deleted or inserted)")]
    BadSeal {
        /// The entry.
        seq: u64,
    },
    /// The sequence jumps (an entry was deleted) or does not start at 1.
    #[error("entry {found} follows entry {after}: entries are missing")]
    Gap {
        /// The previous seq (0: start).
        after: u64,
        /// The seq found.
        found: u64,
    },
    /// The chain ends before the anchored head: entries were removed from the end.
    #[error(
        "the log ends at entry {last} but entry {anchored} was written: the log was truncated"
    )]
    Truncated {
        /// Last seq present.
        last: u64,
        /// Seq in the anchor.
        anchored: u64,
    },
    /// The entry at the anchored position is not the one anchored.
    #[error("entry {seq} is not the entry the anchor recorded: the log was rewritten")]
    AnchorMismatch {
        /// The seq.
        seq: u64,
    },
}

/// Check a whole chain (entries in seq order) against the key and the anchored head.
/// Returns the number of entries.
pub fn verify(
    key: &AuditKey,
    entries: impl IntoIterator<Item = AuditEntry>,
    anchor: Option<Head>,
) -> Result<u64, Tamper> {
    let mut last = 0u64;
    let mut prev = [0u8; 32];
    for entry in entries {
        if entry.seq != last + 1 {
            return Err(Tamper::Gap {
                after: last,
                found: entry.seq,
            });
        }
        let expected = key.seal(&prev, entry.seq, &entry.record);
        if !constant_eq(&expected, &entry.mac) {
            return Err(Tamper::BadSeal { seq: entry.seq });
        }
        if let Some(head) = anchor {
            if head.seq == entry.seq && !constant_eq(&head.mac, &entry.mac) {
                return Err(Tamper::AnchorMismatch { seq: entry.seq });
            }
        }
        last = entry.seq;
        prev = entry.mac;
    }
    match anchor {
        Some(head) if head.seq > last => Err(Tamper::Truncated {
            last,
            anchored: head.seq,
        }),
        _ => Ok(last),
    }
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 3339 (UTC, milliseconds) of a unix-ms time (negative times read as the epoch).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|i| AuditEvent {
                at: format!("2026-11-28T00:00:0{i}Z"),
                who: Who {
                    user: "siti".into(),
                    role: "volunteer".into(),
                    device: None,
                },
                action: Action::Read {
                    via: "test".into(),
                    reports: vec![format!("r{i}")],
                    redacted: false,
                },
            })
            .collect()
    }

    #[test]
    fn every_kind_of_tampering_is_found() {
        let key = AuditKey::new([5; 32]);
        let chain = seal_after(&key, None, &events(5));
        let head = Head {
            seq: 5,
            mac: chain[4].mac,
        };
        assert_eq!(verify(&key, chain.clone(), Some(head)), Ok(5));
        // Appending continues the chain.
        let more = seal_after(&key, Some(head), &events(1));
        assert_eq!(more[0].seq, 6);
        let mut all = chain.clone();
        all.extend(more);
        assert_eq!(verify(&key, all, Some(head)), Ok(6));

        let mut edited = chain.clone();
        edited[2].record = edited[2].record.replace("r2", "r9");
        assert_eq!(
            verify(&key, edited, Some(head)),
            Err(Tamper::BadSeal { seq: 3 })
        );

        let mut deleted = chain.clone();
        deleted.remove(1);
        assert_eq!(
            verify(&key, deleted, Some(head)),
            Err(Tamper::Gap { after: 1, found: 3 })
        );

        // An inserted entry renumbered to look contiguous cannot be sealed without the key.
        let mut inserted = chain.clone();
        let forged = seal_after(&AuditKey::new([6; 32]), None, &events(1));
        inserted.insert(
            2,
            AuditEntry {
                seq: 3,
                ..forged[0].clone()
            },
        );
        for (i, e) in inserted.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert_eq!(
            verify(&key, inserted, Some(head)),
            Err(Tamper::BadSeal { seq: 3 })
        );

        let truncated = chain[..3].to_vec();
        assert_eq!(
            verify(&key, truncated.clone(), Some(head)),
            Err(Tamper::Truncated {
                last: 3,
                anchored: 5
            })
        );
        assert_eq!(
            verify(&key, truncated, None),
            Ok(3),
            "without an anchor it cannot tell"
        );

        let wrong_key = AuditKey::new([7; 32]);
        assert_eq!(
            verify(&wrong_key, chain, None),
            Err(Tamper::BadSeal { seq: 1 })
        );
        assert_eq!(Head::parse(&head.to_text()), Some(head));
    }
}
