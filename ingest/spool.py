"""The durable local spool: a SQLite database in WAL mode, one per live process.

Every event is appended here before it is handed to Kafka and deleted once Kafka has
acknowledged it, so the spool is the hook's write-ahead log: a process killed with SIGKILL
loses only events still in the in-memory queue, and the next process that opens the same
spool folder replays what was left, in order, with the original event ids.

A process claims one spool file with an exclusive `flock` on its companion lock file; a
file whose lock is free was left by a process that ended: the next process claims one such
file and moves the rows of any others into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    waited INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class SpoolRow:
    id: int
    topic: str
    key: bytes | None
    value: bytes
    waited: bool


class Spool:
    """Append, read in order, delete when acknowledged; bounded by events and bytes."""

    def __init__(self, directory: Path, *, max_events: int, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.path, self._lock_fd = _claim(directory)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a committed append survives a process crash; only power loss can undo it.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self.adopted = self._adopt_orphans(directory)
        """Events taken over from other spool files left by ended processes."""
        count, size, top = self._db.execute(
            "SELECT count(*), coalesce(sum(length(value)), 0), coalesce(max(id), 0) FROM events"
        ).fetchone()
        self.count: int = count
        self.bytes: int = size
        self.inherited_upto: int = top
        """Rows with an id up to this were left by an earlier process."""
        self._closed = False

    def _adopt_orphans(self, directory: Path) -> int:
        """Move the rows of every other unclaimed spool file into this one, then delete it.

        Several processes that ended with events pending leave several files; one new
        process replays them all.
        """
        adopted = 0
        for other in sorted(directory.glob("spool-*.sqlite")):
            if other == self.path:
                continue
            fd = _try_lock(other.with_suffix(".lock"))
            if fd is None:
                continue  # a live process owns it
            try:
                self._db.execute("ATTACH DATABASE ? AS orphan", (str(other),))
                try:
                    has_events = self._db.execute(
                        "SELECT count(*) FROM orphan.sqlite_master WHERE type = 'table' AND name = 'events'"
                    ).fetchone()[0]
                    if has_events:
                        self._db.execute("BEGIN")
                        cursor = self._db.execute(
                            "INSERT INTO events (topic, key, value, waited) "
                            "SELECT topic, key, value, 1 FROM orphan.events ORDER BY id"
                        )
                        self._db.execute("COMMIT")
                        adopted += cursor.rowcount
                finally:
                    self._db.execute("DETACH DATABASE orphan")
                for leftover in (other, Path(f"{other}-wal"), Path(f"{other}-shm"), other.with_suffix(".lock")):
                    leftover.unlink(missing_ok=True)
            except sqlite3.Error:
                continue  # unreadable: leave it for a human, never delete events
            finally:
                os.close(fd)
        return adopted

    def append(self, rows: list[tuple[str, bytes | None, bytes, bool]]) -> int:
        """Append in order as far as the bound allows; returns how many were stored."""
        with self._lock:
            room = self.max_events - self.count
            taken: list[tuple[str, bytes | None, bytes, int]] = []
            size = self.bytes
            for topic, key, value, waited in rows:
                if len(taken) >= room or size + len(value) > self.max_bytes:
                    break
                taken.append((topic, key, value, int(waited)))
                size += len(value)
            if taken:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO events (topic, key, value, waited) VALUES (?, ?, ?, ?)", taken)
                self._db.execute("COMMIT")
                self.count += len(taken)
                self.bytes = size
            return len(taken)

    def read_after(self, after_id: int, limit: int) -> list[SpoolRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, value, waited FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpoolRow(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def read_ids(self, ids: list[int]) -> list[SpoolRow]:
        out: list[SpoolRow] = []
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                out.extend(
                    SpoolRow(r[0], r[1], r[2], r[3], bool(r[4]))
                    for r in self._db.execute(
                        f"SELECT id, topic, key, value, waited FROM events WHERE id IN ({marks}) ORDER BY id",
                        chunk,
                    )
                )
        return out

    def delete(self, ids: list[int], sizes: int) -> None:
        """Forget acknowledged rows; `sizes` is the sum of their value lengths."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                self._db.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self._db.execute("COMMIT")
            self.count -= len(ids)
            self.bytes -= sizes

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
        os.close(self._lock_fd)

    def abandon_after_fork(self) -> None:
        """In a forked child: let go of the parent's spool without touching it.

        Closing the inherited SQLite connection could checkpoint or delete the parent's WAL,
        so it is kept alive, unused, for the life of the child; the inherited lock file
        descriptor is closed (the parent still holds the lock through its own).
        """
        _ABANDONED.append(self._db)
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


_ABANDONED: list[sqlite3.Connection] = []


def _claim(directory: Path) -> tuple[Path, int]:
    for candidate in sorted(directory.glob("spool-*.sqlite")):
        fd = _try_lock(candidate.with_suffix(".lock"))
        if fd is not None:
            return candidate, fd
    while True:
        candidate = directory / f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.sqlite"
        fd = _try_lock(candidate.with_suffix(".lock"))
        if fd is not None:
            return candidate, fd


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
