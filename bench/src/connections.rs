//! `desa-bench connections [N]`: what N open automerge-repo WebSockets cost the server — resident
//! memory over the idle server's, and threads — the way a flood of quick connections (or many
//! phones at once) would hold them: each joins, asks for a document it may read and one that does
//! not exist, and stays open.

use std::time::{Duration, Instant};

use desa_tests::ws::{self, join, next, send};
use desa_tests::Server;
use sync_core::protocol::repo::RepoMessage;
use sync_core::{ReportId, VillageCode};

use crate::Res;

/// (RSS, peak RSS) in MiB and the number of threads of a process.
fn memory_and_threads(pid: u32) -> (f64, f64, u64) {
    let field = |key: &str| crate::status_field(pid, key);
    (
        field("VmRSS:") / 1024.0,
        field("VmHWM:") / 1024.0,
        field("Threads:") as u64,
    )
}

/// Open `n` connections at once on one device's token and hold them.
pub fn run(n: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let cap = (n + 8).to_string();
    let server = Server::start(
        dir.path(),
        &[
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
            "--ws-per-device",
            &cap,
            "--ws-total",
            &cap,
        ],
    );
    let token = server.token("phone", "volunteer", &["6302010001"]);
    let url = server.ws_url(&token);
    let profile =
        ReportId::village_profile(VillageCode::parse("6302010001").map_err(|e| e.to_string())?)
            .to_string();
    // Let the server settle (village profiles written, pools warm) before the baseline.
    let _ = server.get("/healthz");
    std::thread::sleep(Duration::from_millis(500));
    let (idle, _, idle_threads) = memory_and_threads(server.pid());
    println!(
        "desa-bench connections: {n} WebSockets on one device's token ({})",
        server.url
    );
    println!("  idle server: {idle:.0} MiB RSS, {idle_threads} threads");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let sockets = runtime.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (url, profile) = (url.clone(), profile.clone());
                tokio::spawn(async move {
                    let mut socket = ws::connect(&url)
                        .await
                        .map_err(|s| format!("upgrade answered {s}"))?;
                    if !matches!(
                        join(&mut socket, &format!("flood-{i}")).await,
                        RepoMessage::Peer { .. }
                    ) {
                        return Err("no peer message".to_owned());
                    }
                    send(&mut socket, ws::request_for(&profile)).await;
                    let _ = next(&mut socket, Duration::from_secs(30)).await;
                    send(
                        &mut socket,
                        ws::request_for(&ReportId::new_random().to_string()),
                    )
                    .await;
                    let _ = next(&mut socket, Duration::from_secs(30)).await;
                    Ok(socket)
                })
            })
            .collect();
        let mut sockets = Vec::new();
        for t in tasks {
            sockets.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(sockets)
    })?;
    let opened = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (open, peak, threads) = memory_and_threads(server.pid());
    println!(
        "  {n} open: {open:.0} MiB RSS (+{:.0} MiB over idle; target ≤ +100 MiB), peak {peak:.0} MiB, {threads} threads (target: not one per connection); opened in {:.1} s",
        open - idle,
        opened.as_secs_f64()
    );
    drop(sockets);
    drop(runtime);
    std::thread::sleep(Duration::from_secs(1));
    let (after, _, after_threads) = memory_and_threads(server.pid());
    println!("  closed again: {after:.0} MiB RSS, {after_threads} threads");
    Ok(())
}
