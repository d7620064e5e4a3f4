#!/usr/bin/env node
// Editing while connected, the way an app behaves while someone types: real automerge-repo 2.5
// clients, each with its own device token, edit their reports every few milliseconds WITHOUT
// waiting for the server between edits; then a fresh client (another token) must find every edit
// of every report. Then two clients type into one narrative character by character, at once.
//
//   node nowait.mjs --ws ws://127.0.0.1:PORT/ws --http http://127.0.0.1:PORT \
//                   --tokens T1,T2,...,TK,TFRESH [--reports 5] [--seconds 10] [--interval 20]
//                   [--typing 200]
//
// Against another sync server (no --http): created_by is random and tokens are not used.
// Prints one line per check and finally "N passed, M failed"; exits 0 only if nothing failed.

import { parseArgs } from "node:util"
import assert from "node:assert/strict"
import { splice } from "@automerge/automerge-repo"
import {
  connectedClient,
  closeClient,
  waitFor,
  waitServerHas,
  newIncident,
  newNote,
  plain,
  str,
  randomUUID,
  VILLAGES,
  reportFatal,
} from "./lib.mjs"

const { values: args } = parseArgs({
  options: {
    ws: { type: "string" },
    http: { type: "string" },
    tokens: { type: "string", default: "" },
    reports: { type: "string", default: "5" },
    seconds: { type: "string", default: "10" },
    interval: { type: "string", default: "20" },
    typing: { type: "string", default: "200" },
  },
})
if (!args.ws) {
  console.error("usage: node nowait.mjs --ws ws://HOST/ws [--http http://HOST] --tokens T1,...,TFRESH")
  process.exit(2)
}
const TOKENS = args.tokens ? args.tokens.split(",") : []
const REPORTS = Number(args.reports)
const SECONDS = Number(args.seconds)
const INTERVAL = Number(args.interval)
const TYPED = Number(args.typing)
const CLIENTS = Math.max(1, TOKENS.length - 1)
const sleep = ms => new Promise(r => setTimeout(r, ms))

process.on("uncaughtException", e => reportFatal(e))
process.on("unhandledRejection", e => reportFatal(e))

/** The WebSocket URL for token `t` (the base URL is given for the first token). */
function wsFor(t) {
  if (!t) return args.ws
  const url = new URL(args.ws)
  url.searchParams.set("token", t)
  return url.toString()
}

/** The device id of token `t`, as desa reports it (a new report's `created_by`). */
async function deviceOf(t) {
  if (!args.http || !t) return randomUUID()
  const res = await fetch(`${args.http.replace(/\/+$/, "")}/api/v1/me`, {
    headers: { authorization: `Bearer ${t}` },
  })
  assert.equal(res.status, 200, `GET /api/v1/me: HTTP ${res.status}`)
  return (await res.json()).device
}

let passed = 0
let failed = 0
async function check(label, fn) {
  const start = performance.now()
  try {
    const detail = (await fn()) ?? ""
    passed++
    console.log(`PASS ${label} (${(performance.now() - start).toFixed(0)} ms)${detail ? ": " + detail : ""}`)
  } catch (e) {
    failed++
    console.log(`FAIL ${label} (${(performance.now() - start).toFixed(0)} ms): ${e?.stack ?? e}`)
  }
}

/** Edit `handles` (each a report of this client) every INTERVAL ms for SECONDS, never waiting:
 *  a note pushed, or the title changed. Returns the number of edits. */
async function editWithoutWaiting(client, handles, device) {
  const end = performance.now() + SECONDS * 1000
  let n = 0
  while (performance.now() < end) {
    const h = handles[n % handles.length]
    if (n % 3 === 2) {
      h.change(d => {
        d.title = `${client.name} edit ${n}`
      })
    } else {
      h.change(d => {
        d.notes.push(newNote(device, `${client.name} note ${n}`))
      })
    }
    n++
    await sleep(INTERVAL)
  }
  return n
}

// ---- 1. every edit made without waiting reaches a fresh peer ---------------------------------------
await check(
  `(1) ${CLIENTS} clients × ${REPORTS} reports, editing every ${INTERVAL} ms for ${SECONDS} s without waiting; a fresh client finds every edit`,
  async () => {
    const clients = []
    try {
      for (let k = 0; k < CLIENTS; k++) {
        const token = TOKENS[k]
        const c = await connectedClient(wsFor(token), `client${k}`)
        c.device = await deviceOf(token)
        clients.push(c)
      }
      const created = clients.map((c, k) =>
        Array.from({ length: REPORTS }, (_, i) =>
          c.repo.create(newIncident({ deviceId: c.device, village: VILLAGES[k % VILLAGES.length], i: k * REPORTS + i }))
        )
      )
      const edits = await Promise.all(clients.map((c, k) => editWithoutWaiting(c, created[k], c.device)))
      // Now (and only now) wait until the server has acknowledged every creator's heads.
      for (const [k, c] of clients.entries()) {
        for (const h of created[k]) await waitServerHas(c, h, { timeoutMs: 60_000 })
      }
      const fresh = await connectedClient(wsFor(TOKENS[TOKENS.length - 1]), "fresh")
      try {
        let reports = 0
        for (const [k, c] of clients.entries()) {
          for (const h of created[k]) {
            const want = plain(h.doc())
            const got = await fresh.repo.find(h.url, { signal: AbortSignal.timeout(30_000) })
            await waitFor(() => JSON.stringify(plain(got.doc())) === JSON.stringify(want), {
              timeoutMs: 30_000,
              what: `fresh client to see every edit of ${h.url} (${want.notes.length} notes)`,
            })
            if (args.http) {
              const id = h.url.replace("automerge:", "")
              const res = await fetch(`${args.http.replace(/\/+$/, "")}/api/v1/reports/${id}`, {
                headers: { authorization: `Bearer ${TOKENS[k]}` },
              })
              assert.equal(res.status, 200)
              const body = await res.json()
              assert.equal(body.document.notes.length, want.notes.length, `notes of ${id} over HTTP`)
              assert.equal(body.document.title, str(want.title), `title of ${id} over HTTP`)
            }
            reports++
          }
        }
        return `${edits.reduce((a, b) => a + b, 0)} edits on ${reports} reports, all found`
      } finally {
        await closeClient(fresh)
      }
    } finally {
      for (const c of clients) await closeClient(c)
    }
  }
)

// ---- 2. two people typing into one narrative, character by character, at once ----------------------
await check(`(2) two clients type ${TYPED} characters each into one narrative at once, every ${INTERVAL / 2} ms`, async () => {
  const [ta, tb] = [TOKENS[0], TOKENS.length > 2 ? TOKENS[1] : TOKENS[0]]
  const a = await connectedClient(wsFor(ta), "typist-a")
  const b = await connectedClient(wsFor(tb), "typist-b")
  try {
    const device = await deviceOf(ta)
    const ha = a.repo.create(newIncident({ deviceId: device, i: 99, title: "Two people typing" }))
    await waitServerHas(a, ha, { timeoutMs: 30_000 })
    const hb = await b.repo.find(ha.url, { signal: AbortSignal.timeout(30_000) })
    const initial = str(ha.doc().narrative).length
    const textA = "Ani: kapal berangkat jam tiga pagi dari dermaga lama. ".repeat(8).slice(0, TYPED)
    const textB = "Budi: dua perempuan muda ikut, tanpa paspor. ".repeat(8).slice(0, TYPED)
    const type = async (h, text) => {
      for (const ch of text) {
        h.change(d => {
          const at = str(d.narrative).length
          splice(d, ["narrative"], at, 0, ch)
        })
        await sleep(INTERVAL / 2)
      }
    }
    await Promise.all([type(ha, textA), type(hb, textB)])
    await waitServerHas(a, ha, { timeoutMs: 60_000 })
    await waitServerHas(b, hb, { timeoutMs: 60_000 })
    const fresh = await connectedClient(wsFor(TOKENS[TOKENS.length - 1]), "reader")
    try {
      const got = await fresh.repo.find(ha.url, { signal: AbortSignal.timeout(30_000) })
      await waitFor(() => str(got.doc().narrative).length === initial + TYPED * 2, {
        timeoutMs: 30_000,
        what: `the fresh client's narrative to hold both typists' ${TYPED * 2} characters after the first ${initial}`,
      })
      const merged = str(got.doc().narrative)
      // Each typist's characters appear in their order (interleaved with the other's).
      const inOrder = (text, all) => {
        let i = 0
        for (const ch of all) if (i < text.length && ch === text[i]) i++
        return i === text.length
      }
      assert.ok(inOrder(textA, merged), "Ani's typing is whole and in order")
      assert.ok(inOrder(textB, merged), "Budi's typing is whole and in order")
      await waitFor(() => str(ha.doc().narrative) === merged && str(hb.doc().narrative) === merged, {
        timeoutMs: 30_000,
        what: "both typists to converge on the merged narrative",
      })
      return `${merged.length - initial} characters typed, both in order`
    } finally {
      await closeClient(fresh)
    }
  } finally {
    await closeClient(a)
    await closeClient(b)
  }
})

console.log(`${passed} passed, ${failed} failed`)
process.exit(failed ? 1 : 0)
