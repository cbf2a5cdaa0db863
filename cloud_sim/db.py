"""SQLite persistence of the credential cloud.

One connection, used only from the event loop thread. Every query is a few
rows on a local file, so running it inline is simpler than a thread pool and
costs microseconds; it also makes each handler's reads and writes atomic with
respect to other requests, since nothing awaits in between. WAL lets the
``phonekey cloud issuer`` command read the same file while a server runs.

Revocations are per vehicle: the list holds
``protocol.credentials.revocation_id(vehicle_id, key_id)``, so an owner's
revocation never reaches a phone's enrollment on another owner's vehicle.

Bearer tokens are stored only as SHA-256: a leaked database does not leak
owner accounts (the tokens are 256-bit random, so no salt or slow hash is
needed).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from protocol import credentials, crypto

SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS issuer (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    private_key_pem BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS issuer_rotations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rotation BLOB NOT NULL,                -- encoded IssuerRotation, signed by the old key
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vehicles (
    vehicle_id TEXT PRIMARY KEY,           -- lowercase hex key id of the vehicle key
    vin TEXT NOT NULL,
    card TEXT NOT NULL,
    owner_token_sha256 TEXT NOT NULL UNIQUE,
    registered_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollments (
    vehicle_id TEXT NOT NULL REFERENCES vehicles (vehicle_id),
    key_id TEXT NOT NULL,                  -- lowercase hex key id of the phone key
    holder_key TEXT NOT NULL,              -- compressed point, hex
    role TEXT NOT NULL CHECK (role IN ('driver', 'guest')),
    enrolled_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, key_id)
);
CREATE TABLE IF NOT EXISTS credentials (
    serial INTEGER PRIMARY KEY AUTOINCREMENT,
    vehicle_id TEXT NOT NULL,
    holder_key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revocation_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL            -- issued_at of the list at this version
);
CREATE TABLE IF NOT EXISTS revocations (
    revocation_id TEXT PRIMARY KEY,        -- hex revocation_id(vehicle_id, key_id)
    vehicle_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,              -- the list version that added it
    revoked_at INTEGER NOT NULL,
    UNIQUE (vehicle_id, key_id)
);
"""


class DatabaseError(Exception):
    """The database file cannot be used (wrong schema, unreadable key, ...)."""


@dataclass(frozen=True)
class Vehicle:
    vehicle_id: str
    vin: str
    card: str


@dataclass(frozen=True)
class Enrollment:
    vehicle_id: str
    key_id: str
    holder_key: str
    role: str
    enrolled_at: int
    revoked: bool


@dataclass(frozen=True)
class RevocationState:
    version: int
    issued_at: int
    revoked: list[bytes]  # revocation ids


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class CloudDB:
    def __init__(self, path: str | Path) -> None:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a
        # read-modify-write (revocation version bump) holds the write lock
        # from its first read, even against another process.
        self._conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise DatabaseError(f"cannot use {path} as the cloud database: {exc}") from None

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        # A deferred transaction: several SELECTs see one consistent state.
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version not in (0, 1, SCHEMA_VERSION):
            raise DatabaseError(
                f"database schema version {version}, this build reads 1 and {SCHEMA_VERSION}"
            )
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO revocation_state (id, version, updated_at) VALUES (1, 0, ?)",
                (int(time.time()),),
            )
            if version == 1:
                _migrate_issuer_wide_revocations(conn, int(time.time()))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- issuer key ---------------------------------------------------------------
    def issuer_key(self) -> crypto.PrivateKey:
        """The issuer's signing key, generated on first use.

        A real service keeps this key in an HSM and only ever sends it
        messages to sign; a simulator storing the PEM in its database is the
        honest shortcut. INSERT OR IGNORE makes two processes racing on a new
        file agree on one key.
        """
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO issuer (id, private_key_pem, created_at) VALUES (1, ?, ?)",
                (crypto.private_key_to_pem(crypto.generate_private_key()), int(time.time())),
            )
            (pem,) = conn.execute("SELECT private_key_pem FROM issuer WHERE id = 1").fetchone()
        try:
            return crypto.private_key_from_pem(bytes(pem))
        except ValueError as exc:
            raise DatabaseError(f"the stored issuer key is unusable: {exc}") from None

    def rotate_issuer(self, now: int) -> credentials.IssuerRotation:
        """Make a fresh issuer key the signing key, and keep the old key's
        signed statement that the new one succeeds it (``issuer_rotations``).

        Vehicles learn the new key from phones carrying that statement; they
        keep the old key too, so credentials it issued stay valid until they
        expire. The old private key is dropped: it signs nothing more. A
        running server keeps the key it loaded at start, so rotate with the
        cloud stopped (or restart it).
        """
        self.issuer_key()  # a new database gets its first key before rotating it
        new_key = crypto.generate_private_key()
        with self._write() as conn:
            (pem,) = conn.execute("SELECT private_key_pem FROM issuer WHERE id = 1").fetchone()
            try:
                old_key = crypto.private_key_from_pem(bytes(pem))
            except ValueError as exc:
                raise DatabaseError(f"the stored issuer key is unusable: {exc}") from None
            rotation = credentials.issue_issuer_rotation(old_key, new_key.public_key(), now)
            conn.execute(
                "INSERT INTO issuer_rotations (rotation, created_at) VALUES (?, ?)",
                (rotation.to_bytes(), now),
            )
            conn.execute(
                "UPDATE issuer SET private_key_pem = ?, created_at = ? WHERE id = 1",
                (crypto.private_key_to_pem(new_key), now),
            )
        return rotation

    def issuer_rotations(self) -> list[bytes]:
        """Every encoded ``IssuerRotation`` the issuer made, oldest first."""
        rows = self._conn.execute("SELECT rotation FROM issuer_rotations ORDER BY seq").fetchall()
        return [bytes(row[0]) for row in rows]

    # --- vehicles -------------------------------------------------------------------
    def add_vehicle(self, vehicle: Vehicle, token_sha256: str, now: int) -> bool:
        """Register ``vehicle``; False if it is already registered."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO vehicles "
                "(vehicle_id, vin, card, owner_token_sha256, registered_at) VALUES (?, ?, ?, ?, ?)",
                (vehicle.vehicle_id, vehicle.vin, vehicle.card, token_sha256, now),
            )
            return cursor.rowcount == 1

    def vehicle(self, vehicle_id: str) -> Vehicle | None:
        row = self._conn.execute(
            "SELECT vehicle_id, vin, card FROM vehicles WHERE vehicle_id = ?", (vehicle_id,)
        ).fetchone()
        return Vehicle(*row) if row else None

    def vehicle_for_token(self, token_sha256: str) -> str | None:
        """The vehicle id whose owner holds the token with this hash."""
        row = self._conn.execute(
            "SELECT vehicle_id FROM vehicles WHERE owner_token_sha256 = ?", (token_sha256,)
        ).fetchone()
        return str(row[0]) if row else None

    # --- enrollments ------------------------------------------------------------------
    def enrollment(self, vehicle_id: str, key_id: str) -> Enrollment | None:
        row = self._conn.execute(
            "SELECT vehicle_id, key_id, holder_key, role, enrolled_at, revoked "
            "FROM enrollments WHERE vehicle_id = ? AND key_id = ?",
            (vehicle_id, key_id),
        ).fetchone()
        if row is None:
            return None
        vid, key_id, holder_key, role, enrolled_at, revoked = row
        return Enrollment(vid, key_id, holder_key, role, int(enrolled_at), bool(revoked))

    def enroll(self, enrollment: Enrollment) -> bool:
        """Add ``enrollment``; False if the key is already enrolled for the vehicle."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO enrollments "
                "(vehicle_id, key_id, holder_key, role, enrolled_at, revoked) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    enrollment.vehicle_id,
                    enrollment.key_id,
                    enrollment.holder_key,
                    enrollment.role,
                    enrollment.enrolled_at,
                    int(enrollment.revoked),
                ),
            )
            return cursor.rowcount == 1

    # --- credentials --------------------------------------------------------------------
    def record_credential(
        self, vehicle_id: str, holder_key_id: str, role: str, not_before: int, not_after: int
    ) -> int:
        """Log a credential about to be issued and return its serial number."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO credentials "
                "(vehicle_id, holder_key_id, role, not_before, not_after, issued_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (vehicle_id, holder_key_id, role, not_before, not_after, int(time.time())),
            )
            serial = cursor.lastrowid
        assert serial is not None  # an INSERT into a rowid table always sets it
        return serial

    # --- revocations --------------------------------------------------------------------
    def revoke(self, vehicle_id: str, key_id: str, now: int) -> int:
        """Mark the enrollment revoked and put ``revocation_id(vehicle_id, key_id)``
        on the revocation list: the key is revoked on this vehicle only.

        Returns the list version; it grows by one only if the entry is new to
        the list, so repeating a revocation is harmless. The same key revoked
        on another vehicle is another entry.
        """
        with self._write() as conn:
            conn.execute(
                "UPDATE enrollments SET revoked = 1 WHERE vehicle_id = ? AND key_id = ?",
                (vehicle_id, key_id),
            )
            return _add_revocation(conn, vehicle_id, key_id, now)

    def is_revoked(self, vehicle_id: str, key_id: str) -> bool:
        """True if ``key_id`` is on the revocation list for ``vehicle_id``."""
        row = self._conn.execute(
            "SELECT 1 FROM revocations WHERE vehicle_id = ? AND key_id = ?", (vehicle_id, key_id)
        )
        return row.fetchone() is not None

    def revocation_version(self) -> int:
        (version,) = self._conn.execute(
            "SELECT version FROM revocation_state WHERE id = 1"
        ).fetchone()
        return int(version)

    def revocations(self) -> RevocationState:
        """The current list: version, the time it reached that version, revocation ids."""
        with self._snapshot() as conn:
            version, updated_at = conn.execute(
                "SELECT version, updated_at FROM revocation_state WHERE id = 1"
            ).fetchone()
            rows = conn.execute(
                "SELECT revocation_id FROM revocations ORDER BY revocation_id"
            ).fetchall()
        return RevocationState(int(version), int(updated_at), [bytes.fromhex(r[0]) for r in rows])

    def revoked_between(self, from_version: int, to_version: int) -> list[bytes]:
        """Revocation ids added after ``from_version`` up to ``to_version``, oldest first."""
        rows = self._conn.execute(
            "SELECT revocation_id FROM revocations WHERE version > ? AND version <= ? "
            "ORDER BY version",
            (from_version, to_version),
        ).fetchall()
        return [bytes.fromhex(r[0]) for r in rows]


def revocation_id_hex(vehicle_id: str, key_id: str) -> str:
    """``protocol.credentials.revocation_id`` of two hex ids, as hex."""
    return credentials.revocation_id(bytes.fromhex(vehicle_id), bytes.fromhex(key_id)).hex()


def _add_revocation(conn: sqlite3.Connection, vehicle_id: str, key_id: str, now: int) -> int:
    """Inside a write transaction: list (vehicle, key) at the next version, once."""
    (version,) = conn.execute("SELECT version FROM revocation_state WHERE id = 1").fetchone()
    cursor = conn.execute(
        "INSERT OR IGNORE INTO revocations "
        "(revocation_id, vehicle_id, key_id, version, revoked_at) VALUES (?, ?, ?, ?, ?)",
        (revocation_id_hex(vehicle_id, key_id), vehicle_id, key_id, version + 1, now),
    )
    if cursor.rowcount == 1:
        version += 1
        conn.execute(
            "UPDATE revocation_state SET version = ?, updated_at = ? WHERE id = 1",
            (version, now),
        )
    return int(version)


def _migrate_issuer_wide_revocations(conn: sqlite3.Connection, now: int) -> None:
    """Schema 1 listed raw key ids, which revoked a key on every vehicle.

    Re-list each revoked enrollment as its per-vehicle revocation id, each at
    a new version above the current one (so vehicles holding the old list get
    the entries as deltas), and drop the raw key ids.
    """
    rows = conn.execute(
        "SELECT e.vehicle_id, e.key_id FROM revoked_keys r "
        "JOIN enrollments e ON e.key_id = r.key_id AND e.revoked = 1 "
        "ORDER BY r.version, e.vehicle_id"
    ).fetchall()
    for vehicle_id, key_id in rows:
        _add_revocation(conn, vehicle_id, key_id, now)
    conn.execute("DROP TABLE revoked_keys")
