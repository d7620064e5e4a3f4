// Writes the fixtures of sync-core's `changes_of` tests: automerge 3 (JS) sends several changes in
// one sync message as a document chunk (automerge 3.5 sends the whole document). Here: a document
// of one change (`base.automerge`), and the chunk that carries the four changes made after it to a
// peer that has it. Run from tests/js:  node document-chunks.mjs
import * as A from "@automerge/automerge";
import { writeFileSync } from "node:fs";

const out = new URL("../../sync-core/src/protocol/fixtures/", import.meta.url);
const actor = "0123456789abcdef0123456789abcdef";
let doc = A.from({ title: "first" }, { actor, time: 0 });
const base = A.save(doc);
const edit = (d, title) => A.change(d, { time: 0 }, (x) => { x.title = title; });

// A peer that has `base`, kept in sync with `doc` message by message, as automerge-repo does:
// every document chunk `doc` sends it is collected.
let peer = A.load(base);
let ours = A.initSyncState();
let theirs = A.initSyncState();
function sync(expect = true) {
  const chunks = [];
  for (let round = 0; round < 10; round++) {
    let message;
    [theirs, message] = A.generateSyncMessage(peer, theirs);
    if (message) [doc, ours] = A.receiveSyncMessage(doc, ours, message);
    let answer;
    [ours, answer] = A.generateSyncMessage(doc, ours);
    if (answer) {
      chunks.push(...A.decodeSyncMessage(answer).changes);
      [peer, theirs] = A.receiveSyncMessage(peer, theirs, answer);
    }
    if (!message && !answer) break;
  }
  if (!expect) return null;
  if (chunks.length !== 1 || chunks[0][8] !== 0) throw new Error(`expected one document chunk, got ${chunks.length}`);
  return chunks[0];
}

sync(false); // the first exchange only tells each side what the other has
for (const title of ["two", "three", "four", "five"]) doc = edit(doc, title);
const partial = sync();

writeFileSync(new URL("base.automerge", out), base);
writeFileSync(new URL("document-after-base.chunk", out), partial);
console.log("fixtures written:", base.length, partial.length, "bytes");
