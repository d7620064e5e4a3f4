//! `desa` against an `https://` stand-in whose certificate an office CA made for this run signed:
//! trusted with `desa init --ca-file`, refused without it, and a bad CA file refused at `init`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::phone::{stderr, Phone};
use common::stand_in::{StandIn, TestPki};
use common::VILLAGE;

#[test]
fn an_office_ca_given_at_init_is_trusted_and_nothing_else_is() {
    let pki = TestPki::new();
    let server = StandIn::start(Some(pki.server.clone()));
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let with_ca = Phone::new();
    let ca_file = with_ca.dir.path().join("office-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    with_ca.ok(&[
        "init",
        "--server",
        &server.url,
        "--village",
        VILLAGE,
        "--name",
        "Rina",
        "--ca-file",
        ca_file.to_str().unwrap(),
    ]);
    // The CA is kept in the store: later commands do not need the file.
    std::fs::remove_file(&ca_file).unwrap();
    server.register(&with_ca.token);
    with_ca.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let out = with_ca.ok(&["sync"]);
    assert!(out.contains("1 change sent (1 accepted"), "{out}");

    // The same server, without the office CA: Mozilla's roots do not include it.
    let without = Phone::init(&server.url, "Budi", &[]);
    server.register(&without.token);
    without.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = without.json(&["status", "--json"]);
    let out = without.desa(&["sync"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("secure connection"), "{text}");
    assert!(text.contains("--ca-file"), "{text}");
    assert!(text.contains("Your 1 change is kept"), "{text}");
    assert!(!text.contains("offline"), "{text}");
    assert_eq!(without.json(&["status", "--json"]), before);
}

#[test]
fn a_bad_ca_file_is_refused_at_init_and_creates_nothing() {
    let pki = TestPki::new();
    let phone = Phone::new();
    let dir = phone.dir.path();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let key_too = dir.join("with-key.pem");
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(&key_too, format!("{}{key}", pki.ca_pem)).unwrap();
    let missing = dir.join("missing.pem");

    for (file, says) in [
        (&garbage, "no PEM certificate"),
        (&broken, "not usable"),
        (&key_too, "private key"),
        (&missing, "missing.pem"),
    ] {
        let out = phone.desa(&[
            "init",
            "--server",
            "https://127.0.0.1:1",
            "--village",
            VILLAGE,
            "--name",
            "Rina",
            "--ca-file",
            file.to_str().unwrap(),
        ]);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("cannot be used") && text.contains(says),
            "{file:?}: {text}"
        );
        assert!(text.contains("nothing was created"), "{text}");
        assert!(!phone.store().exists());
    }

    // A CA for a plain-http server is a mistake worth pointing out.
    let good = dir.join("good.pem");
    std::fs::write(&good, &pki.ca_pem).unwrap();
    let out = phone.desa(&[
        "init",
        "--server",
        "http://127.0.0.1:1",
        "--village",
        VILLAGE,
        "--name",
        "Rina",
        "--ca-file",
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));
    assert!(!phone.store().exists());
}
