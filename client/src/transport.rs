//! Carrying one encoded sync request to the server and its answer back.
//!
//! [`Transport`] is the only thing `desa sync` needs from the network, so tests plug in an
//! in-process server ([`sync_core::sim::MemoryServer`]) and the real command uses
//! [`HttpTransport`].
//!
//! Every request carries the device token (`Authorization: Bearer desa_...`). `https://` servers
//! are checked against Mozilla's roots, or against the office's own CA when the device was set up
//! with `--ca-file` (then only that CA is trusted). The token never appears in an error or in
//! `Debug` output.

use std::fmt;
use std::time::Duration;

use sync_core::DeviceToken;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use zeroize::Zeroizing;

/// The server's sync endpoint, relative to its base URL.
pub const SYNC_PATH: &str = "/api/v1/sync";

/// Time allowed to open a connection. A 2G link that cannot connect in 10 s is, for the volunteer,
/// offline: better to say so and keep the changes than to hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a whole round trip: a 1 MiB upload or a 512 KiB page at 40 kbit/s, with room.
/// Bounds a stalled link.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest answer accepted: a feed page (512 KiB, plus one report that may exceed it) and
/// rebuilds, with ample room; anything bigger is not a desa-sync answer.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest error body read (it is a short JSON object).
const MAX_ERROR_BYTES: u64 = 64 * 1024;

/// Why a round trip did not produce an answer body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No connection: refused, no route, DNS failure, timeout, dropped mid-way. Nothing the
    /// device holds changes; the sync is repeated later.
    #[error("the server cannot be reached")]
    Offline,
    /// 401: the server does not accept the device's token (missing, wrong or revoked).
    #[error("the server does not accept this device's token: {detail}")]
    Unauthorized {
        /// The server's explanation.
        detail: String,
    },
    /// 403: the token is good but this device may not do what it asked (e.g. a village outside
    /// the volunteer's villages).
    #[error("the server does not permit this device to sync this: {detail}")]
    Forbidden {
        /// The server's explanation.
        detail: String,
    },
    /// 413: a request larger than the server takes.
    #[error("the request is too large for the server: {detail}")]
    TooLarge {
        /// The server's explanation.
        detail: String,
    },
    /// 429: too many requests; try again later.
    #[error("the server is busy")]
    RateLimited {
        /// The server's `Retry-After`, in seconds, when it gave one.
        retry_after: Option<u64>,
    },
    /// The TLS connection failed: most often the server's certificate is not trusted.
    #[error("secure connection to the server failed: {0}")]
    Tls(String),
    /// The server answered with another error status (its JSON `{"error", "detail"}`).
    #[error("server refused the sync ({status}): {error}: {detail}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Short error name.
        error: String,
        /// The server's explanation.
        detail: String,
    },
    /// Something answered, but not like a desa-sync server (or the URL is unusable).
    #[error("talking to the server: {0}")]
    Protocol(String),
}

/// One sync round trip.
pub trait Transport {
    /// POST an encoded `SyncRequest`; the encoded `SyncResponse` of a 200 answer.
    fn post_sync(&self, body: Vec<u8>) -> Result<Vec<u8>, TransportError>;
}

/// The real transport: HTTP or HTTPS with ureq (rustls on ring).
pub struct HttpTransport {
    agent: ureq::Agent,
    url: String,
    authorization: Zeroizing<String>,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The certificates of a PEM file, each checked the way rustls will use it as a trust anchor, so
/// that a wrong file is refused when it is given rather than at every sync. The error says what is
/// wrong in words for the volunteer.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => {
                let der = rustls_pki_types::CertificateDer::from(cert.der());
                webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| format!("certificate {} is not usable: {e}", certs.len() + 1))?;
                certs.push(cert);
            }
            // A private key has no business here: refuse rather than carry it along.
            Ok(_) => return Err("it holds a private key; give only the CA certificate".into()),
            Err(e) => return Err(format!("it is not valid PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

impl HttpTransport {
    /// A transport to the server at `base` (`http://host:port` or `https://host`), showing
    /// `token`, trusting only the CA certificates in `ca_pem` when given.
    pub fn new(
        base: &str,
        token: &DeviceToken,
        ca_pem: Option<&str>,
    ) -> Result<Self, TransportError> {
        let roots = match ca_pem {
            None => RootCerts::WebPki,
            Some(pem) => {
                RootCerts::new_with_certs(&ca_certificates(pem.as_bytes()).map_err(|e| {
                    TransportError::Tls(format!("the stored office CA certificate: {e}"))
                })?)
            }
        };
        let config = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // Error statuses carry the server's JSON explanation: read it rather than fail.
            .http_status_as_error(false)
            // A redirect would drop the body of a POST; show it as the error it is.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build();
        Ok(HttpTransport {
            agent: ureq::Agent::new_with_config(config),
            url: format!("{}{SYNC_PATH}", base.trim_end_matches('/')),
            authorization: Zeroizing::new(format!("Bearer {}", token.reveal().as_str())),
        })
    }
}

impl Transport for HttpTransport {
    fn post_sync(&self, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let mut response = self
            .agent
            .post(&self.url)
            .header("Authorization", self.authorization.as_str())
            .header("Content-Type", "application/octet-stream")
            .send(&body[..])
            .map_err(classify)?;
        let status = response.status().as_u16();
        if status == 200 {
            return response
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec()
                .map_err(classify);
        }
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BYTES)
            .read_to_vec()
            .map_err(classify)?;
        Err(http_error(status, &text, retry_after))
    }
}

/// Sort ureq's errors into "try again later" and "something is wrong".
fn classify(error: ureq::Error) -> TransportError {
    match error {
        // A failed handshake comes back as an I/O error around rustls' own: not "offline", since
        // trying again later will fail the same way.
        ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            TransportError::Tls(tls_advice(&e.to_string()))
        }
        ureq::Error::Rustls(e) => TransportError::Tls(tls_advice(&e.to_string())),
        ureq::Error::Tls(e) => TransportError::Tls(tls_advice(e)),
        ureq::Error::Pem(e) => TransportError::Tls(tls_advice(&e.to_string())),
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed => TransportError::Offline,
        ureq::Error::BadUri(uri) => TransportError::Protocol(format!("bad server URL {uri}")),
        other => TransportError::Protocol(other.to_string()),
    }
}

fn tls_advice(reason: &str) -> String {
    format!(
        "{reason} (check the server URL; if the office's server has its own certificate, this \
         device must be set up with desa init --ca-file)"
    )
}

/// The error of a non-200 answer, from its JSON body when it has one. 401, 403, 413 and 429 have
/// their own variants (the status decides, whatever the body's `error` says).
pub fn http_error(status: u16, body: &[u8], retry_after: Option<u64>) -> TransportError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        detail: String,
    }
    let (error, detail) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.error, e.detail),
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            ("unexpected answer".to_owned(), text.trim().to_owned())
        }
    };
    // The volunteer reads the detail in parentheses; an empty one says nothing, the code does.
    let detail = if detail.is_empty() {
        error.clone()
    } else {
        detail
    };
    match status {
        401 => TransportError::Unauthorized { detail },
        403 => TransportError::Forbidden { detail },
        413 => TransportError::TooLarge { detail },
        429 => TransportError::RateLimited { retry_after },
        _ => TransportError::Http {
            status,
            error,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn error_bodies_are_read() {
        assert_eq!(
            http_error(
                422,
                br#"{"error":"unknown village","detail":"6399999999"}"#,
                None
            ),
            TransportError::Http {
                status: 422,
                error: "unknown village".into(),
                detail: "6399999999".into()
            }
        );
        let TransportError::Http { error, detail, .. } =
            http_error(502, b"<html>Bad gateway</html>", None)
        else {
            panic!("not an http error");
        };
        assert_eq!(error, "unexpected answer");
        assert!(detail.contains("Bad gateway"));
        let body = |code: &str| format!(r#"{{"error":"{code}","detail":"why"}}"#).into_bytes();
        assert_eq!(
            http_error(401, &body("unauthorized"), None),
            TransportError::Unauthorized {
                detail: "why".into()
            }
        );
        assert_eq!(
            http_error(403, &body("forbidden"), None),
            TransportError::Forbidden {
                detail: "why".into()
            }
        );
        assert_eq!(
            http_error(413, &body("too_large"), None),
            TransportError::TooLarge {
                detail: "why".into()
            }
        );
        assert_eq!(
            http_error(401, br#"{"error":"unauthorized"}"#, None),
            TransportError::Unauthorized {
                detail: "unauthorized".into()
            }
        );
        assert_eq!(
            http_error(429, &body("rate_limited"), Some(30)),
            TransportError::RateLimited {
                retry_after: Some(30)
            }
        );
    }

    #[test]
    fn ca_files_are_checked() {
        assert!(ca_certificates(b"")
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(ca_certificates(b"hello")
            .unwrap_err()
            .contains("no PEM certificate"));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(ca_certificates(garbage).unwrap_err().contains("not usable"));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(ca_certificates(broken).is_err());
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let token = DeviceToken::new(sync_core::DeviceId::new_random(), [5; 32]);
        let transport = HttpTransport::new("http://127.0.0.1:1", &token, None).unwrap();
        let shown = format!("{transport:?}");
        assert!(!shown.contains(&token.reveal()), "{shown}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
    }

    #[test]
    fn nothing_listening_is_offline() {
        // Bind, learn the port, close: nothing listens there afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let token = DeviceToken::new(sync_core::DeviceId::new_random(), [5; 32]);
        let transport =
            HttpTransport::new(&format!("http://127.0.0.1:{port}/"), &token, None).unwrap();
        assert_eq!(
            transport.url,
            format!("http://127.0.0.1:{port}/api/v1/sync")
        );
        assert_eq!(
            transport.post_sync(vec![1, 2, 3]),
            Err(TransportError::Offline)
        );
    }
}
