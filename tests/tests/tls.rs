//! TLS and the plaintext guard, on the real binary: HTTPS and WSS with a certificate made for the
//! test, plain HTTP refused on the TLS port, and plain HTTP refused on a non-loopback address unless
//! `--insecure-allow-plaintext` says the network is trusted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use desa_tests::{binary, Server, TEST_KEY};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files into `dir`.
/// Returns (cert path, key path, cert DER).
fn certificate(dir: &Path) -> (String, String, Vec<u8>) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
        made.cert.der().to_vec(),
    )
}

/// A ureq agent trusting exactly `der`.
fn trusting(der: &[u8]) -> ureq::Agent {
    let roots =
        ureq::tls::RootCerts::Specific(Arc::new(vec![
            ureq::tls::Certificate::from_der(der).to_owned()
        ]));
    ureq::Agent::config_builder()
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

#[test]
fn https_serves_the_api_with_the_given_certificate_and_plain_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--tls-cert", &cert, "--tls-key", &key]);
    let port = server.port();

    let mut answer = trusting(&der)
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .call()
        .expect("HTTPS request");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["status"], "ok");

    // The same port does not speak plain HTTP.
    let plain = ureq::get(format!("http://127.0.0.1:{port}/healthz")).call();
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS port: {plain:?}"
    );
    // A client that does not trust the certificate gets no answer either.
    let untrusted = ureq::get(format!("https://127.0.0.1:{port}/healthz")).call();
    assert!(untrusted.is_err(), "{untrusted:?}");
}

#[test]
fn a_field_device_syncs_over_https_trusting_the_office_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let https = format!("https://127.0.0.1:{}", server.port());
    let token = server.token("ani", "volunteer", &["6302010001"]);
    let desa =
        desa_tests::Desa::init_with(&https, "6302010001", "Ani", &token, &["--ca-file", &cert]);
    let id = desa
        .ok(&[
            "new",
            "incident",
            "--set",
            "category=other",
            "--set",
            "title=Sent over TLS",
        ])
        .last_line();
    desa.sync();
    let mut answer = trusting(&der)
        .get(format!("{https}/api/v1/reports/{id}"))
        .header("Authorization", format!("Bearer {}", server.coordinator))
        .call()
        .expect("HTTPS request");
    let body: serde_json::Value =
        serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["document"]["title"], "Sent over TLS");
}

#[test]
fn wss_upgrades_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    write!(
        stream,
        "GET /ws?token={} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.coordinator
    )
    .unwrap();
    stream.flush().unwrap();
    let mut status = String::new();
    BufReader::new(&mut stream).read_line(&mut status).unwrap();
    assert!(
        status.starts_with("HTTP/1.1 101"),
        "no WebSocket upgrade over TLS: {status:?}"
    );
}

/// `desa-server serve` with `args`, stdout piped (the "listening" line), stderr piped.
fn serve(data: &Path, args: &[&str]) -> Child {
    Command::new(binary("desa-server"))
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(args)
        .env("DESA_KEY", TEST_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start desa-server")
}

#[test]
fn plain_http_on_a_non_loopback_address_needs_the_insecure_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = desa_tests::refused(serve(&data, &["--bind", "0.0.0.0:0"]));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0")
            && stderr.contains("--insecure-allow-plaintext")
            && stderr.contains("--tls-cert"),
        "{stderr}"
    );

    let mut child = serve(
        &data,
        &["--bind", "0.0.0.0:0", "--insecure-allow-plaintext"],
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on http://0.0.0.0:")
        .unwrap_or_else(|| panic!("did not start: {line:?}"))
        .parse()
        .unwrap();
    // Only ever talk to it over loopback.
    let answer = ureq::get(format!("http://127.0.0.1:{port}/healthz")).call();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer.unwrap().status(), 200);
}

#[test]
fn with_tls_any_address_is_allowed_and_the_startup_line_says_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let mut child = serve(
        &dir.path().join("data"),
        &[
            "--bind",
            "0.0.0.0:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on https://0.0.0.0:")
        .and_then(|p| p.parse::<u16>().ok());
    let answer = port.map(|port| {
        trusting(&der)
            .get(format!("https://127.0.0.1:{port}/healthz"))
            .call()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(port.is_some(), "did not start over TLS: {line:?}");
    assert_eq!(answer.unwrap().unwrap().status(), 200);
}

#[test]
fn a_bad_certificate_stops_the_server_with_a_message_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key, _) = certificate(dir.path());
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let (code, stderr) = desa_tests::refused(serve(
        &dir.path().join("data"),
        &["--tls-cert", bogus.to_str().unwrap(), "--tls-key", &key],
    ));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("TLS certificate") && stderr.contains("bogus.pem"),
        "{stderr}"
    );
}
