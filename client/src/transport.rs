//! Carrying one encoded sync request to the server and its answer back.
//!
//! [`Transport`] is the only thing `desa sync` needs from the network, so tests plug in an
//! in-process server ([`sync_core::sim::MemoryServer`]) and the real command uses
//! [`HttpTransport`].

use std::time::Duration;

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
    /// The server answered with an error status (its JSON `{"error", "detail"}`).
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

/// The real transport: HTTP with ureq (plain http for now; TLS comes later).
#[derive(Debug)]
pub struct HttpTransport {
    agent: ureq::Agent,
    url: String,
}

impl HttpTransport {
    /// A transport to the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // Error statuses carry the server's JSON explanation: read it rather than fail.
            .http_status_as_error(false)
            // A redirect would drop the body of a POST; show it as the error it is.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build();
        HttpTransport {
            agent: ureq::Agent::new_with_config(config),
            url: format!("{}{SYNC_PATH}", base.trim_end_matches('/')),
        }
    }
}

impl Transport for HttpTransport {
    fn post_sync(&self, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let mut response = self
            .agent
            .post(&self.url)
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
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BYTES)
            .read_to_vec()
            .map_err(classify)?;
        Err(http_error(status, &text))
    }
}

/// Sort ureq's errors into "try again later" and "something is wrong".
fn classify(error: ureq::Error) -> TransportError {
    match error {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed => TransportError::Offline,
        ureq::Error::BadUri(uri) => TransportError::Protocol(format!("bad server URL {uri}")),
        other => TransportError::Protocol(other.to_string()),
    }
}

/// The error of a non-200 answer, from its JSON body when it has one.
pub fn http_error(status: u16, body: &[u8]) -> TransportError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        detail: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => TransportError::Http {
            status,
            error: e.error,
            detail: e.detail,
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            TransportError::Http {
                status,
                error: "unexpected answer".into(),
                detail: text.trim().to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        assert_eq!(
            http_error(422, br#"{"error":"unknown village","detail":"6399999999"}"#),
            TransportError::Http {
                status: 422,
                error: "unknown village".into(),
                detail: "6399999999".into()
            }
        );
        let TransportError::Http { error, detail, .. } =
            http_error(502, b"<html>Bad gateway</html>")
        else {
            panic!("not an http error");
        };
        assert_eq!(error, "unexpected answer");
        assert!(detail.contains("Bad gateway"));
    }

    #[test]
    fn nothing_listening_is_offline() {
        // Bind, learn the port, close: nothing listens there afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let transport = HttpTransport::new(&format!("http://127.0.0.1:{port}/"));
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
