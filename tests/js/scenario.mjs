#!/usr/bin/env node
// Scenario test: unchanged @automerge/automerge-repo 2.5 clients against a sync server's
// WebSocket endpoint (desa-server's /ws, or the reference automerge-repo-sync-server).
//
//   node scenario.mjs --ws ws://127.0.0.1:PORT/ws [--interop ID --interop-note TEXT]
//                     [--http http://127.0.0.1:PORT] [--trace]
//
// --interop: also open report ID made by the desa CLI and add a note (check e);
// --http:    desa only, also compare every report with desa's HTTP API (check f);
// --trace:   print every protocol message sent/received, with the decoded sync message;
// --repeat-b N: run check (b), the concurrent reconnect, N times.
//
// Prints one line per check and finally "N passed, M failed"; exits 0 only if nothing failed.

import { parseArgs } from "node:util"
import assert from "node:assert/strict"
import {
  makeClient,
  waitConnected,
  closeClient,
  waitFor,
  waitServerHas,
  newIncident,
  newNote,
  plain,
  str,
  toUrl,
  randomUUID,
  sameHeads,
  traceAdapter,
  reportFatal,
  clearFatal,
} from "./lib.mjs"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { generateAutomergeUrl, parseAutomergeUrl } from "@automerge/automerge-repo"

const { values: args } = parseArgs({
  options: {
    ws: { type: "string" },
    interop: { type: "string" },
    "interop-note": { type: "string" },
    http: { type: "string" },
    "repeat-b": { type: "string", default: "1" },
    trace: { type: "boolean", default: false },
    "check-timeout": { type: "string", default: "30000" },
  },
})
if (!args.ws) {
  console.error(
    "usage: node scenario.mjs --ws ws://127.0.0.1:PORT/ws [--interop ID --interop-note TEXT] [--http http://127.0.0.1:PORT] [--trace]"
  )
  process.exit(2)
}
if (args.interop && !args["interop-note"]) {
  console.error("--interop needs --interop-note TEXT")
  process.exit(2)
}
const WS = args.ws
// desa's HTTP API wants the same device token the WebSocket URL carries (?token=…).
const TOKEN = new URL(WS).searchParams.get("token")
const auth = TOKEN ? { authorization: `Bearer ${TOKEN}` } : {}
const CHECK_TIMEOUT = Number(args["check-timeout"])
const REPEAT_B = Math.max(1, Number(args["repeat-b"]) || 1)
const t0 = performance.now()
const trace = args.trace
  ? line => console.log(`  [${((performance.now() - t0) / 1000).toFixed(3)}s] ${line}`)
  : null

let passed = 0
let failed = 0
const clients = new Set()
const uncaught = []
process.on("uncaughtException", e => {
  uncaught.push(e)
  reportFatal(e)
  console.log(`  ! uncaught exception (counted as a failure of the running check): ${e?.stack ?? e}`)
})
process.on("unhandledRejection", e => {
  uncaught.push(e)
  reportFatal(e)
  console.log(`  ! unhandled rejection (counted as a failure of the running check): ${e?.stack ?? e}`)
})

function client(name) {
  const c = makeClient(WS, name, { trace })
  clients.add(c)
  return c
}
async function fresh(name) {
  const c = client(name)
  await waitConnected(c)
  return c
}
async function close(c) {
  clients.delete(c)
  await closeClient(c)
}

async function check(label, fn) {
  const start = performance.now()
  const before = uncaught.length
  clearFatal()
  let detail = ""
  let err = null
  try {
    let timer
    detail =
      (await Promise.race([
        fn(),
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(new Error(`check did not finish in ${CHECK_TIMEOUT} ms`)), CHECK_TIMEOUT)
        }),
      ]).finally(() => clearTimeout(timer))) ?? ""
    if (uncaught.length > before) throw new Error(`uncaught error during check: ${uncaught[before]?.message ?? uncaught[before]}`)
  } catch (e) {
    err = e
  }
  // a failed check must not leave its clients connected (later checks assume a quiet server)
  for (const c of [...clients]) await close(c)
  const ms = (performance.now() - start).toFixed(0)
  if (err) {
    failed++
    console.log(`FAIL ${label} (${ms} ms): ${err.message ?? err}`)
  } else {
    passed++
    console.log(`PASS ${label} (${ms} ms)${detail ? ": " + detail : ""}`)
  }
  return !err
}

/** The report contents every later check compares against: url -> plain JSON. */
const expected = new Map()

/** The device this run's token names (desa checks that a new report's `created_by` is one of its
 *  creator's devices; apps learn it from GET /api/v1/me). Against another server: any id. */
async function myDevice() {
  if (!args.http) return randomUUID()
  const res = await fetch(`${args.http.replace(/\/+$/, "")}/api/v1/me`, { headers: auth })
  assert.equal(res.status, 200, `GET /api/v1/me: HTTP ${res.status}`)
  return (await res.json()).device
}
const ME = await myDevice()

// ---- (a) create on A, find on B --------------------------------------------------------------------
const deviceA = ME
await check("(a) client A creates 3 incidents; fresh client B finds each by URL with identical contents", async () => {
  const A = await fresh("volunteer-a")
  const handles = [0, 1, 2].map(i => A.repo.create(newIncident({ deviceId: deviceA, i })))
  // (c) fetches these even if this check fails further on
  for (const h of handles) expected.set(h.url, plain(h.doc()))
  const tSync = performance.now()
  for (const h of handles) await waitServerHas(A, h)
  const syncMs = performance.now() - tSync
  const B = await fresh("volunteer-b")
  for (const h of handles) {
    const found = await B.repo.find(h.url, { signal: AbortSignal.timeout(10_000) })
    await waitFor(() => sameHeads(found.heads(), h.heads()), { what: `B heads == A heads for ${h.url}` })
    const a = plain(h.doc())
    const b = plain(found.doc())
    assert.deepEqual(b, a, `contents differ for ${h.url}`)
    assert.equal(b.kind, "incident")
    assert.equal(b.status, "new")
  }
  await close(A)
  await close(B)
  return `${handles.length} reports, server acknowledged all in ${syncMs.toFixed(0)} ms; ${[...expected.keys()].map(u => u.slice(10, 18)).join(", ")}…`
})

// ---- (b) concurrent offline edits ------------------------------------------------------------------
// --repeat-b N runs (b) N times (each with its own report): the reconnect is a race between two
// peers' changes to one document, so a server bug there may show only now and then.
for (let round = 1; round <= REPEAT_B; round++)
await check(`(b${REPEAT_B > 1 ? "#" + round : ""}) two clients edit different fields and append notes offline, reconnect, converge; a third fresh client sees the same`, async () => {
  const deviceC = ME
  const deviceD = randomUUID()
  const C = await fresh("volunteer-c")
  const h1 = C.repo.create(newIncident({ deviceId: deviceC, i: 7, title: "Keberangkatan tidak resmi dari dermaga lama" }))
  await waitServerHas(C, h1)
  const D = await fresh("volunteer-d")
  const h2 = await D.repo.find(h1.url, { signal: AbortSignal.timeout(10_000) })
  await waitFor(() => sameHeads(h2.heads(), h1.heads()), { what: "D has C's report" })

  // Go offline, two ways an app can:
  //  C: drop its network adapter (Repo.networkSubsystem.removeNetworkAdapter) and later add a new one
  //     — the new adapter joins with full peerMetadata {storageId, isEphemeral:false};
  //  D: Repo.networkSubsystem.disconnect() / reconnect() — note reconnect() calls
  //     adapter.connect(peerId) WITHOUT peerMetadata, so D's second `join` carries peerMetadata {}.
  const oldAdapter = C.adapter
  C.repo.networkSubsystem.removeNetworkAdapter(oldAdapter)
  D.repo.networkSubsystem.disconnect()
  await waitFor(() => C.repo.peers.length === 0 && D.repo.peers.length === 0, { what: "C and D offline" })

  const noteC = newNote(deviceC, "Kapal berangkat jam 3 pagi, dua perempuan muda ikut.")
  const noteD = newNote(deviceD, "Keluarga diminta tidak bercerita kepada kepala desa.")
  h1.change(d => {
    d.risk = "high"
    d.notes.push(noteC)
  })
  h2.change(d => {
    d.occurred_on = "2026-11-27"
    d.notes.push(noteD)
  })
  // nothing may have reached the other side while offline
  assert.equal(h2.doc().risk, undefined)
  assert.equal(h1.doc().occurred_on, undefined)

  const tRe = performance.now()
  const newAdapter = new WebSocketClientAdapter(WS, 1000)
  if (trace) traceAdapter(newAdapter, C.name + "'", trace)
  C.repo.networkSubsystem.addNetworkAdapter(newAdapter)
  C.adapter = newAdapter
  D.repo.networkSubsystem.reconnect()
  const both = doc => {
    const ids = (doc.notes ?? []).map(n => str(n.id))
    return str(doc.risk) === "high" && str(doc.occurred_on) === "2026-11-27" && ids.includes(noteC.id) && ids.includes(noteD.id)
  }
  await waitFor(() => both(h1.doc()) && both(h2.doc()) && sameHeads(h1.heads(), h2.heads()), {
    timeoutMs: 20_000,
    what: "C and D to show both notes and both fields",
  })
  const convergeMs = performance.now() - tRe
  assert.equal(str(h1.doc().status), "new")
  const merged = plain(h1.doc())
  assert.deepEqual(plain(h2.doc()), merged)
  await waitServerHas(C, h1)
  await waitServerHas(D, h2)
  await close(C)
  await close(D)

  const E = await fresh("coordinator-e")
  const h3 = await E.repo.find(h1.url, { signal: AbortSignal.timeout(10_000) })
  await waitFor(() => both(h3.doc()) && sameHeads(h3.heads(), h1.heads()), { what: "fresh client E sees the merged report" })
  assert.deepEqual(plain(h3.doc()), merged)
  await close(E)
  expected.set(h1.url, merged)
  return `converged ${convergeMs.toFixed(0)} ms after reconnect; notes ${merged.notes.length}, risk=${merged.risk}, occurred_on=${merged.occurred_on}`
})

// ---- (c) everything from the server alone ----------------------------------------------------------
await check("(c) a completely fresh client fetches every report from (a) and (b) from the server alone", async () => {
  assert.ok(clients.size === 0, `other clients still open: ${[...clients].map(c => c.name)}`)
  assert.ok(expected.size >= 1, "nothing was created in (a)/(b)")
  const F = await fresh("coordinator-f")
  const t = performance.now()
  for (const [url, want] of expected) {
    const h = await F.repo.find(url, { signal: AbortSignal.timeout(10_000) })
    await waitFor(
      () => {
        assert.deepEqual(plain(h.doc()), want)
        return true
      },
      { what: `fresh client's ${url} to equal the expected contents` }
    )
  }
  const ms = performance.now() - t
  await close(F)
  return `${expected.size} reports in ${ms.toFixed(0)} ms`
})

// ---- (d) unknown document -> unavailable, quickly -------------------------------------------------
await check("(d) find() of a valid id nobody created is reported unavailable in well under 5 s", async () => {
  const G = await fresh("volunteer-g")
  const url = generateAutomergeUrl()
  const docId = parseAutomergeUrl(url).documentId
  // record what the server says about this document, to tell a real doc-unavailable from a local
  // "no peers" shortcut
  const seen = []
  G.adapter.on("message", m => {
    if (m.documentId === docId) seen.push(m.type + ("data" in m && m.data ? `(${m.data.byteLength}B)` : ""))
  })
  assert.ok(G.repo.peers.length > 0, "client must be connected, else find() fails locally without asking")
  const t = performance.now()
  let outcome
  try {
    const h = await G.repo.find(url, { signal: AbortSignal.timeout(5_000) })
    outcome = `resolved in state ${h.state}`
  } catch (e) {
    outcome = e.name === "AbortError" || /abort/i.test(e.message) ? "aborted" : `rejected: ${e.message}`
  }
  const ms = performance.now() - t
  await close(G)
  const detail = `${ms.toFixed(0)} ms, ${outcome}; server sent for this doc: [${seen.join(", ") || "nothing"}]`
  if (!/unavailable/.test(outcome)) throw new Error(`expected unavailable, got ${detail}`)
  if (ms > 5_000) throw new Error(`too slow: ${detail}`)
  if (!seen.some(s => s.startsWith("doc-unavailable"))) throw new Error(`no doc-unavailable from server: ${detail}`)
  return detail
})

// ---- (e) interop with a report made by the desa CLI ------------------------------------------------
if (args.interop) {
  await check(`(e) interop: report ${args.interop} from the desa CLI is readable, takes a note, the server stores it`, async () => {
    const url = toUrl(args.interop)
    const H = await fresh("volunteer-h")
    const h = await H.repo.find(url, { signal: AbortSignal.timeout(10_000) })
    const doc = h.doc()
    assert.equal(str(doc.kind), "incident", `kind is ${JSON.stringify(plain(doc.kind))}`)
    const formsSeen = `title is ${typeof doc.title === "string" ? "Text/string" : "scalar string"}`
    const note = newNote(`js-interop-${randomUUID().slice(0, 8)}`, args["interop-note"])
    const before = (doc.notes ?? []).length
    h.change(d => {
      d.notes.push(note)
    })
    await waitServerHas(H, h)
    await close(H)
    const I = await fresh("coordinator-i")
    const h2 = await I.repo.find(url, { signal: AbortSignal.timeout(10_000) })
    await waitFor(() => (h2.doc().notes ?? []).some(n => str(n.id) === note.id && str(n.text) === note.text), {
      what: "fresh client to see the interop note",
    })
    const got = plain(h2.doc())
    await close(I)
    expected.set(url, got)
    return `${formsSeen}; notes ${before} -> ${got.notes.length}; note id ${note.id}`
  })
}

// ---- (f) desa only: what the JS clients wrote is what coordinators read -----------------------------
if (args.http) {
  await check("(f) every report the JS clients wrote reads the same through desa's HTTP API (GET /api/v1/reports/{id})", async () => {
    assert.ok(expected.size >= 1, "nothing was created in (a)/(b)")
    const base = args.http.replace(/\/+$/, "")
    for (const [url, want] of expected) {
      const id = url.slice("automerge:".length)
      // the server may index a report a moment after acknowledging it: poll, with a deadline
      await waitFor(
        async () => {
          const res = await fetch(`${base}/api/v1/reports/${id}`, { headers: auth })
          assert.equal(res.status, 200, `GET report ${id}: HTTP ${res.status}`)
          const body = await res.json()
          assert.deepEqual(plain(body.document), want, `HTTP document of ${id}`)
          assert.equal(body.status, "new")
          return true
        },
        { timeoutMs: 5_000, intervalMs: 100, what: `HTTP view of ${id} to equal the JS clients' document` }
      )
    }
    return `${expected.size} reports`
  })
}

// ---- (g) desa only: live push of a change that arrives over HTTP -----------------------------------
if (args.http) {
  await check("(g) a coordinator's change over HTTP is pushed to a connected JS client that has the report open", async () => {
    const [url] = [...expected.keys()]
    assert.ok(url, "nothing was created in (a)")
    const g = await fresh("G")
    const h = await g.repo.find(url)
    await h.whenReady()
    const base = args.http.replace(/\/+$/, "")
    const t0 = performance.now()
    const res = await fetch(`${base}/api/v1/reports/${url.slice("automerge:".length)}`, {
      method: "PATCH",
      headers: { "content-type": "application/json", ...auth },
      body: JSON.stringify({ status: "under_review", note: "pushed from the office" }),
    })
    assert.equal(res.status, 200, `PATCH: HTTP ${res.status}`)
    // G does nothing: the server must push the change to it.
    await waitFor(() => str(h.doc().status) === "under_review", { timeoutMs: 5_000, what: "the pushed status on G" })
    const notes = plain(h.doc()).notes.map(n => n.text)
    assert.ok(notes.includes("pushed from the office"), JSON.stringify(notes))
    return `arrived ${(performance.now() - t0).toFixed(0)} ms after the PATCH was sent`
  })
}

// ---- (h) ephemeral messages are relayed between peers of a document, never stored ------------------
await check("(h) an ephemeral message from one client reaches another client that has the report open", async () => {
  const [url] = [...expected.keys()]
  assert.ok(url, "nothing was created in (a)")
  const p = await fresh("P")
  const q = await fresh("Q")
  const hp = await p.repo.find(url)
  const hq = await q.repo.find(url)
  await hp.whenReady()
  await hq.whenReady()
  const received = []
  hq.on("ephemeral-message", ({ message }) => received.push(message))
  // Resend until it arrives: Q's subscription reaches the server with its first sync.
  const t0 = performance.now()
  await waitFor(
    () => {
      if (received.length === 0) hp.broadcast({ cursor: 42, from: "P" })
      return received.length > 0
    },
    { timeoutMs: 5_000, intervalMs: 100, what: "Q to receive P's ephemeral message" }
  )
  assert.deepEqual(received[0], { cursor: 42, from: "P" })
  return `arrived within ${(performance.now() - t0).toFixed(0)} ms`
})

for (const c of [...clients]) await close(c)
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
