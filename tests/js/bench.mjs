#!/usr/bin/env node
// Side-by-side benchmark: the same automerge-repo 2.5 client workload against desa-server's /ws
// and against the reference @automerge/automerge-repo-sync-server, one after the other.
//
//   node bench.mjs --desa-server /path/to/desa-server [--clients K] [--reports D] [--edits E]
//                  [--only reference|desa] [--json FILE]
//
// Workload per server (fresh process, fresh temp data dir, free port):
//  (ii)  K clients (own Repo + WebSocket each, all concurrently) each create D valid incident
//        reports (repo.create with every fixed field, so the first change is valid), then make E
//        edit rounds: in round j every one of its D reports gets one change (j % 4 == 0: set `risk`,
//        otherwise push a note {id, author, at, text}). After each round the client waits until the
//        server has acknowledged the new heads of all D reports (the repo's record of the server's
//        heads, handle.getSyncInfo(serverStorageId), updated from the server's sync messages), so
//        every edit reaches the server as its own sync exchange instead of being coalesced.
//  (iii) a fresh client fetches all K×D reports and checks each equals the creator's final state
//        (every note, the last risk, same heads).
//  Measured on the SERVER process: CPU seconds (utime+stime from /proc/PID/stat, / CLK_TCK) during
//  (ii) divided by K×D×E edits, CPU during (iii), peak RSS (VmHWM from /proc/PID/status, at the
//  end), and wall times.

import { parseArgs } from "node:util"
import { spawn, execFileSync } from "node:child_process"
import { readFileSync, mkdtempSync, rmSync, existsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { createServer } from "node:net"
import { createInterface } from "node:readline"
import { writeFileSync } from "node:fs"
import assert from "node:assert/strict"
import {
  connectedClient,
  closeClient,
  waitFor,
  waitServerHas,
  newIncident,
  newNote,
  plain,
  randomUUID,
  sameHeads,
  VILLAGES,
  reportFatal,
  clearFatal,
} from "./lib.mjs"

const HERE = dirname(fileURLToPath(import.meta.url))
const { values: args } = parseArgs({
  options: {
    "desa-server": { type: "string" },
    clients: { type: "string", default: "10" },
    reports: { type: "string", default: "20" },
    edits: { type: "string", default: "20" },
    only: { type: "string" },
    json: { type: "string" },
    "keep-data": { type: "boolean", default: false },
  },
})
const K = Number(args.clients)
const D = Number(args.reports)
const E = Number(args.edits)
const only = args.only
if (only && !["reference", "desa"].includes(only)) {
  console.error("--only must be reference or desa")
  process.exit(2)
}
if (only !== "reference" && !args["desa-server"]) {
  console.error(
    "usage: node bench.mjs --desa-server /path/to/desa-server [--clients K --reports D --edits E] [--only reference|desa]"
  )
  process.exit(2)
}
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100
  } catch {
    return 100
  }
})()

// ---- server processes ------------------------------------------------------------------------------

const running = new Set()
function killAll(signal = "SIGKILL") {
  for (const s of running) {
    try {
      process.kill(s.pid, signal)
    } catch {}
  }
}
process.on("exit", () => killAll("SIGKILL"))
// WebSocketClientAdapter rethrows socket errors (e.g. HTTP 404 on the upgrade) from an event handler:
// fail the running server's half instead of crashing the process.
process.on("uncaughtException", e => {
  console.log(`\n  ! uncaught: ${e?.message ?? e}`)
  reportFatal(e)
})
process.on("unhandledRejection", e => {
  console.log(`\n  ! unhandled rejection: ${e?.message ?? e}`)
  reportFatal(e)
})
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    killAll("SIGKILL")
    process.exit(130)
  })
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.unref()
    s.on("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** Spawn and wait for the "listening" line on stdout; returns {pid, wsUrl, stop()}. */
async function startServer(name, cmd, argv, env, cwd, parseReady) {
  const child = spawn(cmd, argv, { env: { ...process.env, ...env }, cwd, stdio: ["ignore", "pipe", "pipe"] })
  const s = { name, pid: child.pid, child, log: [] }
  running.add(s)
  const exited = new Promise(res => child.on("exit", (code, sig) => res({ code, sig })))
  s.exited = exited
  child.stderr.on("data", d => {
    s.log.push(d.toString())
    if (s.log.length > 200) s.log.shift()
  })
  const rl = createInterface({ input: child.stdout })
  const ready = new Promise((resolve, reject) => {
    rl.on("line", line => {
      s.log.push(line + "\n")
      const url = parseReady(line)
      if (url) resolve(url)
    })
    exited.then(({ code, sig }) => reject(new Error(`${name} exited before ready (code ${code}, signal ${sig}): ${s.log.join("").slice(-2000)}`)))
  })
  let timer
  s.wsUrl = await Promise.race([
    ready,
    new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`${name} not ready in 30 s`)), 30_000))),
  ]).finally(() => clearTimeout(timer))
  s.stop = async () => {
    if (!running.has(s)) return
    try {
      process.kill(s.pid, "SIGTERM")
    } catch {}
    const t = setTimeout(() => {
      try {
        process.kill(s.pid, "SIGKILL")
      } catch {}
    }, 5000)
    await exited
    clearTimeout(t)
    running.delete(s)
  }
  return s
}

async function startReference(dataDir) {
  const port = await freePort()
  const entry = join(HERE, "node_modules/@automerge/automerge-repo-sync-server/src/index.js")
  // server.js reads PORT (default 3030) and DATA_DIR (default .amrg); it serves express.static("public")
  // relative to cwd, so run it in the temp dir.
  return startServer("reference", process.execPath, [entry], { PORT: String(port), DATA_DIR: join(dataDir, "amrg") }, dataDir, line =>
    /Listening on port (\d+)/.test(line) ? `ws://127.0.0.1:${port}/ws` : null
  )
}

async function startDesa(dataDir) {
  const bin = resolve(args["desa-server"])
  if (!existsSync(bin)) throw new Error(`no desa-server binary at ${bin}`)
  // A throwaway database key, and one coordinator device whose token every client uses (in the URL,
  // as a browser must). The field rate limit (20 requests/s per device) is lifted: the benchmark
  // measures the server at full speed.
  const env = { DESA_KEY: "62656e6368206b6579206f6620646573612d73796e632c206e6f742073656372", DESA_DATA: join(dataDir, "desa") }
  const admin = argv => execFileSync(bin, argv, { env: { ...process.env, ...env }, encoding: "utf8" })
  admin(["user", "add", "bench", "--role", "coordinator"])
  const added = admin(["device", "add", "bench"]).trim().split("\n")
  const token = added.pop()
  // New reports name the token's device as `created_by` (desa checks it is one of the creator's).
  DEVICE_ID = /added device (\S+)/.exec(added[0])?.[1] ?? null
  // Every client shares the one token: its per-device connection cap is lifted too.
  return startServer("desa", bin, ["serve", "--bind", "127.0.0.1:0", "--rate-limit", "1000000", "--rate-burst", "1000000", "--ws-per-device", "100000"], env, dataDir, line => {
    const m = /listening on http:\/\/([^\s/]+)/.exec(line)
    return m ? `ws://${m[1]}/ws?token=${token}` : null
  })
}

function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  // rest[0] is field 3 (state); utime is field 14, stime field 15
  return (Number(rest[11]) + Number(rest[12])) / CLK_TCK
}
function statusKb(pid, key) {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return m ? Number(m[1]) : NaN
}

// ---- the workload ----------------------------------------------------------------------------------

async function pool(items, limit, fn) {
  const out = new Array(items.length)
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++
        out[i] = await fn(items[i], i)
      }
    })
  )
  return out
}

const RISKS = ["low", "medium", "high", "urgent"]

/** desa's device id of the benchmark's token (null against the reference server). */
let DEVICE_ID = null

async function runClient(wsUrl, k) {
  const deviceId = DEVICE_ID ?? randomUUID()
  const c = await connectedClient(wsUrl, `bench-${k}`)
  try {
    const handles = []
    for (let d = 0; d < D; d++) {
      handles.push(c.repo.create(newIncident({ deviceId, village: VILLAGES[(k + d) % VILLAGES.length], i: k * D + d })))
    }
    for (const h of handles) await waitServerHas(c, h, { timeoutMs: 60_000 })
    for (let j = 0; j < E; j++) {
      for (const h of handles) {
        h.change(doc => {
          if (j % 4 === 0) doc.risk = RISKS[(j / 4) % RISKS.length]
          else doc.notes.push(newNote(deviceId, `catatan ${j}: pemantauan lanjutan, kapal belum berangkat`))
        })
      }
      for (const h of handles) await waitServerHas(c, h, { timeoutMs: 60_000 })
    }
    return handles.map(h => ({ url: h.url, heads: h.heads(), doc: plain(h.doc()) }))
  } finally {
    await closeClient(c)
  }
}

async function verify(wsUrl, expected) {
  const c = await connectedClient(wsUrl, "bench-verifier")
  let checkedEdits = 0
  try {
    await pool(expected, 20, async exp => {
      const h = await c.repo.find(exp.url, { signal: AbortSignal.timeout(30_000) })
      await waitFor(() => sameHeads(h.heads(), exp.heads), { timeoutMs: 30_000, what: `verifier heads for ${exp.url}` })
      const got = plain(h.doc())
      assert.deepEqual(got, exp.doc, `contents of ${exp.url}`)
      const notes = Array.from({ length: E }, (_, j) => j).filter(j => j % 4 !== 0).length
      assert.equal(got.notes.length, notes, `note count of ${exp.url}`)
      if (E > 0) assert.equal(got.risk, RISKS[Math.floor((E - 1) / 4) % RISKS.length])
      checkedEdits += E
    })
  } finally {
    await closeClient(c)
  }
  return checkedEdits
}

/// desa only: a change made over HTTP (a coordinator's PATCH) reaching a connected automerge-repo
/// client that has the report open — the live relay. Returns the delays in ms.
async function pushDelays(wsUrl, expected, n = 50) {
  const ws = new URL(wsUrl)
  const httpBase = `http://${ws.host}`
  const token = ws.searchParams.get("token")
  const c = await connectedClient(wsUrl, "bench-push")
  const delays = []
  try {
    for (const exp of expected.slice(0, n)) {
      const h = await c.repo.find(exp.url, { signal: AbortSignal.timeout(30_000) })
      await h.whenReady()
      const text = `push ${delays.length}`
      const t0 = performance.now()
      const res = await fetch(`${httpBase}/api/v1/reports/${exp.url.slice("automerge:".length)}`, {
        method: "PATCH",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ note: text }),
      })
      if (res.status !== 200) throw new Error(`PATCH answered ${res.status}`)
      await waitFor(() => plain(h.doc()).notes.some(x => x.text === text), { timeoutMs: 10_000, intervalMs: 1, what: "the pushed note" })
      delays.push(performance.now() - t0)
    }
  } finally {
    await closeClient(c)
  }
  return delays.sort((a, b) => a - b)
}

async function bench(kind) {
  const dataDir = mkdtempSync(join(tmpdir(), `desa-bench-${kind}-`))
  let server
  const r = { server: kind }
  clearFatal()
  try {
    server = kind === "reference" ? await startReference(dataDir) : await startDesa(dataDir)
    r.url = server.wsUrl
    r.pid = server.pid
    // Ready = a client's `join` is answered with `peer`. (The reference server can drop a connection
    // accepted in its first moments, before its repo has wired the WebSocket adapter; the client then
    // only retries ~5 s later. Don't let that land in the measurement.)
    const tReady = performance.now()
    await waitFor(
      async () => {
        const w = await connectedClient(server.wsUrl, "warmup", { timeoutMs: 1500 })
        await closeClient(w)
        return true
      },
      { timeoutMs: 30_000, intervalMs: 100, what: `${kind} to answer a join` }
    )
    r.ready_ms = performance.now() - tReady
    r.startup_rss_kb = statusKb(server.pid, "VmRSS")
    const cpu0 = cpuSeconds(server.pid)
    const t0 = performance.now()
    const per = await Promise.all(Array.from({ length: K }, (_, k) => runClient(server.wsUrl, k)))
    const cpu1 = cpuSeconds(server.pid)
    const t1 = performance.now()
    const expected = per.flat()
    const checked = await verify(server.wsUrl, expected)
    const cpu2 = cpuSeconds(server.pid)
    const t2 = performance.now()
    r.reports = expected.length
    r.edits = K * D * E
    r.edits_verified = checked
    r.write_wall_s = (t1 - t0) / 1000
    r.read_wall_s = (t2 - t1) / 1000
    r.write_cpu_s = cpu1 - cpu0
    r.read_cpu_s = cpu2 - cpu1
    r.cpu_per_edit_ms = r.edits ? (r.write_cpu_s / r.edits) * 1000 : NaN
    r.peak_rss_kb = statusKb(server.pid, "VmHWM")
    if (kind === "desa") {
      const d = await pushDelays(server.wsUrl, expected)
      r.push_p50_ms = d[Math.floor((d.length - 1) * 0.5)]
      r.push_p95_ms = d[Math.floor((d.length - 1) * 0.95)]
    }
    r.ok = true
  } catch (e) {
    r.ok = false
    r.error = e?.message ?? String(e)
    if (server) r.server_log_tail = server.log.join("").slice(-1500)
  } finally {
    if (server) await server.stop()
    if (!args["keep-data"]) rmSync(dataDir, { recursive: true, force: true })
  }
  return r
}

// ---- run and report --------------------------------------------------------------------------------

console.log(`workload: ${K} clients x ${D} reports x ${E} edits = ${K * D * E} edits, ${K * D} reports (CLK_TCK ${CLK_TCK})`)
if (only !== "reference" && /\/debug\//.test(args["desa-server"]))
  console.log("note: desa-server is a debug build — its CPU and memory are not representative; use target/release/desa-server")
const results = []
for (const kind of ["reference", "desa"]) {
  if (only && only !== kind) continue
  process.stdout.write(`running ${kind} ... `)
  const r = await bench(kind)
  results.push(r)
  console.log(r.ok ? `ok (${(r.write_wall_s + r.read_wall_s).toFixed(1)} s)` : `FAILED: ${r.error}`)
  if (!r.ok && r.server_log_tail) console.log(`  server log tail:\n${r.server_log_tail.replace(/^/gm, "    ")}`)
}

const fmt = (v, d = 3) => (typeof v === "number" && isFinite(v) ? v.toFixed(d) : "-")
const rows = [
  ["", ...results.map(r => r.server)],
  ["edits verified", ...results.map(r => (r.ok ? `${r.edits_verified}/${r.edits}` : "FAILED"))],
  ["write wall (s)", ...results.map(r => fmt(r.write_wall_s, 2))],
  ["read wall (s)", ...results.map(r => fmt(r.read_wall_s, 2))],
  ["server CPU write (s)", ...results.map(r => fmt(r.write_cpu_s, 2))],
  ["server CPU read (s)", ...results.map(r => fmt(r.read_cpu_s, 2))],
  ["CPU per edit (ms)", ...results.map(r => fmt(r.cpu_per_edit_ms, 3))],
  ["join answered after (ms)", ...results.map(r => fmt(r.ready_ms, 0))],
  ["RSS at start (MiB)", ...results.map(r => fmt(r.startup_rss_kb / 1024, 1))],
  ["peak RSS VmHWM (MiB)", ...results.map(r => fmt(r.peak_rss_kb / 1024, 1))],
  ["HTTP→WS push p50 (ms)", ...results.map(r => fmt(r.push_p50_ms, 1))],
  ["HTTP→WS push p95 (ms)", ...results.map(r => fmt(r.push_p95_ms, 1))],
]
const widths = rows[0].map((_, i) => Math.max(...rows.map(row => String(row[i]).length)))
console.log()
for (const row of rows) console.log(row.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join("  "))

const ref = results.find(r => r.server === "reference" && r.ok)
const desa = results.find(r => r.server === "desa" && r.ok)
let exit = results.every(r => r.ok) ? 0 : 1
if (ref && desa) {
  const cpuRatio = desa.cpu_per_edit_ms / ref.cpu_per_edit_ms
  const memRatio = desa.peak_rss_kb / ref.peak_rss_kb
  console.log()
  console.log(`desa CPU/edit / reference CPU/edit = ${fmt(cpuRatio, 3)}   target <= 0.200 (1/5)   ${cpuRatio <= 0.2 ? "MET" : "NOT MET"}`)
  console.log(`desa peak RSS / reference peak RSS = ${fmt(memRatio, 3)}   target <= 0.500 (1/2)   ${memRatio <= 0.5 ? "MET" : "NOT MET"}`)
  results.push({ ratios: { cpu_per_edit: cpuRatio, peak_rss: memRatio, targets: { cpu_per_edit: 0.2, peak_rss: 0.5 } } })
} else {
  console.log()
  console.log("ratios: need both servers (targets: desa CPU/edit <= 1/5 of reference, desa peak RSS <= 1/2 of reference)")
}
if (args.json) writeFileSync(args.json, JSON.stringify({ K, D, E, results }, null, 2))
process.exit(exit)
