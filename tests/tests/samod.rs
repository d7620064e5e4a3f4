//! samod 0.16 — the Rust automerge-repo — as an unchanged client of `desa-server`'s `/ws`.
//!
//! Each test starts the real server and drives one or more samod `Repo`s (in-memory storage, the
//! default share policy) over real WebSockets. samod's own `dial_websocket` sits behind its
//! `tungstenite` feature, which forces native-tls and so a system OpenSSL; [`WsDialer`] does the
//! same thing with plain tokio-tungstenite (binary frames in and out, nothing else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use desa_tests::Server;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt, TryStreamExt};
use samod::{
    BackoffConfig, DialError, Dialer, DialerHandle, DocHandle, DocumentId, Repo, Transport, Url,
};
use serde_json::Value;
use sync_core::automerge::transaction::Transactable;
use sync_core::automerge::{Automerge, AutomergeError, ObjType, ReadDoc, ROOT};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::{self, Message};

const VILLAGE: &str = "6302010001";
/// How long any condition may take to become true.
const DEADLINE: Duration = Duration::from_secs(30);

/// Dials `ws://…/ws` with tokio-tungstenite; samod reconnects through it with backoff.
struct WsDialer {
    url: Url,
}

impl Dialer for WsDialer {
    type Error = Infallible;

    fn url(&self) -> Url {
        self.url.clone()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let url = self.url.clone();
        Box::pin(async move {
            let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(DialError::transient)?;
            let (sink, stream) = socket.split();
            let stream = stream
                .try_filter_map(|message| async move {
                    match message {
                        Message::Binary(bytes) => Ok(Some(bytes.to_vec())),
                        Message::Text(_) => Err(tungstenite::Error::Io(std::io::Error::other(
                            "text frame on a binary protocol",
                        ))),
                        _ => Ok(None),
                    }
                })
                .boxed();
            let sink = sink.with(|bytes: Vec<u8>| {
                futures::future::ready(Ok::<_, tungstenite::Error>(Message::binary(bytes)))
            });
            Ok(Transport::new(stream, sink))
        })
    }
}

/// A tokio runtime for the samod repos; the test thread itself stays synchronous (HTTP calls to
/// the coordinator API block), and enters the runtime with `block_on` for samod's futures.
fn runtime() -> Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "samod=warn,samod_core=warn".into()),
        )
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Run `future` on `rt` for at most `limit`: `None` if it did not finish.
fn within<F: std::future::Future>(rt: &Runtime, limit: Duration, future: F) -> Option<F::Output> {
    rt.block_on(async { tokio::time::timeout(limit, future).await.ok() })
}

/// Poll `condition` until it holds; panic with `what` after [`DEADLINE`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One samod repo: in-memory storage, the default share policy, connected to the server.
struct Client {
    repo: Repo,
    url: Url,
    dialer: Option<DialerHandle>,
    /// The device its token names: what a new report's `created_by` must be.
    device: String,
}

impl Client {
    fn connect(rt: &Runtime, server: &Server) -> Client {
        let repo = rt.block_on(Repo::builder(rt.handle().clone()).load());
        let token = server.token("samod", "volunteer", &[VILLAGE]);
        let device = token
            .parse::<sync_core::DeviceToken>()
            .unwrap()
            .device()
            .to_string();
        let url = Url::parse(&server.ws_url(&token)).unwrap();
        let mut client = Client {
            repo,
            url,
            dialer: None,
            device,
        };
        client.reconnect(rt);
        client
    }

    /// Dial the server and wait for the handshake (`join` → `peer`).
    fn reconnect(&mut self, rt: &Runtime) {
        assert!(self.dialer.is_none(), "already connected");
        let dialer = self
            .repo
            .dial(
                BackoffConfig::default(),
                Arc::new(WsDialer {
                    url: self.url.clone(),
                }),
            )
            .expect("repo running");
        let peer = within(rt, DEADLINE, dialer.established())
            .expect("handshake in time")
            .expect("connected");
        assert!(
            peer.peer_id.to_string().starts_with("desa-sync-"),
            "{peer:?}"
        );
        self.dialer = Some(dialer);
    }

    /// Close the connection (and stop reconnecting) until [`Client::reconnect`].
    fn disconnect(&mut self) {
        self.dialer.take().expect("connected").close();
        wait_for("the connection to close", || {
            self.repo.connected_peers().0.is_empty()
        });
    }

    fn create(&self, rt: &Runtime, doc: Automerge) -> DocHandle {
        within(rt, DEADLINE, self.repo.create(doc))
            .expect("created in time")
            .expect("repo running")
    }

    fn find(&self, rt: &Runtime, id: &str) -> DocHandle {
        let id: DocumentId = id.parse().unwrap();
        within(rt, DEADLINE, self.repo.find(id.clone()))
            .expect("found in time")
            .expect("repo running")
            .unwrap_or_else(|| panic!("{id} unavailable"))
    }

    fn stop(self, rt: &Runtime) {
        if let Some(dialer) = self.dialer {
            dialer.close();
        }
        rt.block_on(self.repo.stop());
    }
}

/// A new incident document by `device`: every required field and container in one first change.
fn incident(device: &str, title: &str) -> Automerge {
    let mut doc = Automerge::new();
    doc.transact::<_, _, AutomergeError>(|tx| {
        tx.put(ROOT, "kind", "incident")?;
        tx.put(ROOT, "schema_version", 1_i64)?;
        tx.put(ROOT, "village", VILLAGE)?;
        tx.put(ROOT, "created_at", "2026-11-28T08:00:00Z")?;
        tx.put(ROOT, "created_by", device)?;
        tx.put(ROOT, "category", "recruitment_offer")?;
        tx.put(ROOT, "title", title)?;
        tx.put_object(ROOT, "narrative", ObjType::Text)?;
        tx.put_object(ROOT, "location", ObjType::Map)?;
        tx.put_object(ROOT, "people", ObjType::List)?;
        tx.put(ROOT, "status", "new")?;
        tx.put_object(ROOT, "notes", ObjType::List)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(doc.get_changes(&[]).len(), 1, "one first change");
    doc
}

/// The document as JSON (text objects and scalar strings both read as strings).
fn json(handle: &DocHandle) -> Value {
    handle.with_document(|doc| sync_core::view::materialize(doc))
}

fn edit(handle: &DocHandle, f: impl FnOnce(&mut Automerge) -> Result<(), AutomergeError>) {
    handle.with_document(|doc| f(doc)).unwrap();
}

fn set_risk(doc: &mut Automerge, risk: &str) -> Result<(), AutomergeError> {
    doc.transact(|tx| tx.put(ROOT, "risk", risk).map(|_| ()))
        .map(|_| ())
        .map_err(|f| f.error)
}

fn add_note(doc: &mut Automerge, text: &str) -> Result<(), AutomergeError> {
    doc.transact(|tx| {
        let (_, notes) = tx.get(ROOT, "notes")?.expect("notes list");
        let note = tx.insert_object(&notes, tx.length(&notes), ObjType::Map)?;
        tx.put(&note, "id", "n-samod-1")?;
        tx.put(&note, "author", "samod-test-device-b")?;
        tx.put(&note, "at", "2026-11-28T09:00:00Z")?;
        tx.put(&note, "text", text)?;
        Ok(())
    })
    .map(|_| ())
    .map_err(|f| f.error)
}

fn append_narrative(doc: &mut Automerge, text: &str) -> Result<(), AutomergeError> {
    doc.transact(|tx| {
        let (_, narrative) = tx.get(ROOT, "narrative")?.expect("narrative text");
        tx.splice_text(&narrative, tx.length(&narrative), 0, text)
    })
    .map(|_| ())
    .map_err(|f| f.error)
}

fn set_status(doc: &mut Automerge, status: &str) -> Result<(), AutomergeError> {
    doc.transact(|tx| tx.put(ROOT, "status", status).map(|_| ()))
        .map(|_| ())
        .map_err(|f| f.error)
}

/// The coordinator API's merged document of `id`, once the server has it.
fn coordinator_doc(server: &Server, id: &str) -> Option<Value> {
    let (status, body) = server.get(&format!("/api/v1/reports/{id}"));
    (status == 200).then(|| body["document"].clone())
}

fn note_texts(doc: &Value) -> Vec<String> {
    doc["notes"]
        .as_array()
        .map(|notes| {
            notes
                .iter()
                .filter_map(|n| n["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

const NOTE: &str = "Two girls left on Tuesday";
const NARRATIVE: &str = "He offered jobs in Malaysia.";

/// Scenario 2's state: A created a report, B found it, both edited it offline (A: risk, B: a
/// note), reconnected, and everyone converged. Returns the report id.
fn concurrent_edits(rt: &Runtime, server: &Server, a: &mut Client, b: &mut Client) -> String {
    let on_a = a.create(rt, incident(&a.device, "Agent at the harbour"));
    let id = on_a.document_id().to_string();
    wait_for("the server to store the report", || {
        coordinator_doc(server, &id).is_some()
    });
    let on_b = b.find(rt, &id);
    assert_eq!(json(&on_b)["title"], "Agent at the harbour");

    a.disconnect();
    b.disconnect();
    edit(&on_a, |d| set_risk(d, "high"));
    edit(&on_b, |d| add_note(d, NOTE));
    let offline = server.report(&id);
    assert!(offline["document"].get("risk").is_none(), "{offline}");
    assert!(note_texts(&offline["document"]).is_empty(), "{offline}");

    a.reconnect(rt);
    b.reconnect(rt);
    let converged = |doc: &Value| doc["risk"] == "high" && note_texts(doc) == [NOTE];
    wait_for("the coordinator API to show both edits", || {
        coordinator_doc(server, &id).is_some_and(|d| converged(&d))
    });
    wait_for("A to receive B's note", || converged(&json(&on_a)));
    wait_for("B to receive A's risk", || converged(&json(&on_b)));
    let merged = coordinator_doc(server, &id).unwrap();
    assert_eq!(json(&on_a), merged);
    assert_eq!(json(&on_b), merged);
    assert_eq!(merged["status"], "new");
    id
}

/// Scenario 3 on top of scenario 2: B sets `status`, which a volunteer may not.
fn refused_status(rt: &Runtime, server: &Server, a: &Client, b: &Client, id: &str) {
    let on_b = b.find(rt, id);
    edit(&on_b, |d| set_status(d, "closed"));
    // The server handles one connection's frames in order, and samod sends them in the order
    // they were made: once a later creation of B's is stored, B's status change has been judged.
    let marker = b.create(rt, incident(&b.device, "Marker after the status change"));
    let marker = marker.document_id().to_string();
    wait_for("B's later report to be stored", || {
        coordinator_doc(server, &marker).is_some()
    });
    let doc = server.report(id)["document"].clone();
    assert_eq!(
        doc["status"], "new",
        "a volunteer's status change was stored"
    );
    // The other edits stand, and the report still syncs both ways.
    let on_a = a.find(rt, id);
    edit(&on_a, |d| append_narrative(d, NARRATIVE));
    wait_for("A's later edit to reach the coordinator API", || {
        coordinator_doc(server, id).is_some_and(|d| d["narrative"] == NARRATIVE)
    });
    wait_for("B to receive A's later edit", || {
        json(&on_b)["narrative"] == NARRATIVE
    });
    let doc = server.report(id)["document"].clone();
    assert_eq!(
        doc["status"], "new",
        "a volunteer's status change was stored"
    );
    assert_eq!(doc["risk"], "high");
    assert_eq!(note_texts(&doc), [NOTE]);
    assert_eq!(doc["title"], "Agent at the harbour");
    assert_eq!(json(&on_a), doc, "A never sees B's refused change");
    // An unchanged automerge-repo client is not told to undo its change: B keeps it locally.
    assert_eq!(json(&on_b)["status"], "closed");
}

/// Scenario 1: A creates two incidents; the coordinator API shows them; a fresh B finds each by
/// id.
#[test]
fn create_and_find() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = runtime();
    let a = Client::connect(&rt, &server);
    let titles = [
        "Man offering plantation work",
        "Boat leaving from the old jetty",
    ];
    let ids: Vec<String> = titles
        .iter()
        .map(|t| {
            a.create(&rt, incident(&a.device, t))
                .document_id()
                .to_string()
        })
        .collect();
    for (id, title) in ids.iter().zip(titles) {
        wait_for("the coordinator API to show the report", || {
            coordinator_doc(&server, id).is_some()
        });
        let report = server.report(id);
        let doc = &report["document"];
        assert_eq!(doc["title"], title, "{report}");
        assert_eq!(doc["kind"], "incident");
        assert_eq!(doc["village"], VILLAGE);
        assert_eq!(doc["status"], "new");
        assert_eq!(doc["narrative"], "");
    }

    let b = Client::connect(&rt, &server);
    for (id, title) in ids.iter().zip(titles) {
        let found = b.find(&rt, id);
        assert_eq!(json(&found)["title"], title);
        assert_eq!(json(&found), server.report(id)["document"]);
    }
    // An id the server does not have: samod hears doc-unavailable and gives up at once.
    let id = DocumentId::try_from(vec![7_u8; 16]).unwrap();
    let found = within(&rt, Duration::from_secs(10), b.repo.find(id))
        .expect("doc-unavailable answered quickly")
        .unwrap();
    assert!(found.is_none());
    a.stop(&rt);
    b.stop(&rt);
}

/// Scenario 2: A and B edit the same report while disconnected; after reconnecting both edits
/// survive on both clients and in the coordinator API.
#[test]
fn concurrent_offline_edits_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = runtime();
    let mut a = Client::connect(&rt, &server);
    let mut b = Client::connect(&rt, &server);
    concurrent_edits(&rt, &server, &mut a, &mut b);
    a.stop(&rt);
    b.stop(&rt);
}

/// Scenario 3: B sets `status` (coordinators only): the server refuses it; the other edits stand.
#[test]
fn status_change_by_volunteer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = runtime();
    let mut a = Client::connect(&rt, &server);
    let mut b = Client::connect(&rt, &server);
    let id = concurrent_edits(&rt, &server, &mut a, &mut b);
    refused_status(&rt, &server, &a, &b, &id);
    a.stop(&rt);
    b.stop(&rt);
}

/// Scenario 4: after a server restart (SIGKILL, same port and data) a fresh samod client finds the
/// report with every accepted edit.
#[test]
fn restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let rt = runtime();
    let mut a = Client::connect(&rt, &server);
    let mut b = Client::connect(&rt, &server);
    let id = concurrent_edits(&rt, &server, &mut a, &mut b);
    refused_status(&rt, &server, &a, &b, &id);
    let before = server.report(&id)["document"].clone();
    a.stop(&rt);
    b.stop(&rt);

    server.restart();
    assert_eq!(server.report(&id)["document"], before);
    let c = Client::connect(&rt, &server);
    let found = json(&c.find(&rt, &id));
    assert_eq!(found, before);
    assert_eq!(found["risk"], "high");
    assert_eq!(found["narrative"], NARRATIVE);
    assert_eq!(found["status"], "new");
    assert_eq!(note_texts(&found), [NOTE]);
    c.stop(&rt);
}
