// Shared helpers for scenario.mjs and bench.mjs: automerge-repo 2.5 clients that behave like a
// field app (in-memory storage standing in for IndexedDB, one WebSocket adapter to the server,
// announce-everything share policy), valid desa report documents, and polling with deadlines.

import { randomUUID, randomBytes } from "node:crypto"
import {
  Repo,
  isImmutableString,
  isValidAutomergeUrl,
  stringifyAutomergeUrl,
  interpretAsDocumentId,
  cbor,
} from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

/** A Map-backed StorageAdapterInterface: gives the repo a storageId (sent in `join`) like a real
 * app's IndexedDB would, so the server may keep this peer's sync state. Keys are string arrays. */
export class MemoryStorage {
  #data = new Map()
  #k(key) {
    return key.join("\u0000")
  }
  async load(key) {
    return this.#data.get(this.#k(key))
  }
  async save(key, data) {
    this.#data.set(this.#k(key), data)
  }
  async remove(key) {
    this.#data.delete(this.#k(key))
  }
  async loadRange(prefix) {
    const p = this.#k(prefix)
    const out = []
    for (const [k, data] of this.#data) {
      if (k === p || k.startsWith(p + "\u0000")) out.push({ key: k.split("\u0000"), data })
    }
    return out
  }
  async removeRange(prefix) {
    for (const { key } of await this.loadRange(prefix)) this.#data.delete(this.#k(key))
  }
}

/** Optional wire trace: wraps an adapter so every message it sends/receives is summarised. */
export function traceAdapter(adapter, name, log) {
  const origSend = adapter.send.bind(adapter)
  adapter.send = msg => {
    log(`${name} -> ${summarise(msg)}`)
    return origSend(msg)
  }
  const origReceive = adapter.receiveMessage.bind(adapter)
  adapter.receiveMessage = bytes => {
    try {
      // decode only for the log; the adapter decodes again itself
      log(`${name} <- ${summarise(cbor.decode(new Uint8Array(bytes)))} (${bytes.byteLength}B frame)`)
    } catch (e) {
      log(`${name} <- undecodable ${bytes?.byteLength}B frame: ${e.message}`)
    }
    return origReceive(bytes)
  }
  return adapter
}

// Only for --trace: decode the automerge sync message inside sync/request frames. automerge is
// automerge-repo's own dependency (hoisted), loaded lazily so the harness never depends on it.
let decodeSyncMessage = null
import("@automerge/automerge")
  .then(A => (decodeSyncMessage = A.decodeSyncMessage))
  .catch(() => {})
const short = h => String(h).slice(0, 8)

export function summarise(m) {
  const o = {}
  for (const [k, v] of Object.entries(m)) {
    if (v instanceof Uint8Array || ArrayBuffer.isView(v)) {
      o[k] = `<${v.byteLength} bytes>`
      if (k === "data" && (m.type === "sync" || m.type === "request") && decodeSyncMessage) {
        try {
          const s = decodeSyncMessage(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))
          o.sync = {
            heads: s.heads.map(short),
            need: s.need.map(short),
            have: s.have.map(h => ({ lastSync: h.lastSync.map(short), bloom: h.bloom.byteLength })),
            changes: s.changes.length,
          }
        } catch (e) {
          o.sync = `undecodable: ${e.message}`
        }
      }
    } else o[k] = v
  }
  return JSON.stringify(o)
}

/** A client = its own Repo + one WebSocketClientAdapter. */
export function makeClient(wsUrl, name, { trace = null, retryInterval = 1000 } = {}) {
  const adapter = new WebSocketClientAdapter(wsUrl, retryInterval)
  if (trace) traceAdapter(adapter, name, trace)
  const repo = new Repo({
    network: [adapter],
    storage: new MemoryStorage(),
    peerId: `${name}-${randomBytes(4).toString("hex")}`,
    // A field app's only peer is its sync server: announce every report to it so new reports and
    // offline edits are pushed without the server having to ask.
    sharePolicy: async () => true,
  })
  return { name, repo, adapter, wsUrl, trace }
}

/** Wait until the client's repo has a connected peer (the server answered `join` with `peer`). */
export async function waitConnected(client, timeoutMs = 10_000) {
  await waitFor(() => client.repo.peers.length > 0, {
    timeoutMs,
    what: `${client.name} connected (peer message from server)`,
  })
  return client.repo.peers[0]
}

export async function connectedClient(wsUrl, name, opts = {}) {
  const c = makeClient(wsUrl, name, opts)
  try {
    await waitConnected(c, opts.timeoutMs)
  } catch (e) {
    await closeClient(c)
    throw e
  }
  return c
}

export async function closeClient(c) {
  try {
    // Repo.shutdown() calls adapter.disconnect() on every adapter, and disconnect() asserts that a
    // socket exists: drop adapters that are already disconnected (an app that went offline).
    const ns = c.repo.networkSubsystem
    ns.adapters = ns.adapters.filter(a => a.socket)
    await c.repo.shutdown()
  } catch (e) {
    // ignore: best effort
  }
}

export const sleep = ms => new Promise(r => setTimeout(r, ms))

/** An error thrown outside any promise chain (e.g. WebSocketClientAdapter rethrows socket errors
 * other than ECONNREFUSED from its event handler, such as "Unexpected server response: 404"):
 * the entry points record it here so that every pending waitFor fails at once instead of timing out. */
let fatal = null
export function reportFatal(e) {
  fatal = e
}
export function clearFatal() {
  fatal = null
}

/** Poll `cond` (sync or async) every `intervalMs` until truthy; throw after `timeoutMs`. */
export async function waitFor(cond, { timeoutMs = 15_000, intervalMs = 20, what = "condition" } = {}) {
  const start = performance.now()
  let lastErr
  for (;;) {
    if (fatal) throw new Error(`while waiting for ${what}: ${fatal?.message ?? fatal}`)
    try {
      const v = await cond()
      if (v) return v
    } catch (e) {
      lastErr = e
    }
    if (performance.now() - start > timeoutMs) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${lastErr.message})` : ""}`
      )
    }
    await sleep(intervalMs)
  }
}

/** Read a string that may be a JS Text (plain string) or a scalar string written by Rust. */
export function str(v) {
  if (typeof v === "string") return v
  if (v !== undefined && v !== null && isImmutableString(v)) return v.val
  return v
}

/** Deep plain-JSON copy of a document, with scalar strings and texts both as JS strings. */
export function plain(v) {
  if (v === null || v === undefined) return v
  if (typeof v === "string") return v
  if (isImmutableString(v)) return v.val
  if (Array.isArray(v)) return v.map(plain)
  if (typeof v === "object") {
    const o = {}
    for (const k of Object.keys(v).sort()) o[k] = plain(v[k])
    return o
  }
  return v
}

export function toUrl(id) {
  return isValidAutomergeUrl(id) ? id : stringifyAutomergeUrl({ documentId: interpretAsDocumentId(id) })
}

// ---- desa report documents ----------------------------------------------------------------------

export const VILLAGES = ["6302010001", "6302010002", "6302010003", "6302010004"]
const CATEGORIES = ["recruitment_offer", "irregular_departure", "document_fraud", "missing_person", "exploitation"]

export function rfc3339(d = new Date()) {
  return d.toISOString() // e.g. 2026-11-28T08:15:00.123Z — RFC 3339
}

/** A valid incident with every fixed field and container, for `repo.create()` (first change). */
export function newIncident({ deviceId, village = VILLAGES[0], i = 0, title } = {}) {
  return {
    kind: "incident",
    schema_version: 1,
    village,
    created_at: rfc3339(),
    created_by: deviceId,
    category: CATEGORIES[i % CATEGORIES.length],
    title: title ?? `Laporan uji ${i}: tawaran kerja ke Malaysia tanpa dokumen`,
    narrative: `Seorang pria dari luar desa menawarkan pekerjaan di perkebunan. (test ${i})`,
    location: {},
    people: [],
    status: "new",
    notes: [],
  }
}

export function newNote(author, text) {
  return { id: `n-${randomUUID()}`, author, at: rfc3339(), text }
}

export { randomUUID }

/** Sorted-array equality for heads. */
export function sameHeads(a, b) {
  if (!a || !b || a.length !== b.length) return false
  const x = [...a].sort()
  const y = [...b].sort()
  return x.every((h, i) => h === y[i])
}

/** True once the server has acknowledged (in its sync messages) every change of this handle:
 * the repo records the server's heads per server storageId (`handle.getSyncInfo`). Returns
 * undefined if the server gave no storageId in its `peer` message (caller must fall back). */
export function serverHasHeads(client, handle) {
  const peer = client.repo.peers[0]
  if (!peer) return false
  const sid = client.repo.getStorageIdOfPeer(peer)
  if (!sid) return undefined
  const info = handle.getSyncInfo(sid)
  return !!info && sameHeads(info.lastHeads, handle.heads())
}

/** Wait until the server has this handle's current heads. With a server storageId, use the
 * repo's record of the server's heads; otherwise poll a fresh client until it sees the heads. */
export async function waitServerHas(client, handle, { timeoutMs = 15_000 } = {}) {
  const r = serverHasHeads(client, handle)
  if (r === undefined) {
    // A fresh client per attempt: a repo caches an "unavailable" answer for a document.
    const want = handle.heads()
    await waitFor(
      async () => {
        const probe = await connectedClient(client.wsUrl, "probe")
        try {
          const h = await probe.repo.find(handle.url, { signal: AbortSignal.timeout(3000) })
          await waitFor(() => want.every(x => h.heads().includes(x)), { timeoutMs: 1000, what: "probe heads" })
          return true
        } finally {
          await closeClient(probe)
        }
      },
      { timeoutMs, intervalMs: 200, what: `server to hold ${handle.url} (fresh-client probe)` }
    )
    return
  }
  try {
    await waitFor(() => serverHasHeads(client, handle), {
      timeoutMs,
      what: `server to acknowledge heads of ${handle.url}`,
    })
  } catch (e) {
    const peer = client.repo.peers[0]
    const sid = peer && client.repo.getStorageIdOfPeer(peer)
    const info = sid && handle.getSyncInfo(sid)
    e.message += ` [connected: ${!!peer}; server's last heads: ${JSON.stringify(info?.lastHeads ?? null)}; ours: ${JSON.stringify(handle.heads())}]`
    // Diagnose: did the server store the changes and only fail to tell us (no sync reply)?
    try {
      const want = handle.heads()
      const probe = await connectedClient(client.wsUrl, "diagnose", { timeoutMs: 3000 })
      try {
        const h = await probe.repo.find(handle.url, { signal: AbortSignal.timeout(3000) })
        await waitFor(() => sameHeads(h.heads(), want), { timeoutMs: 2000, what: "diagnose heads" })
        e.message += " — yet a fresh client DOES get exactly these heads from the server: it stored the changes but never sent this client a sync message with its new heads"
      } finally {
        await closeClient(probe)
      }
    } catch (e2) {
      e.message += ` — and a fresh client does not get these heads from the server either (${e2.message})`
    }
    throw e
  }
}
