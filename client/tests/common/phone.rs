//! The real `desa` binary, run as a volunteer would: a store in a temporary directory, the store
//! passphrase in `DESA_PASSPHRASE` and the office's token in `DESA_TOKEN`.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use sync_core::DeviceToken;

use super::{new_token, PASSPHRASE, VILLAGE};

pub struct Phone {
    pub dir: tempfile::TempDir,
    pub token: DeviceToken,
}

impl Phone {
    /// A phone with a token from the office and no store yet.
    pub fn new() -> Self {
        Phone {
            dir: tempfile::tempdir().unwrap(),
            token: new_token(),
        }
    }

    /// `desa init` against `server` (with `extra` arguments), required to succeed.
    pub fn init(server: &str, name: &str, extra: &[&str]) -> Self {
        let phone = Phone::new();
        let mut args = vec![
            "init",
            "--server",
            server,
            "--village",
            VILLAGE,
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        phone.ok(&args);
        phone
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    /// `desa` with this phone's store, HOME, passphrase and token; nothing else from the
    /// environment of the test process that could change what it does.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_desa"));
        command
            .env("DESA_STORE", self.store())
            .env("HOME", self.dir.path())
            .env("DESA_PASSPHRASE", PASSPHRASE)
            .env("DESA_TOKEN", self.token.reveal());
        command
    }

    pub fn desa(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.desa(args);
        assert!(
            out.status.success(),
            "desa {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
