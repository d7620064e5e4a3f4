//! The villages of the office's working area (Kotabaru and Tanah Bumbu), from the national
//! administrative-area list shipped in `schemas/villages.csv`.
//!
//! A [`VillageCode`] can only be obtained by looking a code up in the list: holding one means the
//! village exists.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

const VILLAGES_CSV: &str = include_str!("../../schemas/villages.csv");

/// Why a village code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VillageError {
    /// Not ten digits.
    #[error("village code must be 10 digits, got {0:?}")]
    Malformed(String),
    /// Well formed, but not a village of the office's working area.
    #[error("unknown village code {0}: not in the office's working area (Kotabaru, Tanah Bumbu)")]
    Unknown(String),
    /// District codes are 7 digits.
    #[error("unknown district code {0:?} (7 digits, e.g. 6302010)")]
    UnknownDistrict(String),
}

/// A village of the working area (10-digit official code).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VillageCode(u64);

/// A district (kecamatan), 7-digit official code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DistrictCode(u32);

/// One row of the village list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Village {
    /// Official 10-digit code.
    pub code: VillageCode,
    /// Village name.
    pub name: String,
    /// The district it lies in.
    pub district: DistrictCode,
    /// District name.
    pub district_name: String,
    /// Regency name (Kabupaten Kotabaru or Kabupaten Tanah Bumbu).
    pub regency_name: String,
}

struct Registry {
    villages: BTreeMap<VillageCode, Village>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut villages = BTreeMap::new();
        // The file is part of the build; a malformed row is a build defect caught by the unit test
        // below, so rows that do not parse are skipped rather than panicking at run time.
        for line in VILLAGES_CSV.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            let [code, name, district, district_name, _regency, regency_name, ..] = cols[..] else {
                continue;
            };
            let (Ok(code), Ok(district)) = (code.parse::<u64>(), district.parse::<u32>()) else {
                continue;
            };
            let code = VillageCode(code);
            villages.insert(
                code,
                Village {
                    code,
                    name: name.to_owned(),
                    district: DistrictCode(district),
                    district_name: district_name.to_owned(),
                    regency_name: regency_name.to_owned(),
                },
            );
        }
        Registry { villages }
    })
}

impl VillageCode {
    /// Look a code up in the list.
    pub fn parse(text: &str) -> Result<Self, VillageError> {
        let t = text.trim();
        if t.len() != 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VillageError::Malformed(text.to_owned()));
        }
        let code = VillageCode(
            t.parse()
                .map_err(|_| VillageError::Malformed(text.to_owned()))?,
        );
        if registry().villages.contains_key(&code) {
            Ok(code)
        } else {
            Err(VillageError::Unknown(t.to_owned()))
        }
    }

    /// The numeric code (also its wire form).
    pub fn as_u64(&self) -> u64 {
        self.0
    }

    /// Look up a numeric code (from the wire or storage).
    pub fn from_u64(code: u64) -> Result<Self, VillageError> {
        Self::parse(&format!("{code:010}"))
    }

    /// The village's row in the list.
    pub fn village(&self) -> &'static Village {
        // Every VillageCode was checked against the registry when it was made.
        #[allow(clippy::expect_used)]
        registry()
            .villages
            .get(self)
            .expect("VillageCode values are only made from registry entries")
    }

    /// The district the village lies in.
    pub fn district(&self) -> DistrictCode {
        self.village().district
    }
}

impl fmt::Display for VillageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}", self.0)
    }
}

impl fmt::Debug for VillageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VillageCode({self})")
    }
}

impl serde::Serialize for VillageCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for VillageCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u64::deserialize(d)?;
        VillageCode::from_u64(code).map_err(serde::de::Error::custom)
    }
}

impl DistrictCode {
    /// The numeric code (its storage form).
    pub fn as_u32(&self) -> u32 {
        self.0
    }

    /// Parse a 7-digit district code of the working area.
    pub fn parse(text: &str) -> Result<Self, VillageError> {
        let t = text.trim();
        let code = t
            .parse::<u32>()
            .ok()
            .filter(|_| t.len() == 7)
            .map(DistrictCode)
            .ok_or_else(|| VillageError::UnknownDistrict(text.to_owned()))?;
        if all_villages().any(|v| v.district == code) {
            Ok(code)
        } else {
            Err(VillageError::UnknownDistrict(text.to_owned()))
        }
    }
}

impl fmt::Display for DistrictCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:07}", self.0)
    }
}

/// Every village of the working area, in code order.
pub fn all_villages() -> impl Iterator<Item = &'static Village> {
    registry().villages.values()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_all_341_villages() {
        let rows = VILLAGES_CSV
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(rows, 341);
        assert_eq!(all_villages().count(), 341, "every row parses");
    }

    #[test]
    fn known_and_unknown_codes() {
        let v = VillageCode::parse("6302010001").expect("Labuan Barat is listed");
        assert_eq!(v.village().name, "Labuan Barat");
        assert_eq!(v.district().to_string(), "6302010");
        assert!(matches!(
            VillageCode::parse("6302010999"),
            Err(VillageError::Unknown(_))
        ));
        assert!(matches!(
            VillageCode::parse("63020"),
            Err(VillageError::Malformed(_))
        ));
        assert!(matches!(
            VillageCode::parse("630201000x"),
            Err(VillageError::Malformed(_))
        ));
        assert_eq!(VillageCode::from_u64(v.as_u64()), Ok(v));
        assert!(DistrictCode::parse("6302010").is_ok());
        assert!(DistrictCode::parse("6399999").is_err());
    }
}
