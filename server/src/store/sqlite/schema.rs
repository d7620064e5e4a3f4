//! The database schema, and the steps from each older version to the current one.

/// Schema version (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// Version 3: who uploaded each change, held changes with their uploader, actors bound to their
/// first uploader, removed users.
///
/// Held changes stored by version 2 carry no uploader, and judging them with the access of
/// whoever completes them is exactly what version 3 forbids: they are dropped. Nothing is lost —
/// a device keeps a held change in its outbox and sends it again with its dependencies.
pub(super) const SCHEMA_V3: &str = r#"
ALTER TABLE changes ADD COLUMN device BLOB;
ALTER TABLE changes ADD COLUMN user TEXT;
DROP TABLE held;
CREATE TABLE held (
    report      BLOB NOT NULL,
    hash        BLOB NOT NULL,
    device      BLOB NOT NULL,
    since       INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (report, hash)
);
CREATE INDEX held_device ON held (device);
CREATE TABLE actors (
    actor       BLOB PRIMARY KEY,
    user        TEXT NOT NULL,
    device      BLOB NOT NULL,
    bound_at    INTEGER NOT NULL
);
ALTER TABLE users ADD COLUMN removed_at INTEGER;
"#;

/// Version 2: users, devices and the audit trail.
pub(super) const SCHEMA_V2: &str = r#"
CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    villages    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE devices (
    id          BLOB PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users (name),
    verifier    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
-- Bumped by every user or device change; servers poll it to notice revocations.
CREATE TABLE directory (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    version     INTEGER NOT NULL
);
INSERT INTO directory (id, version) VALUES (0, 0);
-- The audit trail: a keyed hash chain (server/src/audit.rs). Append-only: the triggers stop a
-- mistaken UPDATE or DELETE; the chain and its anchor catch a deliberate one.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    record      TEXT NOT NULL,
    mac         BLOB NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE reports (
    id          BLOB PRIMARY KEY,
    kind        TEXT NOT NULL,
    village     INTEGER NOT NULL,
    district    INTEGER NOT NULL,
    status      TEXT,
    title       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    json        TEXT NOT NULL,
    snapshot    BLOB NOT NULL,
    receipts    BLOB NOT NULL
);
CREATE INDEX reports_seq ON reports (last_seq, id);
CREATE INDEX reports_village ON reports (village, last_seq, id);
CREATE INDEX reports_village_status ON reports (village, status, last_seq, id);
CREATE INDEX reports_district ON reports (district, last_seq, id);
-- Every update rewrites each index that holds last_seq, so there are only as many as the device
-- feed and the common coordinator filters (village, village + status, district) need; kind, status
-- alone and updated_since filter along reports_seq.

-- Every accepted change: when it was received, and its bytes until a snapshot absorbs it.
CREATE TABLE changes (
    report      BLOB NOT NULL,
    hash        BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    bytes       BLOB,
    PRIMARY KEY (report, hash)
);
CREATE INDEX changes_tail ON changes (report) WHERE bytes IS NOT NULL;

-- automerge sync states of automerge-repo peers that have a storage id (bandwidth, not data).
CREATE TABLE peer_sync (
    storage_id  TEXT NOT NULL,
    report      BLOB NOT NULL,
    state       BLOB NOT NULL,
    PRIMARY KEY (storage_id, report)
);

-- Changes waiting for dependencies (replaced by version 3).
CREATE TABLE held (
    report      BLOB NOT NULL,
    n           INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (report, n)
);
"#;
