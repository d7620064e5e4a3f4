//! End-to-end test support: start the real `desa-server` on a free port with a temporary data
//! directory, drive real `desa` stores, and call the coordinator API over HTTP.
//!
//! The binaries are the ones `cargo test --workspace` builds (the server and client packages have
//! integration tests, so cargo builds their binaries before running any test). Running this crate
//! alone (`cargo test -p desa-tests`) needs `cargo build --bins` first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// `target/<profile>`: where this executable was built (tests live one level down, in `deps/`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own executable path");
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary, with a clear message if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --bins` (or the whole `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A running `desa-server`.
pub struct Server {
    child: Child,
    /// Its data directory (kept across restarts).
    pub data: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    extra: Vec<String>,
}

impl Server {
    /// Start on a free port with `data` as its data directory.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, port) = spawn(data, 0, &extra);
        Server {
            child,
            data: data.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            extra,
        }
    }

    /// SIGKILL: no shutdown, no flushing — a power cut for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _) = spawn(&self.data, self.port, &self.extra);
        self.child = child;
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process id (to read its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` → (status, JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        response(ureq_agent().get(format!("{}{path}", self.url)).call())
    }

    /// `PATCH path` with a JSON body → (status, JSON).
    pub fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        response(
            ureq_agent()
                .patch(format!("{}{path}", self.url))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    /// `POST /api/v1/sync` with raw bytes → (status, body bytes).
    pub fn post_sync(&self, body: &[u8]) -> (u16, Vec<u8>) {
        let result = ureq_agent()
            .post(format!("{}/api/v1/sync", self.url))
            .header("Content-Type", "application/octet-stream")
            .send(body);
        match result {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_vec().unwrap()),
            Err(e) => panic!("sync request failed: {e}"),
        }
    }

    /// The server's seq (from /healthz): moves exactly when something is stored.
    pub fn seq(&self) -> u64 {
        self.get("/healthz").1["seq"].as_u64().unwrap()
    }

    /// One report as the coordinator sees it.
    pub fn report(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/reports/{id}"));
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ureq_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

fn response(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = result.expect("HTTP request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn spawn(data: &Path, port: u16, extra: &[String]) -> (Child, u16) {
    let mut child = Command::new(binary("desa-server"))
        .arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("DESA_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // A fixed database key, so that no key file is generated beside the temporary directory.
        .env("DESA_KEY", TEST_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start desa-server");
    // Wait for the one line the server prints once it is listening (a condition, not a delay).
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read server stdout");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("desa-server did not start: {line:?}"));
    (child, port)
}

/// The master key (`DESA_KEY`) of every server these helpers start.
pub const TEST_KEY: &str = "74657374206b6579206f6620646573612d73796e6320652d32652074657374ff";

/// One volunteer's device: a `desa` store in a temporary directory.
pub struct Desa {
    store: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a `desa` run printed.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The last line of stdout (where `desa new` prints the id).
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl Desa {
    /// `desa init` a new store for `village` against `server_url`.
    pub fn init(server_url: &str, village: &str, name: &str) -> Desa {
        let dir = tempfile::tempdir().unwrap();
        let desa = Desa {
            store: dir.path().join("store.db"),
            _dir: dir,
        };
        desa.ok(&[
            "init",
            "--server",
            server_url,
            "--village",
            village,
            "--name",
            name,
        ]);
        desa
    }

    /// Run `desa ARGS` against this store.
    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = Command::new(binary("desa"))
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .output()
            .expect("run desa");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "desa {args:?} failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        run
    }

    /// `desa show ID --json`.
    pub fn show(&self, id: &str) -> Value {
        self.ok(&["show", id, "--json"]).json()
    }

    /// `desa sync`, required to succeed.
    pub fn sync(&self) -> Run {
        self.ok(&["sync"])
    }

    /// The store file (to check a failed command changed nothing).
    pub fn store_path(&self) -> &Path {
        &self.store
    }
}
