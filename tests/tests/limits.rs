//! Size limits over real sockets: a body over `--max-body` gets the API's 413 on every route,
//! declared or chunked, and a WebSocket message over `--max-message` closes the connection with
//! 1009 and a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use desa_tests::Server;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: usize = 1000;

/// How the body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Declared,
    Chunked,
}

/// One HTTP/1.1 request written by hand (any method may carry a body), the answer's status and
/// JSON body. The body is small enough to sit in the socket buffers, so the server may answer
/// before reading it.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    framing: Framing,
) -> (u16, Value) {
    let port = server.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nAuthorization: Bearer {}\r\n",
        server.coordinator
    );
    let mut out = Vec::new();
    match framing {
        Framing::Declared => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(body);
        }
        Framing::Chunked => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            for chunk in body.chunks(300) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    // The server may close as soon as it has answered; a write cut short is fine.
    let _ = stream.write_all(&out);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

#[test]
fn an_oversized_body_gets_413_with_the_json_error_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let limit = LIMIT.to_string();
    let server = Server::start(dir.path(), &["--max-body", &limit]);
    let profile =
        sync_core::ReportId::village_profile(sync_core::VillageCode::parse("6302010001").unwrap());
    let patch_path = format!("/api/v1/reports/{profile}");
    let big_json = format!("{{\"note\": \"{}\"}}", "x".repeat(2 * LIMIT));
    let routes = [
        ("POST", "/api/v1/sync"),
        ("PATCH", patch_path.as_str()),
        ("GET", "/healthz"),
        ("GET", "/api/v1/reports"),
        ("GET", patch_path.as_str()),
        ("GET", "/api/v1/villages"),
        ("GET", "/api/v1/schemas/incident"),
        ("GET", "/ws"),
        ("POST", "/no/such/route"),
    ];
    for (method, path) in routes {
        let (status, body) = request(
            &server,
            method,
            path,
            big_json.as_bytes(),
            Framing::Declared,
        );
        assert_eq!(status, 413, "{method} {path}: {body}");
        assert_eq!(body["error"], "too_large", "{method} {path}: {body}");
        assert_eq!(
            body["detail"],
            format!("body larger than the limit of {LIMIT} bytes")
        );
    }
    // Without a declared length, the routes that read a body cut it at the limit.
    for (method, path) in [("POST", "/api/v1/sync"), ("PATCH", patch_path.as_str())] {
        let (status, body) = request(&server, method, path, big_json.as_bytes(), Framing::Chunked);
        assert_eq!(status, 413, "{method} {path} chunked: {body}");
        assert_eq!(
            body["error"], "too_large",
            "{method} {path} chunked: {body}"
        );
    }
    // Under the limit, the same requests reach their handlers (a village profile has no notes:
    // the handler's own 400 shows the body was read and parsed).
    let small = br#"{"note": "short"}"#;
    let (status, body) = request(&server, "PATCH", &patch_path, small, Framing::Chunked);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request", "{body}");
    let (status, body) = request(&server, "GET", "/healthz", b"{}", Framing::Declared);
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_websocket_message_over_the_limit_closes_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let limit = LIMIT.to_string();
    let server = Server::start(dir.path(), &["--max-message", &limit]);
    let url = server.ws_url(&server.coordinator);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    socket
        .send(Message::Binary(vec![0xa0; 2 * LIMIT].into()))
        .await
        .expect("send");
    let close = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("an answer")
            .expect("a frame before the end")
            .expect("a clean close");
        if let Message::Close(close) = frame {
            break close.expect("a close code");
        }
    };
    assert_eq!(close.code, CloseCode::Size);
    assert_eq!(
        close.reason.as_str(),
        format!("message larger than the limit of {LIMIT} bytes")
    );
}

#[test]
fn a_device_over_its_rate_gets_429_with_retry_after_and_others_are_not_affected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--rate-limit", "1", "--rate-burst", "5"]);
    let busy = server.token("busy", "volunteer", &["6302010001"]);
    let calm = server.token("calm", "volunteer", &["6302010001"]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let me = |token: &str| {
        agent
            .get(format!("{}/api/v1/me", server.url))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
    };
    // The burst passes; the next request within the second does not.
    for _ in 0..5 {
        assert_eq!(me(&busy).status(), 200);
    }
    let mut refused = me(&busy);
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    let body: Value = serde_json::from_str(&refused.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Another device has its own allowance.
    assert_eq!(me(&calm).status(), 200);
}

#[test]
fn sync_answers_hold_at_most_the_configured_reports_per_page() {
    use sync_core::protocol::SyncResponse;
    use sync_core::sim::MemoryDevice;
    use sync_core::{DeviceId, ReportKind, VillageCode};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--page-reports", "2"]);
    let village = VillageCode::parse("6302010001").unwrap();
    let sync = |device: &mut MemoryDevice| {
        let mut pages = Vec::new();
        loop {
            let (status, body) = server.post_sync(&device.request());
            assert_eq!(status, 200);
            pages.push(SyncResponse::decode(&body).unwrap());
            if !device.handle_response(&body).unwrap() {
                return pages;
            }
        }
    };
    let mut author = MemoryDevice::new(DeviceId::from_bytes([1; 16]), village);
    for n in 0..5 {
        author
            .create(
                ReportKind::Incident,
                &sync_core::sim::sample_fields(&format!("report {n}")),
            )
            .unwrap();
    }
    sync(&mut author);
    // A new device: 5 incidents and the village profile, two per page.
    let mut fresh = MemoryDevice::new(DeviceId::from_bytes([2; 16]), village);
    let pages = sync(&mut fresh);
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p.feeds.iter().map(|f| f.items.len()).sum())
        .collect();
    assert!(sizes.iter().all(|n| *n <= 2), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 6, "{sizes:?}");
}

/// A coordinator's tool opening a day's 200 reports at once is not throttled like a phone, at the
/// defaults; a volunteer's phone keeps its allowance; `--role-limit` changes one role's.
#[test]
fn each_role_has_its_own_request_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--role-limit", "analyst=1/3"]);
    let coordinator = server.token("kasi", "coordinator", &[]);
    let phone = server.token("ani", "volunteer", &["6302010001"]);
    let analyst = server.token("rina", "analyst", &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, token: &str| {
        agent
            .get(format!("{}{path}", server.url))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    // 200 reports read one by one (ids the server does not have: 404, counted all the same).
    for n in 0..200u8 {
        let id = sync_core::ReportId::from_random([n; 16]);
        assert_eq!(get(&format!("/api/v1/reports/{id}"), &coordinator), 404);
    }
    // Requests until the first 429 (at most `tries`): how many passed before it.
    let until_refused = |token: &str, tries: usize| {
        (0..tries)
            .position(|_| get("/api/v1/me", token) == 429)
            .unwrap_or_else(|| panic!("no 429 in {tries} requests"))
    };
    // The phone: its burst of 100 (and what its 20/s gave back meanwhile), then 429.
    let passed = until_refused(&phone, 150);
    assert!((100..150).contains(&passed), "{passed}");
    // The analyst, as configured: 3 at once (1/s after).
    let passed = until_refused(&analyst, 10);
    assert!((3..5).contains(&passed), "{passed}");
}
