"""A small versioned store of profiles and fitted interference models (SQLite, stdlib).

Default location ``$GPUSCHED_PROFILE_DB`` or ``~/.cache/gpusched/profiles.sqlite``. Rows are
keyed by (model, batch, device) and hold the profile as JSON; its per-kernel rows
(``ModelProfile.ops``: one per aten op in launch order, from whichever source made the profile)
go to the ``kernels`` table under the same key, one SQL row per kernel. The schema version is
SQLite's ``user_version``; a version-1 store (no ``kernels`` table) is upgraded in place, and a
store written by another version is refused with the fix.
"""
from __future__ import annotations

import os
import sqlite3
import time

import msgspec

from profilers.op_profile import OpTiming
from profilers.profile import ModelProfile

SCHEMA_VERSION = 2
_KERNELS = """CREATE TABLE IF NOT EXISTS kernels (model TEXT, batch INTEGER, device TEXT,
    idx INTEGER, name TEXT NOT NULL, kind TEXT NOT NULL, time_us REAL NOT NULL, flops REAL,
    bytes REAL, PRIMARY KEY (model, batch, device, idx));"""


def default_path() -> str:
    return os.environ.get("GPUSCHED_PROFILE_DB") or os.path.join(
        os.path.expanduser("~"), ".cache", "gpusched", "profiles.sqlite")


class ProfileStore:
    def __init__(self, path: str | None = None):
        self.path = path or default_path()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.db = sqlite3.connect(self.path)
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self.db.executescript("""
                CREATE TABLE IF NOT EXISTS profiles (model TEXT, batch INTEGER, device TEXT,
                    json TEXT NOT NULL, created REAL, PRIMARY KEY (model, batch, device));
                CREATE TABLE IF NOT EXISTS interference (device TEXT PRIMARY KEY,
                    json TEXT NOT NULL, created REAL);""" + _KERNELS)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.commit()
        elif version == 1:  # version 1 had no per-kernel rows: add their table
            self.db.executescript(_KERNELS)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.commit()
        elif version != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has store version {version}, this gpusched reads "
                             f"{SCHEMA_VERSION}: move it away or set GPUSCHED_PROFILE_DB")

    def put(self, p: ModelProfile) -> None:
        key = (p.model, p.batch, p.device)
        head = msgspec.structs.replace(p, ops=())
        with self.db:  # one transaction: the profile and its kernels together
            self.db.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?)",
                            (*key, msgspec.json.encode(head).decode(), time.time()))
            self.db.execute("DELETE FROM kernels WHERE model=? AND batch=? AND device=?", key)
            self.db.executemany("INSERT INTO kernels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(*key, o.index, o.name, o.kind, o.time_us, o.flops, o.bytes)
                                 for o in p.ops])

    def kernels(self, model: str, batch: int, device: str) -> list[OpTiming]:
        """The per-kernel rows of one profile, in launch order (empty if none are stored)."""
        rows = self.db.execute("SELECT idx, name, kind, time_us, flops, bytes FROM kernels "
                               "WHERE model=? AND batch=? AND device=? ORDER BY idx",
                               (model, batch, device))
        return [OpTiming(*r) for r in rows]

    def _with_ops(self, js: str) -> ModelProfile:
        p = msgspec.json.decode(js, type=ModelProfile)
        return msgspec.structs.replace(p, ops=tuple(self.kernels(p.model, p.batch, p.device)))

    def get(self, model: str, batch: int, device: str) -> ModelProfile | None:
        row = self.db.execute("SELECT json FROM profiles WHERE model=? AND batch=? AND device=?",
                              (model, batch, device)).fetchone()
        return self._with_ops(row[0]) if row else None

    def all(self) -> list[ModelProfile]:
        return [self._with_ops(r[0])
                for r in self.db.execute("SELECT json FROM profiles ORDER BY model, batch, device")]

    def put_interference(self, device: str, model: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO interference VALUES (?, ?, ?)",
                        (device, msgspec.json.encode(model).decode(), time.time()))
        self.db.commit()

    def get_interference(self, device: str) -> dict | None:
        row = self.db.execute("SELECT json FROM interference WHERE device=?", (device,)).fetchone()
        return msgspec.json.decode(row[0]) if row else None

    def close(self) -> None:
        self.db.close()
