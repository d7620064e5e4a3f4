//! The device clock, read once per command and passed down, so that every time written by one
//! command agrees and tests can fix it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LATEST: u64 = 253_402_300_799;

/// One reading of the device clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    /// Unix seconds (what automerge records as a change's time).
    pub unix: i64,
    /// The same instant, RFC 3339 to the second (what documents and the store record).
    pub rfc3339: String,
}

impl Now {
    /// The device clock now.
    pub fn current() -> Self {
        Self::at(SystemTime::now())
    }

    /// A given instant. Phones in the field often have wrong clocks; a clock before 1970 or after
    /// 9999 is clamped rather than allowed to panic the formatter.
    pub fn at(time: SystemTime) -> Self {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .min(LATEST);
        let clamped = UNIX_EPOCH + Duration::from_secs(secs);
        Now {
            unix: i64::try_from(secs).unwrap_or(i64::MAX),
            rfc3339: humantime::format_rfc3339_seconds(clamped).to_string(),
        }
    }

    /// A given number of unix seconds (tests).
    pub fn from_unix(secs: u64) -> Self {
        Self::at(UNIX_EPOCH + Duration::from_secs(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_clamps() {
        let now = Now::from_unix(1_764_316_800);
        assert_eq!(now.rfc3339, "2025-11-28T08:00:00Z");
        assert_eq!(now.unix, 1_764_316_800);
        let early = Now::at(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(early.rfc3339, "1970-01-01T00:00:00Z");
        let late = Now::from_unix(300_000_000_000);
        assert_eq!(late.rfc3339, "9999-12-31T23:59:59Z");
    }
}
