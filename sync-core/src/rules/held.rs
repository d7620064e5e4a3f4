//! Bounds on held changes.
//!
//! A change whose dependencies the server has not received is *held*: kept until they arrive,
//! then judged with the access of the device that uploaded it. An honest device holds few (its
//! own earlier changes travel in the same request); a hostile one could upload change after change
//! on top of hashes that will never arrive. So held changes are bounded per device and per report,
//! and expire.
//!
//! A new change over a bound is refused (`NotPermitted`, with a detail saying which bound); the
//! device then rebuilds the report from the server's state and re-applies its edits as new
//! changes, which need nothing the server lacks. A change already held is never refused for a
//! bound: it was admitted under it. An expired one is dropped (the device still has it in its
//! outbox and sends it again with its dependencies).

use std::collections::HashMap;

use super::{Refusal, RefusalCode};
use crate::DeviceId;

/// Limits on held changes. The defaults are far above what an honest device ever holds: a device
/// sends its changes in causal order, a prefix per report, so only a lost dependency (a rebuilt
/// server, a change refused elsewhere) leaves anything held at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLimits {
    /// Changes one device may have held, over all reports.
    pub per_device_changes: usize,
    /// Bytes of changes one device may have held, over all reports.
    pub per_device_bytes: usize,
    /// Changes held for one report, over all devices.
    pub per_report_changes: usize,
    /// Bytes held for one report, over all devices.
    pub per_report_bytes: usize,
    /// How long a held change is kept, in milliseconds.
    pub max_age_ms: i64,
}

impl Default for HeldLimits {
    fn default() -> Self {
        HeldLimits {
            per_device_changes: 64,
            per_device_bytes: 4 << 20,
            per_report_changes: 256,
            per_report_bytes: 8 << 20,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// What each device has held, as the admission of a group of batches goes on: the server fills it
/// from its store for the devices involved, admission takes from it and gives back.
#[derive(Debug, Clone, Default)]
pub struct HeldBudget {
    limits: HeldLimits,
    /// (changes, bytes) held per device.
    usage: HashMap<DeviceId, (usize, usize)>,
}

impl HeldBudget {
    /// A budget under `limits`, with nothing held yet.
    pub fn new(limits: HeldLimits) -> Self {
        HeldBudget {
            limits,
            usage: HashMap::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> HeldLimits {
        self.limits
    }

    /// Record what `device` already has held (from storage).
    pub fn set_usage(&mut self, device: DeviceId, changes: usize, bytes: usize) {
        self.usage.insert(device, (changes, bytes));
    }

    /// Whether the usage of `device` is known (the server loads it once per group).
    pub fn knows(&self, device: DeviceId) -> bool {
        self.usage.contains_key(&device)
    }

    /// What `device` has held now.
    pub fn usage(&self, device: DeviceId) -> (usize, usize) {
        self.usage.get(&device).copied().unwrap_or_default()
    }

    /// Take room for one more held change of `bytes` by `device`, for a report that already holds
    /// `report_changes` changes and `report_bytes` bytes.
    pub fn take(
        &mut self,
        device: DeviceId,
        bytes: usize,
        report_changes: usize,
        report_bytes: usize,
    ) -> Result<(), Refusal> {
        let l = self.limits;
        let (changes, held) = self.usage(device);
        let over = if changes + 1 > l.per_device_changes || held + bytes > l.per_device_bytes {
            Some(format!(
                "this device already has {changes} changes waiting for changes the server has \
                 not received (at most {} changes, {} KiB)",
                l.per_device_changes,
                l.per_device_bytes >> 10
            ))
        } else if report_changes + 1 > l.per_report_changes
            || report_bytes + bytes > l.per_report_bytes
        {
            Some(format!(
                "this report already has {report_changes} changes waiting for changes the server \
                 has not received (at most {}, {} KiB)",
                l.per_report_changes,
                l.per_report_bytes >> 10
            ))
        } else {
            None
        };
        if let Some(why) = over {
            return Err(Refusal::new(
                RefusalCode::NotPermitted,
                format!("{why}: send the missing changes first"),
            ));
        }
        self.usage.insert(device, (changes + 1, held + bytes));
        Ok(())
    }

    /// Give back the room of a held change that left (applied, refused or dropped).
    pub fn give_back(&mut self, device: DeviceId, bytes: usize) {
        let (changes, held) = self.usage(device);
        self.usage.insert(
            device,
            (changes.saturating_sub(1), held.saturating_sub(bytes)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_and_a_report_are_bounded_and_room_comes_back() {
        let limits = HeldLimits {
            per_device_changes: 2,
            per_device_bytes: 100,
            per_report_changes: 3,
            per_report_bytes: 1000,
            max_age_ms: 1,
        };
        let (a, b) = (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([2; 16]));
        let mut budget = HeldBudget::new(limits);
        assert!(budget.take(a, 10, 0, 0).is_ok());
        assert!(budget.take(a, 10, 1, 10).is_ok());
        let refused = budget.take(a, 10, 2, 20).expect_err("a third change of a");
        assert_eq!(refused.code, RefusalCode::NotPermitted);
        assert!(refused.detail.contains("this device"), "{}", refused.detail);
        assert!(budget.take(b, 101, 0, 0).is_err(), "bytes count too");
        let full = budget.take(b, 10, 3, 30).expect_err("the report is full");
        assert!(full.detail.contains("this report"), "{}", full.detail);
        budget.give_back(a, 10);
        assert_eq!(budget.usage(a), (1, 10));
        assert!(budget.take(a, 10, 0, 0).is_ok());
    }
}
