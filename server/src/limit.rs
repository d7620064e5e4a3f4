//! Request limits: a per-key rate limiter, and the request-size check every route goes through.
//!
//! ## Rate limiting
//! [`RateLimiter`] is a token bucket per key: each key may make `burst` requests at once, then
//! `rate` per second. Authenticated requests are counted per device by a [`DeviceLimiter`], with
//! the allowance of the device's role ([`RoleLimits`]): a phone syncs in one request where a
//! coordinator's tool reads reports one by one. An HTTP request over the limit is answered
//! `429 Too Many Requests` with `Retry-After` ([`crate::error::ApiError::RateLimited`], built from
//! [`RetryAfter`]); a WebSocket message over it waits before it is read (backpressure).
//!
//! The buckets live in a bounded LRU map: at most `max_keys` keys are tracked, the least recently
//! seen forgotten first, so a flood of new keys cannot grow memory without bound (a forgotten key
//! starts again with a full bucket — the limit is for fairness and load, not a security
//! boundary). Time is a parameter ([`RateLimiter::check_at`]): tests drive a clock, not sleeps.
//!
//! It is a small hand-written bucket rather than the `governor` crate: governor's keyed limiter
//! keeps every key in a map that only shrinks when the caller remembers to prune it, and would
//! bring about ten crates for what is thirty lines here.
//!
//! ## Request size
//! [`reject_oversized`] refuses a request whose declared `Content-Length` exceeds `--max-body`
//! with the API's 413 before any handler runs — on every route, also those that never read a body.
//! Bodies without a declared length are cut at the same limit where they are read
//! (`POST /api/v1/sync` and the JSON extractor), also as 413.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::middleware::Next;
use actix_web::web;
use lru::LruCache;

use sync_core::rules::Role;
use sync_core::{DeviceId, Principal};

use crate::error::ApiError;
pub use crate::error::RetryAfter;

/// Default sustained rate of a field device (volunteer), requests per second.
pub const DEFAULT_RATE: u32 = 20;
/// Default burst of a field device: requests it may make at once after being idle.
pub const DEFAULT_BURST: u32 = 100;
/// Keys tracked at most. Far above the number of devices of a deployment; only a flood of made-up
/// keys reaches it.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body, bytes.
    pub max_body: usize,
    /// Largest accepted WebSocket message, bytes.
    pub max_message: usize,
}

/// A sustained rate and a burst: what one key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests per second, sustained (at least 1).
    pub rate: u32,
    /// Requests at once after being idle (at least 1).
    pub burst: u32,
}

impl Allowance {
    /// `rate` per second, `burst` at once.
    pub const fn new(rate: u32, burst: u32) -> Self {
        Allowance { rate, burst }
    }
}

impl std::fmt::Display for Allowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.rate, self.burst)
    }
}

/// The allowance of each role that makes requests.
///
/// Defaults: a volunteer's phone syncs in one request (20/s, bursts of 100, as before roles had
/// their own); a coordinator's or an analyst's tool reads reports one by one and exports (100/s,
/// bursts of 1,000: a day's 200 reports opened at once pass); an admin manages people and devices
/// (20/s, bursts of 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleLimits {
    /// Field volunteers' devices.
    pub volunteer: Allowance,
    /// Coordinators.
    pub coordinator: Allowance,
    /// Analysts.
    pub analyst: Allowance,
    /// Admins (and the server's own principal, which makes no requests).
    pub admin: Allowance,
}

impl Default for RoleLimits {
    fn default() -> Self {
        let field = Allowance::new(DEFAULT_RATE, DEFAULT_BURST);
        let office = Allowance::new(100, 1_000);
        RoleLimits {
            volunteer: field,
            coordinator: office,
            analyst: office,
            admin: field,
        }
    }
}

impl RoleLimits {
    /// Every role with the same allowance.
    pub fn all(allowance: Allowance) -> Self {
        RoleLimits {
            volunteer: allowance,
            coordinator: allowance,
            analyst: allowance,
            admin: allowance,
        }
    }

    /// The allowance of `role`.
    pub fn of(&self, role: Role) -> Allowance {
        match role {
            Role::Volunteer => self.volunteer,
            Role::Coordinator => self.coordinator,
            Role::Analyst => self.analyst,
            Role::Admin | Role::Server => self.admin,
        }
    }

    /// The allowance of `role`, to change.
    pub fn of_mut(&mut self, role: Role) -> &mut Allowance {
        match role {
            Role::Volunteer => &mut self.volunteer,
            Role::Coordinator => &mut self.coordinator,
            Role::Analyst => &mut self.analyst,
            Role::Admin | Role::Server => &mut self.admin,
        }
    }
}

/// One role's allowance as the command line gives it: `ROLE=RATE` or `ROLE=RATE/BURST` (without a
/// burst, five seconds' worth of the rate).
pub fn parse_role_limit(text: &str) -> Result<(Role, Allowance), String> {
    let usage =
        || format!("{text:?}: expected ROLE=RATE or ROLE=RATE/BURST (e.g. coordinator=100/1000)");
    let (role, allowance) = text.split_once('=').ok_or_else(usage)?;
    let role: Role = role.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
    if role == Role::Server {
        return Err(format!("{text:?}: the server makes no requests"));
    }
    let number = |n: &str| {
        n.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(usage)
    };
    let allowance = match allowance.split_once('/') {
        Some((rate, burst)) => Allowance::new(number(rate)?, number(burst)?),
        None => {
            let rate = number(allowance)?;
            Allowance::new(rate, rate.saturating_mul(5))
        }
    };
    Ok((role, allowance))
}

/// Authenticated requests counted per device, each with its role's allowance.
pub struct DeviceLimiter {
    volunteer: RateLimiter<DeviceId>,
    coordinator: RateLimiter<DeviceId>,
    analyst: RateLimiter<DeviceId>,
    admin: RateLimiter<DeviceId>,
}

impl DeviceLimiter {
    /// A limiter with these allowances, tracking at most `max_keys` devices per role.
    pub fn new(limits: RoleLimits, max_keys: usize) -> Self {
        let bucket = |a: Allowance| RateLimiter::new(a.rate, a.burst, max_keys);
        DeviceLimiter {
            volunteer: bucket(limits.volunteer),
            coordinator: bucket(limits.coordinator),
            analyst: bucket(limits.analyst),
            admin: bucket(limits.admin),
        }
    }

    /// Count one request of `principal`'s device now, against its role's allowance.
    pub fn check(&self, principal: &Principal) -> Result<(), RetryAfter> {
        self.check_at(principal, Instant::now())
    }

    /// [`check`](Self::check) at time `now`.
    pub fn check_at(&self, principal: &Principal, now: Instant) -> Result<(), RetryAfter> {
        let bucket = match principal.role() {
            Role::Volunteer => &self.volunteer,
            Role::Coordinator => &self.coordinator,
            Role::Analyst => &self.analyst,
            Role::Admin | Role::Server => &self.admin,
        };
        bucket.check_at(principal.device, now)
    }
}

/// A token bucket per key, over a bounded map (see the module documentation).
///
/// Kept as GCRA, the bucket's exact integer form: per key only the "theoretical arrival time"
/// `tat` — when the bucket would be full again. A request at `now` is allowed if
/// `tat - now <= (burst - 1) × interval`, and then moves `tat` one interval on.
pub struct RateLimiter<K: Hash + Eq> {
    /// Time for one token to come back (1 / rate).
    interval: Duration,
    /// How far ahead of `now` `tat` may be: (burst - 1) intervals.
    tolerance: Duration,
    tats: Mutex<LruCache<K, Instant>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `rate` requests per second sustained, `burst` at once, at most `max_keys` keys tracked.
    /// Zeros are raised to 1.
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Self {
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)));
        RateLimiter {
            interval,
            tolerance: interval * (burst.max(1) - 1),
            tats: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Count one request of `key` now: `Ok` if within its limit, else how long until it would be.
    pub fn check(&self, key: K) -> Result<(), RetryAfter> {
        self.check_at(key, Instant::now())
    }

    /// [`check`](Self::check) at time `now`. A `now` earlier than a previous one grants nothing
    /// (it is not a way to get tokens back).
    pub fn check_at(&self, key: K, now: Instant) -> Result<(), RetryAfter> {
        // A poisoned lock only means another request panicked mid-update of a counter: the map is
        // still usable, and refusing everyone from then on would be worse.
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tat = tats.get_or_insert_mut(key, || now);
        let start = (*tat).max(now);
        let ahead = start.duration_since(now);
        if ahead > self.tolerance {
            return Err(RetryAfter(ahead - self.tolerance));
        }
        *tat = start + self.interval;
        Ok(())
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Middleware (`middleware::from_fn`): a request declaring a body larger than
/// [`Limits::max_body`] gets the API's 413 without reaching its handler.
pub async fn reject_oversized(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(limits) = req.app_data::<web::Data<Limits>>() {
        let limit = limits.max_body;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::TooLarge { limit }.into());
        }
    }
    next.call(req).await
}

/// The close frame for a WebSocket read error: a message over the limit (one frame over
/// `max_frame_size`, or continuations adding up to more than `max_continuation_size`) gets code
/// 1009 "message too big" and a reason naming the limit; other errors close without a reason.
pub fn ws_close_reason(
    err: &actix_ws::ProtocolError,
    limit: usize,
) -> Option<actix_ws::CloseReason> {
    let too_big = match err {
        actix_ws::ProtocolError::Overflow => true,
        // actix-ws reports oversized continuations as an IO error with only this text.
        actix_ws::ProtocolError::Io(e) => e.to_string().contains("maximum continuation size"),
        _ => false,
    };
    too_big.then(|| actix_ws::CloseReason {
        code: actix_ws::CloseCode::Size,
        description: Some(format!("message larger than the limit of {limit} bytes")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn principal(role: Role, n: u8) -> Principal {
        Principal {
            user: format!("{role}-{n}"),
            device: DeviceId::from_bytes([n; 16]),
            access: sync_core::rules::Access::everywhere(role),
        }
    }

    #[test]
    fn each_role_has_its_own_allowance() {
        let limits = RoleLimits {
            volunteer: Allowance::new(1, 2),
            coordinator: Allowance::new(1, 5),
            ..RoleLimits::default()
        };
        let limiter = DeviceLimiter::new(limits, 100);
        let t0 = Instant::now();
        let volunteer = principal(Role::Volunteer, 1);
        let coordinator = principal(Role::Coordinator, 2);
        for _ in 0..2 {
            assert_eq!(limiter.check_at(&volunteer, t0), Ok(()));
        }
        assert!(limiter.check_at(&volunteer, t0).is_err());
        for _ in 0..5 {
            assert_eq!(limiter.check_at(&coordinator, t0), Ok(()));
        }
        assert_eq!(
            limiter.check_at(&coordinator, t0),
            Err(RetryAfter(Duration::from_secs(1)))
        );
    }

    #[test]
    fn the_default_lets_a_coordinator_open_a_days_reports_at_once() {
        let limiter = DeviceLimiter::new(RoleLimits::default(), 100);
        let t0 = Instant::now();
        let coordinator = principal(Role::Coordinator, 1);
        for _ in 0..200 {
            assert_eq!(limiter.check_at(&coordinator, t0), Ok(()));
        }
        // A field device keeps the allowance it always had.
        let phone = principal(Role::Volunteer, 2);
        for _ in 0..DEFAULT_BURST {
            assert_eq!(limiter.check_at(&phone, t0), Ok(()));
        }
        assert!(limiter.check_at(&phone, t0).is_err());
    }

    #[test]
    fn a_role_limit_is_read_from_the_command_line() {
        assert_eq!(
            parse_role_limit("coordinator=100/1000"),
            Ok((Role::Coordinator, Allowance::new(100, 1000)))
        );
        assert_eq!(
            parse_role_limit(" analyst = 40 "),
            Ok((Role::Analyst, Allowance::new(40, 200)))
        );
        for bad in [
            "coordinator",
            "coordinator=",
            "coordinator=0",
            "coordinator=10/0",
            "coordinator=ten",
            "chief=10",
            "server=10",
            "volunteer=10/20/30",
        ] {
            assert!(parse_role_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let limiter = RateLimiter::new(10, 5, 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check_at("a", t0), Ok(()));
        }
        let refused = limiter.check_at("a", t0).unwrap_err();
        assert_eq!(refused, RetryAfter(Duration::from_millis(100)));
        assert_eq!(refused.seconds(), 1);
        // 10/s: one token back after 100 ms, not before.
        assert!(limiter.check_at("a", at(t0, 99)).is_err());
        assert_eq!(limiter.check_at("a", at(t0, 100)), Ok(()));
        assert!(limiter.check_at("a", at(t0, 100)).is_err());
        // Idle for long: back to a full burst, never more.
        let later = at(t0, 60_000);
        for _ in 0..5 {
            assert_eq!(limiter.check_at("a", later), Ok(()));
        }
        assert!(limiter.check_at("a", later).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limiter = RateLimiter::new(1, 2, 100);
        let t0 = Instant::now();
        assert!(limiter.check_at(1, t0).is_ok());
        assert!(limiter.check_at(1, t0).is_ok());
        assert!(limiter.check_at(1, t0).is_err());
        assert!(limiter.check_at(2, t0).is_ok(), "another key is not slowed");
    }

    #[test]
    fn a_clock_going_backwards_grants_nothing() {
        let limiter = RateLimiter::new(1, 1, 100);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(limiter.check_at("a", t0).is_ok());
        assert_eq!(
            limiter.check_at("a", t0 - Duration::from_secs(5)),
            Err(RetryAfter(Duration::from_secs(6)))
        );
        assert!(limiter.check_at("a", t0).is_err());
        assert!(limiter.check_at("a", at(t0, 1000)).is_ok());
    }

    #[test]
    fn the_map_of_keys_is_bounded_and_forgets_the_least_recent() {
        let limiter = RateLimiter::new(1, 1, 3);
        let t0 = Instant::now();
        for key in 0..1000 {
            let _ = limiter.check_at(key, t0);
        }
        assert_eq!(limiter.tracked(), 3);
        // 997..=999 are remembered (and spent), 0 was forgotten (fresh bucket).
        assert!(limiter.check_at(999, t0).is_err());
        assert!(limiter.check_at(0, t0).is_ok());
    }

    #[test]
    fn oversized_websocket_messages_close_with_1009() {
        let frame = ws_close_reason(&actix_ws::ProtocolError::Overflow, 10).unwrap();
        assert_eq!(frame.code, actix_ws::CloseCode::Size);
        assert_eq!(u16::from(frame.code), 1009);
        assert_eq!(
            frame.description.as_deref(),
            Some("message larger than the limit of 10 bytes")
        );
        let continuation = actix_ws::ProtocolError::Io(std::io::Error::other(
            "Exceeded maximum continuation size",
        ));
        assert!(ws_close_reason(&continuation, 10).is_some());
        assert!(ws_close_reason(&actix_ws::ProtocolError::UnmaskedFrame, 10).is_none());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1500)).seconds(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(3)).seconds(), 3);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
    }
}
