//! What automerge is never given: bytes whose decoding costs far more than their size.
//!
//! `catch_unwind` contains a panic, not time or memory. automerge 0.12 inflates deflated data
//! without a bound (a compressed change chunk; a document's deflated columns), so a 16 MiB upload
//! could ask for gigabytes; and it expands a *bundle*'s run-length columns before checking them:
//! the fuzz targets found bundles of 28–39 bytes that take 2–60 s and 0.2–2 GB to load
//! (`fuzz/regressions/*/…bundle…`). [`chunks`] walks the chunks of untrusted bytes before automerge
//! sees them, inflating nothing into memory, and refuses:
//!
//! - a bundle: no peer of this product sends one (the automerge sync protocol carries changes and
//!   documents; bundles are an experimental storage format);
//! - deflated data that inflates to more than [`MAX_INFLATED`] bytes, all chunks together;
//! - anything that is not a sequence of whole chunks (automerge would refuse it too).
//!
//! It reads only the framing: a chunk that passes may still be refused by automerge.

use std::io::Read;

/// The most that the deflated parts of one input may inflate to, together. A report's whole
/// history is a few hundred KiB; the server takes bodies of at most 16 MiB.
pub const MAX_INFLATED: u64 = 64 << 20;

/// Why bytes were refused before automerge saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a sequence of whole automerge chunks.
    #[error("not automerge data: {0}")]
    Malformed(&'static str),
    /// An automerge bundle.
    #[error("automerge bundles are not accepted")]
    Bundle,
    /// A sync message's `have` bloom filter that automerge cannot use safely.
    #[error("not an automerge sync message: {0}")]
    Bloom(&'static str),
    /// Deflated data that inflates past [`MAX_INFLATED`].
    #[error("deflated data inflates to more than {} MiB", MAX_INFLATED >> 20)]
    Inflates,
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// A document chunk: a whole document, or (automerge 3) some of one.
pub(crate) const DOCUMENT: u8 = 0;
/// One change.
pub(crate) const CHANGE: u8 = 1;
/// One change, deflated.
pub(crate) const COMPRESSED: u8 = 2;
/// Several changes compressed together (refused).
pub(crate) const BUNDLE: u8 = 3;
/// The bit of a column specification that says its data is deflated.
const DEFLATED: u64 = 0b1000;
const HASH_BYTES: usize = 32;

/// Check the automerge chunks in `bytes` (see the module documentation). Empty bytes pass: they
/// load as an empty document.
pub fn chunks(bytes: &[u8]) -> Result<(), Refused> {
    all([bytes])
}

/// [`chunks`] of several inputs that are decoded together (a sync message's changes): the bound on
/// inflated bytes is on all of them.
pub fn all<'a>(inputs: impl IntoIterator<Item = &'a [u8]>) -> Result<(), Refused> {
    let mut inflated = 0;
    inputs
        .into_iter()
        .try_for_each(|bytes| walk(bytes, &mut inflated))
}

/// The most `have` entries a sync message may carry: automerge sends one per sync it remembers
/// with the peer, in practice one.
pub const MAX_HAVES: usize = 16;
/// The most probes per hash a `have` bloom filter may ask for (automerge uses 7).
pub const MAX_PROBES: u64 = 64;

/// An automerge sync message before the server answers it: its changes as [`all`], and its `have`
/// bloom filters, which automerge 0.12 trusts — one with entries but no bits divides by zero, one
/// with 2³²−1 probes allocates 16 GiB (`fuzz/regressions/ws_message/have-bloom-*`).
pub fn sync_message(message: &automerge::sync::Message) -> Result<(), Refused> {
    if message.have.len() > MAX_HAVES {
        return Err(Refused::Bloom("too many have entries"));
    }
    for have in &message.have {
        let bytes = have.bloom.to_bytes();
        let rest = &mut bytes.as_slice();
        if rest.is_empty() {
            continue;
        }
        let (_entries, _bits_per_entry, probes) = (uleb(rest)?, uleb(rest)?, uleb(rest)?);
        if rest.is_empty() {
            return Err(Refused::Bloom("a bloom filter with entries but no bits"));
        }
        if probes == 0 || probes > MAX_PROBES {
            return Err(Refused::Bloom("a bloom filter probe count out of range"));
        }
    }
    all(message.changes.iter())
}

fn walk(bytes: &[u8], inflated: &mut u64) -> Result<(), Refused> {
    for chunk in split(bytes)? {
        match chunk.kind {
            CHANGE => {}
            COMPRESSED => inflate(chunk.body, inflated)?,
            DOCUMENT => document(chunk.body, inflated)?,
            BUNDLE => return Err(Refused::Bundle),
            _ => return Err(Refused::Malformed("unknown chunk type")),
        }
    }
    Ok(())
}

/// One automerge chunk: magic (4 bytes), checksum (4), type (1), length (unsigned LEB128), then
/// that many bytes of body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk<'a> {
    /// The chunk's type: [`DOCUMENT`], [`CHANGE`], [`COMPRESSED`] or [`BUNDLE`] (or unknown).
    pub(crate) kind: u8,
    /// The whole chunk, header included.
    pub(crate) bytes: &'a [u8],
    /// The chunk's body.
    pub(crate) body: &'a [u8],
}

/// The chunks of `bytes`, which must be whole chunks end to end (automerge 0.12's V2 sync
/// messages concatenate change chunks into one entry; a saved document is followed by changes).
pub(crate) fn split(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, Refused> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (kind, body, after) = chunk(rest)?;
        out.push(Chunk {
            kind,
            bytes: &rest[..rest.len() - after.len()],
            body,
        });
        rest = after;
    }
    Ok(out)
}

/// The first chunk of `bytes`: its type, its body, and what follows it.
fn chunk(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), Refused> {
    let rest = bytes
        .strip_prefix(&MAGIC)
        .ok_or(Refused::Malformed("no chunk magic bytes"))?;
    // Four bytes of checksum (automerge checks it), then the type.
    let (&kind, mut rest) = rest
        .get(4..)
        .and_then(<[u8]>::split_first)
        .ok_or(Refused::Malformed("a cut chunk header"))?;
    let len = uleb(&mut rest)?;
    let body = take(&mut rest, len)?;
    Ok((kind, body, rest))
}

/// A document chunk: actors, heads, the change and op column descriptions, then their data, of
/// which any column may be deflated.
fn document(mut body: &[u8], inflated: &mut u64) -> Result<(), Refused> {
    let rest = &mut body;
    for _ in 0..uleb(rest)? {
        let len = uleb(rest)?;
        take(rest, len)?;
    }
    let heads = uleb(rest)?;
    take(rest, heads.saturating_mul(HASH_BYTES as u64))?;
    let changes = columns(rest)?;
    let ops = columns(rest)?;
    for (spec, len) in changes.into_iter().chain(ops) {
        let data = take(rest, len)?;
        if spec & DEFLATED != 0 {
            inflate(data, inflated)?;
        }
    }
    // What follows (the heads' indices) is automerge's to read.
    Ok(())
}

/// A column description: how many columns, then each one's specification and data length.
fn columns(rest: &mut &[u8]) -> Result<Vec<(u64, u64)>, Refused> {
    let count = uleb(rest)?;
    // Every column takes at least two bytes to describe: the count cannot outrun the input.
    if count > rest.len() as u64 / 2 {
        return Err(Refused::Malformed("more columns than bytes"));
    }
    (0..count).map(|_| Ok((uleb(rest)?, uleb(rest)?))).collect()
}

/// Inflate `data` without keeping it, adding its size to `inflated`; refuse past the bound.
fn inflate(data: &[u8], inflated: &mut u64) -> Result<(), Refused> {
    let room = MAX_INFLATED - *inflated;
    let mut inflater = flate2::bufread::DeflateDecoder::new(data).take(room + 1);
    let size = std::io::copy(&mut inflater, &mut std::io::sink())
        .map_err(|_| Refused::Malformed("deflated data that does not inflate"))?;
    if size > room {
        return Err(Refused::Inflates);
    }
    *inflated += size;
    Ok(())
}

/// `len` bytes from the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], len: u64) -> Result<&'a [u8], Refused> {
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= rest.len())
        .ok_or(Refused::Malformed("a length past the end"))?;
    let (taken, after) = rest.split_at(len);
    *rest = after;
    Ok(taken)
}

/// An unsigned LEB128 number from the front of `rest`.
fn uleb(rest: &mut &[u8]) -> Result<u64, Refused> {
    let mut value = 0u64;
    for (i, &byte) in rest.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && bits > 1 {
            break;
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Ok(value);
        }
    }
    Err(Refused::Malformed("a bad LEB128 number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};
    use std::io::Write;

    fn uleb_bytes(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn deflated_zeros(size: usize) -> Vec<u8> {
        let mut deflater =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            deflater.write_all(&block[..n]).expect("test setup");
            left -= n;
        }
        deflater.finish().expect("test setup")
    }

    fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(kind);
        uleb_bytes(body.len() as u64, &mut out);
        out.extend(body);
        out
    }

    /// A document whose text is long enough that automerge deflates its columns.
    fn big_document() -> AutoCommit {
        let mut doc = AutoCommit::new();
        let text = doc
            .put_object(ROOT, "narrative", automerge::ObjType::Text)
            .expect("test setup");
        for i in 0..200 {
            doc.splice_text(&text, 0, 0, &format!("line {i} of a long narrative\n"))
                .expect("test setup");
            doc.commit();
        }
        doc
    }

    #[test]
    fn what_automerge_writes_passes() {
        let mut doc = big_document();
        let saved = doc.save();
        assert!(chunks(&saved).is_ok());
        // A saved document, then changes after it, as the stores keep them.
        let mut more = saved.clone();
        doc.put(ROOT, "status", "reviewed").expect("test setup");
        doc.commit();
        more.extend(doc.save_incremental());
        assert!(chunks(&more).is_ok());
        // Every change alone, compressed or not.
        for change in doc.get_changes(&[]) {
            assert!(chunks(change.raw_bytes()).is_ok());
            let mut change = change.clone();
            assert!(chunks(change.bytes().as_ref()).is_ok());
        }
        assert!(chunks(&[]).is_ok());
    }

    #[test]
    fn the_document_really_has_deflated_columns() {
        // Otherwise the test above would not cover them.
        let saved = big_document().save();
        let (kind, body, _) = chunk(&saved).expect("test setup");
        assert_eq!(kind, DOCUMENT);
        let mut inflated = 0;
        document(body, &mut inflated).expect("test setup");
        assert!(inflated > 0, "no deflated column in a saved document");
    }

    #[test]
    fn bundles_are_refused() {
        let mut doc = big_document();
        let hashes: Vec<_> = doc.get_changes(&[]).iter().map(|c| c.hash()).collect();
        let bundle = doc.document().bundle(hashes).expect("test setup");
        assert_eq!(chunks(bundle.bytes()), Err(Refused::Bundle));
        let mut after = big_document().save();
        after.extend(bundle.bytes());
        assert_eq!(chunks(&after), Err(Refused::Bundle));
    }

    #[test]
    fn a_compressed_change_that_inflates_past_the_bound_is_refused() {
        let bomb = framed(COMPRESSED, &deflated_zeros(MAX_INFLATED as usize + 1));
        assert!(bomb.len() < 100 << 10, "{} bytes", bomb.len());
        assert_eq!(chunks(&bomb), Err(Refused::Inflates));
        // Every decoder of untrusted bytes screens first.
        let refused = Err(crate::guard::Contained::Refused(Refused::Inflates));
        assert_eq!(
            crate::guard::parse_change(bomb.clone()).map(|_| ()),
            refused
        );
        assert_eq!(crate::guard::load(&bomb).map(|_| ()), refused);
        let fine = framed(COMPRESSED, &deflated_zeros(1 << 20));
        assert!(chunks(&fine).is_ok());
        // The bound is on all chunks together.
        let half = framed(COMPRESSED, &deflated_zeros(MAX_INFLATED as usize / 2 + 1));
        assert_eq!(
            chunks(&[half.clone(), half].concat()),
            Err(Refused::Inflates)
        );
    }

    #[test]
    fn a_document_column_that_inflates_past_the_bound_is_refused() {
        let data = deflated_zeros(MAX_INFLATED as usize + 1);
        let mut body = Vec::new();
        uleb_bytes(0, &mut body); // actors
        uleb_bytes(0, &mut body); // heads
        uleb_bytes(1, &mut body); // one change column…
        uleb_bytes((1 << 4) | DEFLATED | 2, &mut body); // …deflated
        uleb_bytes(data.len() as u64, &mut body);
        uleb_bytes(0, &mut body); // no op columns
        body.extend(&data);
        assert_eq!(chunks(&framed(DOCUMENT, &body)), Err(Refused::Inflates));
    }

    fn sync_data(frame: &[u8]) -> automerge::sync::Message {
        match crate::protocol::repo::RepoMessage::decode(frame).expect("test setup") {
            crate::protocol::repo::RepoMessage::Sync { data, .. } => {
                automerge::sync::Message::decode(&data).expect("test setup")
            }
            other => panic!("not a sync message: {other:?}"),
        }
    }

    #[test]
    fn hostile_bloom_filters_are_refused_and_automerge_s_own_pass() {
        let dir = "../fuzz/regressions/ws_message/";
        for name in [
            "have-bloom-without-bits-divides-by-zero",
            "have-bloom-divides-by-zero-found-by-fuzzing",
            "have-bloom-with-4-billion-probes-exhausts-memory",
        ] {
            let frame = std::fs::read(format!("{}/{dir}{name}", env!("CARGO_MANIFEST_DIR")))
                .expect("test setup");
            let message = sync_data(&frame);
            assert!(
                matches!(sync_message(&message), Err(Refused::Bloom(_))),
                "{name}"
            );
            let refused = crate::guard::sync_message(&message.encode());
            assert!(matches!(refused, Err(crate::guard::Contained::Refused(_))));
        }
        // automerge's own, in a whole exchange between two documents that both have changes
        // (so their `have` filters have entries), every message screened on the way.
        use automerge::sync::SyncDoc;
        let mut ours = big_document().document().clone();
        let mut theirs = AutoCommit::new();
        theirs.put(ROOT, "status", "new").expect("test setup");
        theirs.commit();
        let mut theirs = theirs.document().clone();
        let (mut our_state, mut their_state) =
            (automerge::sync::State::new(), automerge::sync::State::new());
        let mut filters = 0;
        for _ in 0..10 {
            let to_them = ours.generate_sync_message(&mut our_state);
            let to_us = theirs.generate_sync_message(&mut their_state);
            if to_them.is_none() && to_us.is_none() {
                break;
            }
            for (message, doc, state) in [
                (to_them, &mut theirs, &mut their_state),
                (to_us, &mut ours, &mut our_state),
            ] {
                let Some(message) = message else { continue };
                assert_eq!(sync_message(&message), Ok(()));
                filters += message
                    .have
                    .iter()
                    .filter(|h| !h.bloom.to_bytes().is_empty())
                    .count();
                doc.receive_sync_message(state, message)
                    .expect("test setup");
            }
        }
        assert_eq!(ours.get_heads(), theirs.get_heads());
        assert!(filters > 0, "no message had a bloom filter to screen");
    }

    #[test]
    fn cut_or_foreign_bytes_are_malformed() {
        let saved = big_document().save();
        for cut in [1, 4, 9, 10, saved.len() / 2, saved.len() - 1] {
            assert!(
                matches!(chunks(&saved[..cut]), Err(Refused::Malformed(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            chunks(b"{\"json\":1}"),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            chunks(&framed(9, b"")),
            Err(Refused::Malformed(_))
        ));
        let mut huge_count = Vec::new();
        uleb_bytes(0, &mut huge_count);
        uleb_bytes(0, &mut huge_count);
        uleb_bytes(u64::MAX, &mut huge_count);
        assert!(matches!(
            chunks(&framed(DOCUMENT, &huge_count)),
            Err(Refused::Malformed(_))
        ));
    }
}
