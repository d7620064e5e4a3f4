//! The real `desa` binary syncing over real HTTP with a minimal stand-in server: the in-process
//! `MemoryServer` behind a few lines of HTTP/1.1 on a port the OS picked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sync_core::sim::MemoryServer;

/// What the stand-in server answers: (status, content type, body) for a request body.
type Answer = dyn Fn(&[u8]) -> (u16, &'static str, Vec<u8>) + Send + Sync;

/// Serve every connection on a fresh port with `answer`; returns the base URL. The thread lives
/// as long as the test process (it blocks in `accept`).
fn serve(answer: Arc<Answer>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (status, kind, reply) = if request_line.starts_with("POST /api/v1/sync ")
                && content_type == "application/octet-stream"
            {
                answer(&body)
            } else {
                (
                    404,
                    "text/plain",
                    format!("no route: {request_line}").into_bytes(),
                )
            };
            let mut stream = reader.into_inner();
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&reply);
        }
    });
    url
}

/// A stand-in for the real server around one `MemoryServer`.
fn memory_server() -> String {
    let server = Mutex::new(MemoryServer::new());
    serve(Arc::new(move |body: &[u8]| {
        match server.lock().unwrap().handle(body) {
            Ok(reply) => (200, "application/octet-stream", reply),
            Err(e) => (
                400,
                "application/json",
                serde_json::json!({"error": "bad request", "detail": e.to_string()})
                    .to_string()
                    .into_bytes(),
            ),
        }
    }))
}

struct Phone {
    dir: tempfile::TempDir,
}

impl Phone {
    fn new(server: &str, name: &str) -> Self {
        let phone = Phone {
            dir: tempfile::tempdir().unwrap(),
        };
        phone.ok(&[
            "init",
            "--server",
            server,
            "--village",
            "6302010001",
            "--name",
            name,
        ]);
        phone
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    fn desa(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_desa"))
            .args(args)
            .env("DESA_STORE", self.store())
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.desa(args);
        assert!(
            out.status.success(),
            "desa {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

#[test]
fn two_phones_sync_over_http() {
    let url = memory_server();
    let (rina, budi) = (Phone::new(&url, "Rina"), Phone::new(&url, "Budi"));
    let made = rina.ok(&[
        "new",
        "incident",
        "--set",
        "category=missing_person",
        "--set",
        "title=Girl missing since Sunday",
    ]);
    let id = made.lines().last().unwrap().to_owned();

    let out = rina.desa(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("synced: 1 change sent (1 accepted, 0 refused, 0 held), 0 reports received"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sync: page 1"));

    let out = budi.ok(&["sync"]);
    assert!(out.contains("1 report received"), "{out}");
    let shown = budi.json(&["show", &id, "--json"]);
    assert_eq!(shown["document"]["title"], "Girl missing since Sunday");
    assert_eq!(shown["waiting"], 0);

    budi.ok(&["edit", &id, "--note", "Seen at the harbour"]);
    budi.ok(&["sync"]);
    rina.ok(&["sync"]);
    let a = rina.json(&["show", &id, "--json"]);
    let b = budi.json(&["show", &id, "--json"]);
    assert_eq!(a["document"], b["document"]);
    assert_eq!(a["document"]["notes"][0]["author"], "Budi");
    assert!(rina.json(&["status", "--json"])["last_sync"].is_string());
}

#[test]
fn a_refused_request_changes_nothing() {
    let url = serve(Arc::new(|_: &[u8]| {
        (
            422,
            "application/json",
            br#"{"error":"unknown village","detail":"6302010001 is not served here"}"#.to_vec(),
        )
    }));
    let phone = Phone::new(&url, "Rina");
    phone.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = phone.json(&["status", "--json"]);
    let out = phone.desa(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "server refused the sync (422): unknown village: 6302010001 is not served here"
        ),
        "{stderr}"
    );
    assert_eq!(phone.json(&["status", "--json"]), before);
}

#[test]
fn an_answer_that_is_not_a_sync_response_changes_nothing() {
    let url = serve(Arc::new(|_: &[u8]| {
        (200, "text/html", b"<html>captive portal</html>".to_vec())
    }));
    let phone = Phone::new(&url, "Rina");
    phone.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = phone.json(&["status", "--json"]);
    let out = phone.desa(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be used"), "{stderr}");
    assert_eq!(phone.json(&["status", "--json"]), before);
}
