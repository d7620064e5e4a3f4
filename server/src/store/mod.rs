//! The server's stores. The contract — [`ReportStore`], [`DirectoryStore`], [`AuditStore`] and
//! their records — is `sync_core::store`'s (re-exported here), so that the pure core and the
//! simulator read through the same traits; this module holds the implementations that do IO:
//! [`sqlite::SqliteStore`], the embedded default, encrypted with SQLCipher. The in-memory
//! reference store is [`memory::MemoryStore`].

mod cipher;
pub mod sqlite;

pub use sync_core::store::*;

/// SQLite's errors as the store's: `.sql()?` where `?` alone cannot convert (the error type is
/// the core's, and Rust's orphan rule forbids `From<rusqlite::Error>` for it here).
pub(crate) trait Sql<T> {
    /// The result, its error a [`StoreError::Database`] keeping SQLite's error as its source.
    fn sql(self) -> Result<T, StoreError>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T, StoreError> {
        self.map_err(StoreError::database)
    }
}
