//! The server's clock, read in one place: the shell passes the time into everything that judges
//! or records (admission, receipts, the audit trail), so tests can drive it.

/// Server clock, unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
