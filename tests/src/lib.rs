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

pub mod ws;

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

/// The passphrase every test device store is encrypted with.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A running `desa-server`.
pub struct Server {
    child: Child,
    /// Its data directory (kept across restarts).
    pub data: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    extra: Vec<String>,
    /// A coordinator's token: what `get`, `patch` and `post_sync` authenticate with.
    pub coordinator: String,
    /// The master key file and audit anchor, outside the data directory.
    keys: Keys,
}

/// Where a test server's secrets live: a private directory beside, not inside, the data.
#[derive(Clone)]
pub struct Keys {
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let key: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let path = dir.path().join("server.key");
        std::fs::write(&path, key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Keys {
            dir: std::sync::Arc::new(dir),
        }
    }

    /// The master key file.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The audit anchor file.
    pub fn anchor(&self) -> PathBuf {
        self.dir.path().join("audit-head")
    }

    fn apply(&self, command: &mut Command) {
        command
            .env("DESA_KEY_FILE", self.key_file())
            .env("DESA_AUDIT_ANCHOR", self.anchor())
            .env_remove("DESA_KEY");
    }
}

impl Server {
    /// Start on a free port with `data` as its data directory, with a coordinator account.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_with_umask(data, extra, None)
    }

    /// [`Server::start`] under a given umask (e.g. `"000"`), set by a shell before it execs the
    /// server: what the server creates must be private whatever the operator's umask.
    pub fn start_with_umask(data: &Path, extra: &[&str], umask: Option<&str>) -> Server {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(mask) = umask {
            extra.insert(0, format!("--umask={mask}"));
        }
        let keys = Keys::new();
        let (child, port) = spawn(data, 0, &extra, &keys);
        let mut server = Server {
            child,
            data: data.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            extra,
            coordinator: String::new(),
            keys,
        };
        server.coordinator = server.token("office", "coordinator", &[]);
        server
    }

    /// Run `desa-server ARGS --data DATA` (the operator commands), requiring success.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = self.admin_output(args);
        assert!(
            out.status.success(),
            "desa-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `desa-server ARGS --data DATA` with this server's keys, whatever the outcome.
    pub fn admin_output(&self, args: &[&str]) -> Output {
        let mut command = Command::new(binary("desa-server"));
        command
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .env("RUST_LOG", "warn");
        self.keys.apply(&mut command);
        command.output().expect("run desa-server")
    }

    /// The WebSocket URL with `token` in the query (as a browser's automerge-repo client connects).
    pub fn ws_url(&self, token: &str) -> String {
        format!("{}/ws?token={token}", self.url.replacen("http", "ws", 1))
    }

    /// The secrets' locations.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A new device token for user `name` (created with `role` and `villages` if new).
    pub fn token(&self, name: &str, role: &str, villages: &[&str]) -> String {
        let mut add = vec!["user", "add", name, "--role", role];
        for v in villages {
            add.extend(["--village", v]);
        }
        // The user may exist already (a second device): then only the device is added.
        let _ = self.admin_output(&add);
        let out = self.admin(&["device", "add", name]);
        out.lines().last().expect("token line").trim().to_owned()
    }

    /// `GET path` with `token` → (status, JSON).
    pub fn get_as(&self, token: &str, path: &str) -> (u16, Value) {
        response(
            ureq_agent()
                .get(format!("{}{path}", self.url))
                .header("Authorization", format!("Bearer {token}"))
                .call(),
        )
    }

    /// SIGKILL: no shutdown, no flushing — a power cut for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _) = spawn(&self.data, self.port, &self.extra, &self.keys);
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

    /// `GET path` as the coordinator → (status, JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(&self.coordinator, path)
    }

    /// `PATCH path` with a JSON body, as the coordinator → (status, JSON).
    pub fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.patch_as(&self.coordinator, path, body)
    }

    /// `PATCH path` with a JSON body and `token` → (status, JSON).
    pub fn patch_as(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        response(
            ureq_agent()
                .patch(format!("{}{path}", self.url))
                .header("Content-Type", "application/json")
                .header("Authorization", format!("Bearer {token}"))
                .send(body.to_string()),
        )
    }

    /// `POST /api/v1/sync` with raw bytes, as the coordinator → (status, body bytes).
    pub fn post_sync(&self, body: &[u8]) -> (u16, Vec<u8>) {
        self.post_sync_as(&self.coordinator, body)
    }

    /// `POST /api/v1/sync` with raw bytes and `token` → (status, body bytes).
    pub fn post_sync_as(&self, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let result = ureq_agent()
            .post(format!("{}/api/v1/sync", self.url))
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", format!("Bearer {token}"))
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

fn spawn(data: &Path, port: u16, extra: &[String], keys: &Keys) -> (Child, u16) {
    // `--umask=MASK` (first) is this helper's: run the server from a shell with that umask.
    let (umask, extra) = match extra.first().and_then(|a| a.strip_prefix("--umask=")) {
        Some(mask) => (Some(mask.to_owned()), &extra[1..]),
        None => (None, extra),
    };
    let mut command = match &umask {
        Some(mask) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
                .arg(binary("desa-server"));
            sh
        }
        None => Command::new(binary("desa-server")),
    };
    keys.apply(&mut command);
    let mut child = command
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
    /// `desa init` a new store for a new volunteer `name` of `village` on `server` (the operator
    /// creates the volunteer and a device token first; the token goes in through `DESA_TOKEN`).
    pub fn init(server: &Server, village: &str, name: &str) -> Desa {
        let token = server.token(name, "volunteer", &[village]);
        Desa::init_with_token(&server.url, village, name, &token)
    }

    /// `desa init` with a given token.
    pub fn init_with_token(server_url: &str, village: &str, name: &str, token: &str) -> Desa {
        Desa::init_with(server_url, village, name, token, &[])
    }

    /// `desa init` with a given token and more `init` arguments (`--ca-file PEM`).
    pub fn init_with(
        server_url: &str,
        village: &str,
        name: &str,
        token: &str,
        extra: &[&str],
    ) -> Desa {
        let dir = tempfile::tempdir().unwrap();
        let desa = Desa {
            store: dir.path().join("store.db"),
            _dir: dir,
        };
        let out = desa
            .command(&[
                "init",
                "--server",
                server_url,
                "--village",
                village,
                "--name",
                name,
            ])
            .args(extra)
            .env("DESA_TOKEN", token)
            .output()
            .expect("run desa init");
        assert!(
            out.status.success(),
            "desa init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        desa
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("desa"));
        command
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .env("DESA_PASSPHRASE", PASSPHRASE)
            .env_remove("DESA_TOKEN");
        command
    }

    /// Run `desa ARGS` against this store.
    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = self.command(args).output().expect("run desa");
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

/// Wait (bounded, 60 s) for a `desa-server` that must refuse to start; its exit code and stderr
/// (which must have been piped).
pub fn refused(mut child: Child) -> (i32, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("desa-server kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), stderr_of(&mut child))
}

/// All of a child's piped stderr (read to the end: the child must have exited or be killed).
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr was piped")
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}
