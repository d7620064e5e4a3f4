#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| desa_fuzz::run(data, sync_core::fuzzing::stored_doc));
