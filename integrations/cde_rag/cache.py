"""Persistent embedding cache: re-indexing unchanged chunks under one context re-embeds nothing.

Vectors live in one SQLite file (WAL mode, busy timeout), so several threads and processes can
share it; values are raw little-endian float32 bytes, never pickles. Keys hash everything the
vector depends on: the context fingerprint (which includes the model's), the compute dtype, the
input type and the text.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import CDEError

SCHEMA_VERSION = "1"
# Stay well under SQLite's limit on bound parameters per statement.
_CHUNK = 500


class EmbeddingCache:
    """A key -> float32 vector store in a SQLite file, with hit/miss counters.

    One connection per process, guarded by a lock: lookups cost milliseconds next to seconds
    of embedding, and a lock keeps the counters and the connection simple and safe.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0):
        self.path = Path(path).expanduser()
        self.timeout = timeout
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        with self._lock:
            self._connection()

    @staticmethod
    def key(namespace: str, input_type: str, text: str) -> bytes:
        """The key for one text: a SHA-256 over the namespace, input type and text."""
        digest = hashlib.sha256(f"{namespace}\0{input_type}\0".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.digest()

    def get_many(self, keys: Sequence[bytes], dim: int) -> dict[bytes, np.ndarray]:
        """The stored vectors of width `dim` among `keys`; counts a hit or miss per key."""
        unique = list(dict.fromkeys(keys))
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            conn = self._connection()
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                rows = conn.execute(
                    "SELECT key, vector FROM embeddings WHERE dim = ? AND key IN "
                    f"({','.join('?' * len(chunk))})",
                    (dim, *chunk),
                ).fetchall()
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
                    # A damaged or hand-edited row is a miss: computed again, never returned.
                    if vector.shape == (dim,) and np.isfinite(vector).all():
                        found[bytes(key)] = vector
            hits = sum(1 for key in keys if key in found)
            self.hits += hits
            self.misses += len(keys) - hits
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Store vectors; an existing key keeps its value (same inputs give the same vector)."""
        rows = [
            (key, int(vec.shape[0]), np.ascontiguousarray(vec, dtype="<f4").tobytes())
            for key, vec in items
        ]
        if not rows:
            return
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO embeddings (key, dim, vector) VALUES (?, ?, ?)", rows
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def clear(self) -> None:
        """Forget every stored vector (counters too)."""
        with self._lock:
            self._connection().execute("DELETE FROM embeddings")
            self.hits = self.misses = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"

    def _connection(self) -> sqlite3.Connection:
        """The open connection, (re)opened in this process; call with the lock held."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=self.timeout, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, "
                "dim INTEGER NOT NULL, vector BLOB NOT NULL) WITHOUT ROWID"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            (version,) = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise CDEError(
                f"Cannot use {self.path} as an embedding cache ({exc}). Pass a writable file "
                "path (it is created if missing), or None to turn the cache off."
            ) from exc
        if version != SCHEMA_VERSION:
            conn.close()
            raise CDEError(
                f"{self.path} is an embedding cache of schema {version}, this cde-rag writes "
                f"schema {SCHEMA_VERSION}: delete the file or choose another path."
            )
        self._conn, self._pid = conn, os.getpid()
        return conn
