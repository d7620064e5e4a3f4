//! What every fuzz target shares: the two ways a panic is judged.
//!
//! libfuzzer-sys installs a panic hook that aborts the process on any panic, even one that
//! `sync_core::guard` catches and turns into an error, as the server and the devices do. So:
//!
//! - **Default** (CI and long runs): a panic contained by `sync_core::guard` is not a crash; a
//!   panic that escapes the target is. The first input replaces libfuzzer's hook with one that only
//!   records the panic (message and place), silently; a contained panic then unwinds to its
//!   `catch_unwind` as in production. [`run`] catches what escapes, runs the input once more to
//!   take the escaping panic's backtrace, prints it and aborts: libFuzzer reports a crash and
//!   saves the input.
//! - **Strict** (`DESA_FUZZ_STRICT=1`): libfuzzer's hook stays, and any panic, contained or not,
//!   is a crash. This finds automerge's panics on hostile input (which the project then contains,
//!   and keeps as regressions in `fuzz/regressions/<target>/`).

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::OnceLock;

/// The environment variable that selects strict mode (any value but empty or `0`).
pub const STRICT: &str = "DESA_FUZZ_STRICT";

thread_local! {
    /// The last panic of this thread, as the quiet hook saw it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether the quiet hook takes a backtrace too (slow: only when replaying an escape).
    static BACKTRACE: Cell<bool> = const { Cell::new(false) };
}

fn strict() -> bool {
    static MODE: OnceLock<bool> = OnceLock::new();
    *MODE.get_or_init(|| {
        let strict = std::env::var(STRICT).is_ok_and(|v| !v.is_empty() && v != "0");
        if strict {
            eprintln!(
                "desa-fuzz: strict mode ({STRICT}): any panic, even a contained one, is a crash"
            );
        } else {
            panic::set_hook(Box::new(record));
            eprintln!(
                "desa-fuzz: default mode: panics contained by sync_core::guard are not crashes"
            );
        }
        strict
    })
}

/// The quiet hook: remember the panic, print nothing (contained panics are expected and many).
fn record(info: &PanicHookInfo<'_>) {
    let message = info
        .payload_as_str()
        .unwrap_or("(a panic payload that is not a string)");
    let place = info.location().map_or_else(String::new, |l| {
        format!(" at {}:{}:{}", l.file(), l.line(), l.column())
    });
    let mut text = format!("panicked{place}:\n{message}");
    if BACKTRACE.get() {
        text.push_str(&format!("\nbacktrace:\n{}", Backtrace::force_capture()));
    }
    LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
}

/// Feed `data` to `target`, judging panics by the mode (see the crate's documentation).
pub fn run(data: &[u8], target: fn(&[u8])) {
    if strict() {
        target(data);
        return;
    }
    LAST_PANIC.with(|last| last.borrow_mut().take());
    if panic::catch_unwind(AssertUnwindSafe(|| target(data))).is_ok() {
        return;
    }
    let first = LAST_PANIC.with(|last| last.borrow_mut().take());
    eprintln!("desa-fuzz: a panic escaped the fuzz target (not contained by sync_core::guard):");
    eprintln!("{}", first.as_deref().unwrap_or("(no panic recorded)"));
    // Once more, for the backtrace of the escaping panic (the last one of the run).
    BACKTRACE.set(true);
    if panic::catch_unwind(AssertUnwindSafe(|| target(data))).is_err() {
        if let Some(again) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
            eprintln!("desa-fuzz: the same input again, with its backtrace:\n{again}");
        }
    }
    std::process::abort();
}
