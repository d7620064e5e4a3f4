//! A minimal stand-in for `desa-server`: answers behind a few lines of HTTP/1.1, optionally over
//! TLS, on a port the OS picked. [`StandIn`] puts the in-process `MemoryServer` behind it and, like
//! the real server, answers 401 to a request without a registered bearer token.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sync_core::protocol::SyncRequest;
use sync_core::sim::MemoryServer;
use sync_core::{DeviceId, DeviceToken};

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// What the stand-in answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The server's error form: `{"error": CODE, "detail": TEXT}`.
    pub fn error(status: u16, code: &str, detail: &str) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::json!({"error": code, "detail": detail})
                .to_string()
                .into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// What the stand-in answers to a sync request.
pub type Answer = dyn Fn(&Request) -> Reply + Send + Sync;

/// Serve every connection on a fresh port with `answer`, over TLS when `tls` is given; returns the
/// base URL. The thread lives as long as the test process (it blocks in `accept`). A connection
/// that fails (a client refusing the certificate) is dropped; the next is served.
pub fn serve(answer: Arc<Answer>, tls: Option<Arc<rustls::ServerConfig>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            match &tls {
                None => {
                    let _ = handle(stream, &*answer);
                }
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls_stream = rustls::StreamOwned::new(conn, stream);
                    if handle(&mut tls_stream, &*answer).is_some() {
                        tls_stream.conn.send_close_notify();
                        let _ = tls_stream.flush();
                    }
                }
            }
        }
    });
    url
}

/// Read one request, write one answer. `None` when the connection failed.
fn handle<S: Read + Write>(stream: S, answer: &Answer) -> Option<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let (mut length, mut content_type, mut authorization) = (0usize, String::new(), None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_owned(),
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let reply = if request_line.starts_with("POST /api/v1/sync ")
        && content_type == "application/octet-stream"
    {
        answer(&Request {
            authorization,
            body,
        })
    } else {
        Reply {
            status: 404,
            content_type: "text/plain",
            headers: Vec::new(),
            body: format!("no route: {request_line}").into_bytes(),
        }
    };
    let mut stream = reader.into_inner();
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(&reply.body).ok()?;
    stream.flush().ok()
}

/// A stand-in for the real server around one `MemoryServer`: 401 unless the request carries the
/// bearer token of a registered device.
pub struct StandIn {
    pub url: String,
    tokens: Arc<Mutex<HashSet<String>>>,
    /// Every `Authorization` header received, to check what was sent.
    pub seen: Arc<Mutex<Vec<Option<String>>>>,
    /// The `device` field of every accepted sync request, in order.
    pub devices: Arc<Mutex<Vec<DeviceId>>>,
}

impl StandIn {
    pub fn start(tls: Option<Arc<rustls::ServerConfig>>) -> StandIn {
        let tokens = Arc::new(Mutex::new(HashSet::<String>::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let devices = Arc::new(Mutex::new(Vec::new()));
        let server = Mutex::new(MemoryServer::new().one_person("volunteer"));
        let (known, log, named) = (tokens.clone(), seen.clone(), devices.clone());
        let url = serve(
            Arc::new(move |request: &Request| {
                log.lock().unwrap().push(request.authorization.clone());
                let token = request
                    .authorization
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "));
                if !token.is_some_and(|t| known.lock().unwrap().contains(t)) {
                    return Reply::error(401, "unauthorized", "missing, unknown or revoked token");
                }
                if let Ok(sync) = SyncRequest::decode(&request.body) {
                    named.lock().unwrap().push(sync.device);
                }
                match server.lock().unwrap().handle(&request.body) {
                    Ok(reply) => Reply {
                        status: 200,
                        content_type: "application/octet-stream",
                        headers: Vec::new(),
                        body: reply,
                    },
                    Err(e) => Reply::error(400, "bad request", &e.to_string()),
                }
            }),
            tls,
        );
        StandIn {
            url,
            tokens,
            seen,
            devices,
        }
    }

    /// What `desa-server device add` does: the server now knows this token.
    pub fn register(&self, token: &DeviceToken) {
        self.tokens.lock().unwrap().insert(token.reveal());
    }

    /// What `desa-server device revoke` does: from now on the token is answered 401.
    pub fn revoke(&self, token: &DeviceToken) {
        assert!(
            self.tokens.lock().unwrap().remove(&token.reveal()),
            "revoking a token that was never registered"
        );
    }
}

/// A CA made for this test run, and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestPki {
    /// The CA certificate, PEM (what the office hands out for `--ca-file`).
    pub ca_pem: String,
    /// A rustls server configuration with the signed certificate.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Batulicin office test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}
