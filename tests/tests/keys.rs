//! The database key as an operator meets it, on the real binary: generated beside the data
//! directory on first start and reused, refused when others can read it, and a wrong key stops the
//! server with one clear line (not SQLCipher's log).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use desa_tests::binary;

/// `desa-server serve` on a free loopback port with `data`, the key from `env` (name, value).
fn serve(data: &Path, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(binary("desa-server"));
    command
        .arg("serve")
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(data)
        .env_remove("DESA_KEY")
        .env_remove("DESA_KEY_FILE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("start desa-server")
}

/// Wait for the "listening" line, then stop the server; its stderr.
fn started(mut child: Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let stderr = desa_tests::stderr_of(&mut child);
    assert!(
        line.starts_with("listening on http://"),
        "did not start: {line:?}\n{stderr}"
    );
    stderr
}

#[test]
fn a_key_file_is_generated_beside_the_data_directory_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("data.key");

    let stderr = started(serve(&data, &[]));
    assert!(
        stderr.contains("generated a new database key") && stderr.contains("back it up"),
        "{stderr}"
    );
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !data.join("data.key").exists(),
        "the key is outside the data directory"
    );

    let stderr = started(serve(&data, &[]));
    assert!(!stderr.contains("generated"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    // The same key given explicitly opens the same database.
    let _ = started(serve(&data, &[("DESA_KEY", key.trim())]));
    let _ = started(serve(
        &data,
        &[("DESA_KEY_FILE", key_file.to_str().unwrap())],
    ));
}

#[test]
fn a_wrong_key_stops_the_server_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _ = started(serve(&data, &[("DESA_KEY", &"1".repeat(64))]));
    let db = data.join("desa.sqlite3");
    // The first server was killed: its WAL is still there, as after a crash.
    let wal = data.join("desa.sqlite3-wal");
    let before = (std::fs::read(&db).unwrap(), std::fs::read(&wal).unwrap());

    let (code, stderr) = desa_tests::refused(serve(&data, &[("DESA_KEY", &"2".repeat(64))]));
    assert_ne!(code, 0);
    assert_eq!(
        stderr.trim(),
        format!(
            "desa-server: the database at {} cannot be opened with this key: wrong key file?",
            db.display()
        ),
        "one line, and no SQLCipher log"
    );
    let after = (std::fs::read(&db).unwrap(), std::fs::read(&wal).unwrap());
    assert!(
        after == before,
        "a failed start changed the database or its WAL"
    );
}

#[test]
fn malformed_and_exposed_keys_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = desa_tests::refused(serve(&data, &[("DESA_KEY", "abc")]));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("DESA_KEY does not hold a key: 3 characters"),
        "{stderr}"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key_file = dir.path().join("exposed.key");
        std::fs::write(&key_file, "3".repeat(64)).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, stderr) = desa_tests::refused(serve(
            &data,
            &[("DESA_KEY_FILE", key_file.to_str().unwrap())],
        ));
        assert_ne!(code, 0);
        assert!(
            stderr.contains(&format!("chmod 600 {}", key_file.display())),
            "{stderr}"
        );
    }
    assert!(
        !data.join("desa.sqlite3").exists(),
        "nothing created without a key"
    );
}
