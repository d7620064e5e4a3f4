//! Failed authentications, per client address: throttled, and audited in aggregate.
//!
//! A request whose token is missing, malformed, unknown, wrong or revoked is answered 401 — and
//! counted against its client address. An address over its allowance (a burst, then a steady
//! rate: defaults 20 at once, then 1 a second) is answered **429** with `Retry-After` instead.
//! Only failing attempts count: a valid token is always checked and always served, so an office
//! whose devices share one address is never locked out by a stranger behind the same address (a
//! token's 256 random bits make guessing pointless anyway; what the limit bounds is the work and
//! the noise).
//!
//! The audit trail records failures as **one entry per address per interval** (default a minute)
//! with the count, the reasons, the devices the tokens named and the paths — not one entry per
//! request, so a flood of bad tokens does not flood the trail. A failure is written when its
//! interval ends (by [`flush_every`]); a server killed meanwhile loses at most that interval's
//! counts.
//!
//! Behind the documented TLS proxy every request comes from the proxy's address: with
//! `--trusted-proxy ADDR` the client address is taken from `X-Forwarded-For` (the rightmost entry
//! that is not a trusted proxy) when — and only when — the request comes from a trusted proxy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::HttpRequest;

use super::AuthFailure;
use crate::audit::{Action, AuditEvent, Who};
use crate::limit::{RateLimiter, RetryAfter};
use crate::store::Store;

/// Default burst of failures an address may make.
pub const DEFAULT_BURST: u32 = 20;
/// Default sustained failures per second an address may make.
pub const DEFAULT_RATE: u32 = 1;
/// Default length of an audit interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses counted per interval at most; beyond, failures are counted under `*`.
const MAX_ADDRESSES: usize = 10_000;
/// Device ids and paths kept per address and interval at most.
const MAX_DEVICES: usize = 16;
const MAX_PATHS: usize = 8;

/// One address's failures in the current interval.
#[derive(Debug, Default)]
struct Tally {
    count: u64,
    throttled: u64,
    reasons: BTreeMap<String, u64>,
    devices: BTreeSet<String>,
    paths: BTreeSet<String>,
    first: i64,
    last: i64,
}

/// Failed authentications: the per-address allowance and the current interval's tallies.
pub struct FailedAuth {
    limiter: RateLimiter<IpAddr>,
    tallies: Mutex<HashMap<String, Tally>>,
    trusted_proxies: Vec<IpAddr>,
}

impl FailedAuth {
    /// `rate` failures per second per address sustained, `burst` at once; `trusted_proxies`: the
    /// addresses whose `X-Forwarded-For` is believed.
    pub fn new(rate: u32, burst: u32, trusted_proxies: Vec<IpAddr>) -> Self {
        FailedAuth {
            limiter: RateLimiter::new(rate, burst, crate::limit::DEFAULT_MAX_KEYS),
            tallies: Mutex::new(HashMap::new()),
            trusted_proxies,
        }
    }

    /// The client address of a request (see the module documentation).
    pub fn client_of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let client = forwarded
            .iter()
            .rev()
            .filter_map(|entry| entry.parse::<IpAddr>().ok())
            .find(|ip| !self.trusted_proxies.contains(ip));
        Some(client.unwrap_or(peer))
    }

    /// Count a failure from `client` on `path` at `now` (unix ms). `Err`: the address is over its
    /// allowance; answer 429 with this `Retry-After`.
    pub fn fail(
        &self,
        client: Option<IpAddr>,
        failure: &AuthFailure,
        path: &str,
        now: i64,
    ) -> Result<(), RetryAfter> {
        let allowed = match client {
            Some(ip) => self.limiter.check(ip),
            None => Ok(()),
        };
        let mut tallies = self
            .tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        if !tallies.contains_key(&key) && tallies.len() >= MAX_ADDRESSES {
            key = "*".into();
        }
        let tally = tallies.entry(key).or_default();
        if tally.count == 0 {
            tally.first = now;
        }
        tally.count += 1;
        tally.last = now;
        tally.throttled += u64::from(allowed.is_err());
        *tally.reasons.entry(failure.to_string()).or_default() += 1;
        if let Some(device) = failure.device() {
            if tally.devices.len() < MAX_DEVICES {
                tally.devices.insert(device.to_string());
            }
        }
        if tally.paths.len() < MAX_PATHS {
            tally.paths.insert(path.to_owned());
        }
        allowed
    }

    /// The interval's tallies as audit events (one per address), starting a new interval.
    pub fn drain(&self) -> Vec<AuditEvent> {
        let tallies = std::mem::take(
            &mut *self
                .tallies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut events: Vec<AuditEvent> = tallies
            .into_iter()
            .map(|(peer, t)| {
                AuditEvent::at(
                    t.first,
                    Who {
                        user: "-".into(),
                        role: "-".into(),
                        device: None,
                    },
                    Action::AuthFailed {
                        peer,
                        count: t.count,
                        throttled: t.throttled,
                        reasons: t.reasons,
                        devices: t.devices.into_iter().collect(),
                        paths: t.paths.into_iter().collect(),
                        first: sync_core::audit::rfc3339_ms(t.first),
                        last: sync_core::audit::rfc3339_ms(t.last),
                    },
                )
            })
            .collect();
        events.sort_by(|a, b| a.at.cmp(&b.at));
        events
    }
}

/// Write the tallies to the audit trail every `interval` until the process ends.
pub fn flush_every(
    failures: Arc<FailedAuth>,
    store: Arc<dyn Store>,
    interval: Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("desa-auth-audit".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            flush(&failures, store.as_ref());
        })
        .map(|_| ())
}

/// Write what has been tallied (also at shutdown).
pub fn flush(failures: &FailedAuth, store: &dyn Store) {
    let events = failures.drain();
    if events.is_empty() {
        return;
    }
    if let Err(e) = store.append_audit(&events) {
        tracing::error!(error = %e, entries = events.len(), "auditing failed authentications");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_throttled_per_address_and_tallied_once_per_interval() {
        let failures = FailedAuth::new(1, 3, Vec::new());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let device = sync_core::DeviceId::from_bytes([1; 16]);
        for i in 0..3 {
            assert!(failures
                .fail(
                    Some(a),
                    &AuthFailure::WrongSecret(device),
                    "/api/v1/sync",
                    i
                )
                .is_ok());
        }
        let over = failures.fail(Some(a), &AuthFailure::Missing, "/ws", 3);
        assert!(over.is_err(), "the fourth at once is throttled");
        assert!(
            failures
                .fail(Some(b), &AuthFailure::Missing, "/", 3)
                .is_ok(),
            "another address is not"
        );
        let events = failures.drain();
        assert_eq!(events.len(), 2, "one entry per address");
        let Action::AuthFailed {
            peer,
            count,
            throttled,
            reasons,
            devices,
            paths,
            ..
        } = &events[0].action
        else {
            panic!()
        };
        assert_eq!((peer.as_str(), *count, *throttled), ("10.0.0.1", 4, 1));
        assert_eq!(reasons["wrong secret"], 3);
        assert_eq!(reasons["missing token"], 1);
        assert_eq!(devices, &[device.to_string()]);
        assert_eq!(paths, &["/api/v1/sync".to_owned(), "/ws".to_owned()]);
        assert!(failures.drain().is_empty(), "a new interval starts empty");
    }

    #[actix_web::test]
    async fn the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let request = |peer: &str| {
            actix_web::test::TestRequest::default()
                .peer_addr(format!("{peer}:40000").parse().unwrap())
                .insert_header(("x-forwarded-for", "203.0.113.9, 198.51.100.7"))
                .to_http_request()
        };
        let trusting = FailedAuth::new(1, 1, vec![proxy]);
        assert_eq!(
            trusting.client_of(&request("127.0.0.1")),
            Some("198.51.100.7".parse().unwrap()),
            "the entry the proxy appended"
        );
        assert_eq!(
            trusting.client_of(&request("192.0.2.1")),
            Some("192.0.2.1".parse().unwrap()),
            "a client that is not the proxy cannot choose its address"
        );
        let plain = FailedAuth::new(1, 1, Vec::new());
        assert_eq!(
            plain.client_of(&request("127.0.0.1")),
            Some(proxy),
            "no trusted proxy: the header is ignored"
        );
    }
}
