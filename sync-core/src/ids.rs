//! Typed identifiers, parsed once at the edge.
//!
//! * [`ReportId`] is an automerge-repo document id: 16 random bytes, bs58check-encoded. A JavaScript
//!   automerge-repo client uses exactly this id, and its URL form is `automerge:<id>`; everything that
//!   takes an id accepts both forms.
//! * [`DeviceId`] names a device store (a UUID). The automerge actor id of every change a device makes
//!   starts with the device id's 16 bytes, so every change says which device made it.

use std::fmt;
use std::str::FromStr;

use automerge::ActorId;
use sha2::{Digest, Sha256};

/// The URL scheme automerge-repo uses for document ids.
pub const URL_PREFIX: &str = "automerge:";

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not bs58check, or the checksum does not match.
    #[error("not a report id (expected a bs58check document id or automerge:<id> URL): {0}")]
    NotBs58Check(String),
    /// Decodes, but not to 16 bytes.
    #[error("report id must encode 16 bytes, got {0}")]
    WrongLength(usize),
    /// Not a UUID.
    #[error("not a device id (expected a UUID): {0}")]
    NotUuid(String),
}

/// The id of one report: an automerge-repo document id. Serialized as its bs58check text in
/// human-readable formats (JSON), as its 16 bytes in binary ones (the wire format).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportId([u8; 16]);

impl serde::Serialize for ReportId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for ReportId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(d).map(ReportId)
        }
    }
}

impl ReportId {
    /// A fresh id from 16 random bytes supplied by the caller (the core takes no randomness itself).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        ReportId(bytes)
    }

    /// The id with these 16 bytes (from storage or the wire).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ReportId(bytes)
    }

    /// A fresh random id (v4 UUID bytes are 122 random bits plus fixed version bits, like
    /// automerge-repo's own `uuid()` based ids).
    pub fn new_random() -> Self {
        ReportId(*uuid::Uuid::new_v4().as_bytes())
    }

    /// The id of the one `village_profile` report of a village. Derived, so that it is the same on
    /// every server and every device: a device can open its village's profile without asking.
    pub fn village_profile(village: crate::VillageCode) -> Self {
        let digest = Sha256::digest(format!("desa-sync/village_profile/{village}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        ReportId(bytes)
    }

    /// The raw 16 bytes (what travels on the wire).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The `automerge:<id>` URL form.
    pub fn url(&self) -> String {
        format!("{URL_PREFIX}{self}")
    }
}

impl FromStr for ReportId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let text = text.strip_prefix(URL_PREFIX).unwrap_or(text);
        let bytes = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(|_| IdError::NotBs58Check(s.to_owned()))?;
        let arr: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdError::WrongLength(bytes.len()))?;
        Ok(ReportId(arr))
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReportId({self})")
    }
}

/// The id of one device store.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct DeviceId(uuid::Uuid);

/// The reserved device id of the server itself: the author of `village_profile` genesis changes.
pub const SERVER_DEVICE: DeviceId = DeviceId(uuid::Uuid::nil());

impl DeviceId {
    /// A fresh random device id.
    pub fn new_random() -> Self {
        DeviceId(uuid::Uuid::new_v4())
    }

    /// A device id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        DeviceId(uuid::Uuid::from_bytes(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The automerge actor id this device writes with.
    ///
    /// `generation` 0 is the device id itself. After the device rebuilds a report from the server's
    /// state (a refusal), it writes to that report under the next generation, so that its new
    /// changes can never reuse a sequence number of a change the server refused.
    pub fn actor(&self, generation: u32) -> ActorId {
        let mut bytes = self.as_bytes().to_vec();
        if generation > 0 {
            bytes.extend_from_slice(&generation.to_be_bytes());
        }
        ActorId::from(bytes)
    }

    /// The device that wrote with `actor`, if the actor follows the device convention (16 bytes, or
    /// 20 with a generation). Actors of other automerge clients (random 16 bytes) also map to a
    /// "device"; authentication, not this function, decides whom a change is trusted to come from.
    pub fn from_actor(actor: &ActorId) -> Option<(DeviceId, u32)> {
        let bytes = actor.to_bytes();
        let id: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let generation = match bytes.len() {
            16 => 0,
            20 => u32::from_be_bytes(bytes[16..20].try_into().ok()?),
            _ => return None,
        };
        Some((DeviceId::from_bytes(id), generation))
    }
}

impl FromStr for DeviceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s.trim())
            .map(DeviceId)
            .map_err(|_| IdError::NotUuid(s.to_owned()))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_id_round_trips_in_both_forms() {
        let id = ReportId::from_random([7; 16]);
        let text = id.to_string();
        assert_eq!(text.parse::<ReportId>(), Ok(id));
        assert_eq!(id.url().parse::<ReportId>(), Ok(id));
        assert!(id.url().starts_with("automerge:"));
    }

    #[test]
    fn report_id_is_bs58check_of_sixteen_bytes() {
        // automerge-repo: bs58check(payload) = base58(payload ++ sha256(sha256(payload))[..4]).
        let id = ReportId::from_random([0xAB; 16]);
        let raw = bs58::decode(id.to_string()).into_vec().expect("base58");
        assert_eq!(raw.len(), 20);
        let check = Sha256::digest(Sha256::digest(&raw[..16]));
        assert_eq!(&raw[16..], &check[..4]);
    }

    #[test]
    fn bad_report_ids_are_refused() {
        assert!(matches!(
            "hello".parse::<ReportId>(),
            Err(IdError::NotBs58Check(_))
        ));
        // valid bs58check of 4 bytes
        let short = bs58::encode([1u8, 2, 3, 4]).with_check().into_string();
        assert_eq!(short.parse::<ReportId>(), Err(IdError::WrongLength(4)));
        // flipped checksum
        let mut good = ReportId::from_random([9; 16]).to_string();
        let last = good.pop().expect("non-empty");
        good.push(if last == 'a' { 'b' } else { 'a' });
        assert!(good.parse::<ReportId>().is_err());
    }

    #[test]
    fn report_id_is_text_in_json_and_bytes_on_the_wire() {
        let id = ReportId::from_bytes([3; 16]);
        assert_eq!(
            serde_json::to_string(&id).expect("json"),
            format!("\"{id}\"")
        );
        assert_eq!(
            serde_json::from_str::<ReportId>(&format!("\"{}\"", id.url())).expect("json"),
            id
        );
        let bytes = postcard::to_allocvec(&id).expect("postcard");
        assert_eq!(bytes, vec![3; 16]);
        assert_eq!(
            postcard::from_bytes::<ReportId>(&bytes).expect("postcard"),
            id
        );
    }

    #[test]
    fn actor_maps_back_to_device() {
        let device = DeviceId::new_random();
        assert_eq!(DeviceId::from_actor(&device.actor(0)), Some((device, 0)));
        assert_eq!(DeviceId::from_actor(&device.actor(3)), Some((device, 3)));
        assert_eq!(DeviceId::from_actor(&ActorId::from(vec![1u8; 5])), None);
    }
}
