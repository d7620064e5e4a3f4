//! `desa-bench`: the figures in docs/benchmarks.md, measured against the real `desa-server`
//! binary (start it from a release build: `cargo build --release --bins && target/release/desa-bench`).
//!
//! Byte figures count HTTP request and response lines, headers and bodies (no TLS).

mod connections;
mod http;

use std::time::{Duration, Instant};

use desa_tests::Server;
use http::{Conn, Traffic};
use serde_json::json;
use sync_core::protocol::{Bytes, SyncRequest, Upload};
use sync_core::sim::MemoryDevice;
use sync_core::{
    DeviceId, Edit, FieldPath, NewReport, Report, ReportId, ReportKind, Role, VillageCode, Writer,
};

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> std::process::ExitCode {
    // `run` owns the server: returning (even with an error) stops it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("connections") => {
            connections::run(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(400))
        }
        _ => run(),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("desa-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn path(p: &str) -> FieldPath {
    p.parse().unwrap_or_else(|_| FieldPath::root(p))
}

fn set(p: &str, v: serde_json::Value) -> Edit {
    Edit::Set {
        path: path(p),
        value: v,
    }
}

/// A realistic incident: fields, a 500-character narrative, two people.
fn incident_fields(n: usize) -> Vec<Edit> {
    vec![
        set("category", json!("recruitment_offer")),
        set(
            "title",
            json!(format!("Recruiter offering plantation work, case {n}")),
        ),
        set("risk", json!("medium")),
        set("occurred_on", json!("2026-11-20")),
        set(
            "location",
            json!({"lat": -3.25, "lon": 116.21, "place": "old jetty"}),
        ),
        Edit::Append {
            list: path("people"),
            item: json!({"role": "suspect", "name": "Pak Udin", "sex": "male", "age": 45}),
        },
        Edit::Append {
            list: path("people"),
            item: json!({"role": "potential_victim", "sex": "female", "age": 19}),
        },
        Edit::AppendText {
            field: path("narrative"),
            text:
                "A man from outside the village offered young women work on a plantation in Sabah. "
                    .repeat(6),
        },
    ]
}

fn note(i: usize) -> Edit {
    Edit::Append {
        list: path("notes"),
        item: json!({"id": format!("n{i}"), "author": "bench", "at": "2026-11-28T09:00:00Z", "text": format!("follow-up visit {i}: family says he came back")}),
    }
}

/// Sync a device over `conn` until no more pages.
fn sync(d: &mut MemoryDevice, conn: &mut Conn) -> Res<Traffic> {
    let mut total = Traffic::default();
    loop {
        let (status, body, t) = conn.request(
            "POST",
            "/api/v1/sync",
            Some("application/octet-stream"),
            &d.request(),
        )?;
        total += t;
        if status != 200 {
            return Err(
                format!("sync answered {status}: {}", String::from_utf8_lossy(&body)).into(),
            );
        }
        if !d.handle_response(&body).map_err(|e| e.to_string())? {
            return Ok(total);
        }
    }
}

fn kib(b: usize) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `/proc/PID/status` field (a number, e.g. kB for `VmRSS:`).
pub(crate) fn status_field(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// (utime + stime) of a process, seconds; peak and current RSS, MiB.
fn process_usage(pid: u32) -> (f64, f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let kb = |key: &str| status_field(pid, key);
    (cpu / ticks, kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0)
}

fn run() -> Res<()> {
    let villages: Vec<VillageCode> = sync_core::all_villages().map(|v| v.code).collect();
    let dir = tempfile::tempdir()?;
    // The per-device rate limit (20/s) is for the field; the load phases drive the server at full
    // speed through one coordinator token.
    let server = Server::start(
        dir.path(),
        &["--rate-limit", "1000000", "--rate-burst", "1000000"],
    );
    let token = server.coordinator.clone();
    let port: u16 = server
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("server url")?;
    let mut conn = Conn::open(port, &token)?;
    println!("desa-bench against {} (pid {})\n", server.url, server.pid());

    // 1. A village of 1,000 reports; a new device joins it.
    let big = villages[0];
    let mut author = MemoryDevice::new(DeviceId::new_random(), big);
    let mut ids = Vec::new();
    for n in 0..1000 {
        let id = author
            .create(ReportKind::Incident, &incident_fields(n))
            .map_err(|e| e.to_string())?;
        author.edit(id, &[note(n)]).map_err(|e| e.to_string())?;
        ids.push(id);
    }
    sync(&mut author, &mut conn)?;
    let compacted: usize = author
        .report_ids()
        .iter()
        .filter_map(|id| author.report(id))
        .map(|r| r.save().len())
        .sum();
    let mut joiner = MemoryDevice::new(DeviceId::new_random(), big);
    let started = Instant::now();
    let join = sync(&mut joiner, &mut conn)?;
    let join_time = started.elapsed();
    println!("new device joins a village of 1,000 reports (+ its profile):");
    println!("  {} round trips, {} down, {} up; compacted documents {} → {:.3}× (target ≤ 1.1×, ≤ 4 round trips); {:.0} ms",
        join.trips, kib(join.down), kib(join.up), kib(compacted), join.total() as f64 / compacted as f64, join_time.as_secs_f64() * 1000.0);

    rss_note(&server, "after the 1,000-report village");
    // 2. No-op sync.
    let noop = sync(&mut joiner, &mut conn)?;
    println!("no-op sync, village of 1,000 reports: {} round trip, {} bytes (up {}, down {}) (target 1 round trip, ≤ 1 KiB)", noop.trips, noop.total(), noop.up, noop.down);

    // 3. k changed reports.
    for k in [1usize, 10, 100] {
        for (i, id) in ids.iter().take(k).enumerate() {
            author
                .edit(
                    *id,
                    &[
                        note(10_000 + i),
                        set("risk", json!(if i % 2 == 0 { "high" } else { "urgent" })),
                    ],
                )
                .map_err(|e| e.to_string())?;
        }
        let raw = outbox_bytes(&author);
        let push = sync(&mut author, &mut conn)?;
        let pull = sync(&mut joiner, &mut conn)?;
        println!("{k} changed reports: raw changes {} B; push {} B = {:.2}× raw, pull {} B = {:.2}× raw (target ≤ 1.2× raw + 1 KiB: {} B)",
            raw, push.total(), push.total() as f64 / raw as f64, pull.total(), pull.total() as f64 / raw as f64, raw * 12 / 10 + 1024);
    }

    // 4. Durable ingest: 100 devices × 50 edits over 1,000 reports in 10 villages, syncs of 10 edits.
    println!();
    let mut devices: Vec<MemoryDevice> = Vec::new();
    for v in &villages[1..11] {
        let mut seed = MemoryDevice::new(DeviceId::new_random(), *v);
        for n in 0..100 {
            seed.create(ReportKind::Incident, &incident_fields(n))
                .map_err(|e| e.to_string())?;
        }
        sync(&mut seed, &mut conn)?;
        for _ in 0..10 {
            let mut d = MemoryDevice::new(DeviceId::new_random(), *v);
            sync(&mut d, &mut conn)?;
            devices.push(d);
        }
    }
    // Each village's devices sync from their own connection, all villages at once, as phones coming
    // back in range do: concurrent syncs share the server's commits (group commit).
    let (cpu_before, _, _) = process_usage(server.pid());
    println!("  (ingest phase starts)");
    let started = Instant::now();
    let per_village: Vec<Vec<MemoryDevice>> =
        devices.chunks(10).map(<[MemoryDevice]>::to_vec).collect();
    let token_ref: &str = &token;
    let results: Vec<Res<(usize, Traffic, Duration)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = per_village
            .into_iter()
            .enumerate()
            .map(|(v, mut devices)| {
                scope.spawn(move || ingest_village(port, token_ref, &mut devices, v as u64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let wall = started.elapsed();
    let (cpu_after, _, _) = process_usage(server.pid());
    let (mut edits, mut ingest_traffic, mut in_requests) =
        (0usize, Traffic::default(), Duration::ZERO);
    for r in results {
        let (e, t, d) = r?;
        edits += e;
        ingest_traffic += t;
        in_requests += d;
    }
    let server_cpu = cpu_after - cpu_before;
    println!("durable ingest, 10 concurrent clients: {edits} edits in {} syncs in {:.2} s: {:.0} edits/s wall (target ≥ 5,000/s; the clients share the 2 cores)",
        ingest_traffic.trips, wall.as_secs_f64(), edits as f64 / wall.as_secs_f64());
    println!(
        "  server CPU {:.0} µs/edit → {:.0} edits/s per server core; mean sync latency {:.1} ms",
        server_cpu * 1e6 / edits as f64,
        edits as f64 / server_cpu.max(1e-9),
        in_requests.as_secs_f64() * 1000.0 / ingest_traffic.trips as f64
    );

    rss_note(&server, "after ingest");
    // 5. 100,000 stored reports: coordinator queries and memory.
    let target: usize = std::env::var("DESA_BENCH_REPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let stored_now = 1000 + 1000 + 341;
    let writer_device = DeviceId::new_random();
    let writer = Writer {
        actor: writer_device.actor(0),
        role: Role::Volunteer,
        time: 1_764_316_800,
    };
    let started = Instant::now();
    let mut batch: Vec<Upload> = Vec::new();
    for n in 0..(target - stored_now) {
        let village = villages[n % villages.len()];
        let new = NewReport {
            kind: ReportKind::Incident,
            village,
            created_at: "2026-11-28T08:00:00Z".into(),
            created_by: writer_device.to_string(),
        };
        let (_, change) =
            Report::create(ReportId::new_random(), &new, &incident_fields(n), &writer)
                .map_err(|e| e.to_string())?;
        batch.push(Upload {
            report: ReportId::from_random(rand_id(n)),
            changes: vec![Bytes(change.raw_bytes().to_vec())],
        });
        // What one device request carries at most (1 MiB of changes).
        if batch.len() == 500 {
            upload(port, &token, writer_device, std::mem::take(&mut batch))?;
        }
    }
    upload(port, &token, writer_device, batch)?;
    let mut conn = Conn::open(port, &token)?;
    println!(
        "loaded {target} reports in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Coordinators review some: a mix of statuses in the queried villages.
    let mut latencies = Vec::new();
    for v in villages.iter().skip(20).take(20) {
        let (_, body, _) = conn.request(
            "GET",
            &format!("/api/v1/reports?village={v}&limit=40"),
            None,
            &[],
        )?;
        let listed: serde_json::Value = serde_json::from_slice(&body)?;
        for item in listed["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .step_by(3)
        {
            let id = item["id"].as_str().unwrap_or_default();
            conn.request(
                "PATCH",
                &format!("/api/v1/reports/{id}"),
                Some("application/json"),
                br#"{"status":"under_review"}"#,
            )?;
        }
        for status in ["new", "under_review"] {
            for _ in 0..10 {
                let started = Instant::now();
                let (code, _, _) = conn.request(
                    "GET",
                    &format!("/api/v1/reports?village={v}&status={status}"),
                    None,
                    &[],
                )?;
                latencies.push(started.elapsed());
                if code != 200 {
                    return Err(format!("query answered {code}").into());
                }
            }
        }
    }
    latencies.sort();
    println!("coordinator query (one village, one status, default page) over {target} reports: p50 {:.1} ms, p95 {:.1} ms (target p50 ≤ 20 ms)",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0, percentile(&latencies, 0.95).as_secs_f64() * 1000.0);
    let mut newcomer = MemoryDevice::new(DeviceId::new_random(), villages[5]);
    sync(&mut newcomer, &mut conn)?;
    let (_, peak, rss) = process_usage(server.pid());
    println!("server memory serving {target} reports: RSS {rss:.0} MiB, peak {peak:.0} MiB (target ≤ 200 MiB)");
    let db_size_dir = dir.path().to_owned();
    let db_size: u64 = std::fs::read_dir(&db_size_dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("database on disk: {:.0} MiB", db_size as f64 / 1048576.0);
    drop(server);
    websocket_side_by_side()
}

/// The WebSocket workload with real JavaScript automerge-repo clients, against desa-sync and the
/// reference automerge-repo-sync-server in the same run (tests/js/bench.mjs; needs `npm ci` there).
fn websocket_side_by_side() -> Res<()> {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    if !js.join("node_modules/@automerge/automerge-repo").exists() {
        println!("\nWebSocket side-by-side skipped: run `npm ci` in tests/js first");
        return Ok(());
    }
    let server = desa_tests::binary("desa-server");
    println!("\nWebSocket workload, real JS clients, desa-sync vs the reference sync server:");
    let status = std::process::Command::new("node")
        .arg("bench.mjs")
        .arg("--desa-server")
        .arg(&server)
        .current_dir(&js)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("tests/js/bench.mjs failed: {status}").into())
    }
}

fn rss_note(server: &Server, when: &str) {
    let (_, peak, rss) = process_usage(server.pid());
    println!("  [server RSS {when}: {rss:.0} MiB, peak {peak:.0} MiB]");
}

/// One village's devices: 5 rounds of 10 edits each then a sync, over one connection.
fn ingest_village(
    port: u16,
    token: &str,
    devices: &mut [MemoryDevice],
    seed: u64,
) -> Res<(usize, Traffic, Duration)> {
    let mut conn = Conn::open(port, token)?;
    let mut rng = 0x2545F4914F6CDD1Du64 ^ (seed.wrapping_mul(0x9E3779B97F4A7C15));
    let (mut edits, mut traffic, mut in_requests) = (0usize, Traffic::default(), Duration::ZERO);
    for round in 0..5 {
        for d in devices.iter_mut() {
            let ids: Vec<ReportId> = d
                .report_ids()
                .into_iter()
                .filter(|id| {
                    d.report(id)
                        .is_some_and(|r| r.kind() == ReportKind::Incident)
                })
                .collect();
            for e in 0..10 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let id = ids[(rng as usize) % ids.len()];
                let edit = match e % 3 {
                    0 => note(round * 10 + e),
                    1 => set(
                        "risk",
                        json!(["low", "medium", "high", "urgent"][(rng >> 20) as usize % 4]),
                    ),
                    _ => set("location.place", json!(format!("landing {}", rng % 97))),
                };
                if d.edit(id, &[edit]).map_err(|e| e.to_string())? {
                    edits += 1;
                }
            }
            let started = Instant::now();
            traffic += sync(d, &mut conn)?;
            in_requests += started.elapsed();
        }
    }
    Ok((edits, traffic, in_requests))
}

fn rand_id(n: usize) -> [u8; 16] {
    let mut id = *ReportId::new_random().as_bytes();
    id[..8].copy_from_slice(&(n as u64).to_be_bytes());
    id
}

fn outbox_bytes(d: &MemoryDevice) -> usize {
    let request = SyncRequest::decode(&d.request())
        .map(|r| r.uploads)
        .unwrap_or_default();
    request
        .iter()
        .flat_map(|u| u.changes.iter())
        .map(|c| c.0.len())
        .sum()
}

fn upload(port: u16, token: &str, device: DeviceId, uploads: Vec<Upload>) -> Res<()> {
    // A fresh connection: building a batch takes longer than the server's keep-alive.
    let conn = &mut Conn::open(port, token)?;
    let request = SyncRequest {
        device,
        positions: vec![],
        uploads,
    };
    let (status, body, _) = conn.request(
        "POST",
        "/api/v1/sync",
        Some("application/octet-stream"),
        &request.encode(),
    )?;
    if status != 200 {
        return Err(format!(
            "bulk upload answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let answer = sync_core::protocol::SyncResponse::decode(&body)?;
    let refused = answer
        .verdicts
        .iter()
        .filter(|v| !matches!(v, sync_core::protocol::WireVerdict::Accepted))
        .count();
    if refused > 0 {
        return Err(format!("{refused} bulk changes not accepted").into());
    }
    Ok(())
}
