//! Every input in `fuzz/regressions/<target>/` (crashers found by fuzzing, and hand-made edge cases)
//! goes through its target again on every test run: each must be handled without a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// A fuzz target: untrusted bytes in, nothing out, never a panic.
type Target = fn(&[u8]);

#[test]
fn fuzz_regressions_are_handled_cleanly() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let targets: [(&str, Target); 6] = [
        ("sync_request", sync_core::fuzzing::sync_request),
        ("sync_response", sync_core::fuzzing::sync_response),
        ("change", sync_core::fuzzing::change),
        ("stored_doc", sync_core::fuzzing::stored_doc),
        ("stored_row", sync_core::fuzzing::stored_row),
        ("ws_message", sync_core::fuzzing::ws_message),
    ];
    for (name, target) in targets {
        let dir = root.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{} panicked", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "no regression inputs for {name}");
    }
}
