"""A small versioned store of profiles and fitted interference models (SQLite, stdlib).

Default location ``$GPUSCHED_PROFILE_DB`` or ``~/.cache/gpusched/profiles.sqlite``. Rows are
keyed by (model, batch, device) and hold the profile as JSON; the schema version is SQLite's
``user_version``, and a store written by another version is refused with the fix.
"""
from __future__ import annotations

import os
import sqlite3
import time

import msgspec

from .profile import ModelProfile

SCHEMA_VERSION = 1


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
                    json TEXT NOT NULL, created REAL);""")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.commit()
        elif version != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has store version {version}, this gpusched reads "
                             f"{SCHEMA_VERSION}: move it away or set GPUSCHED_PROFILE_DB")

    def put(self, p: ModelProfile) -> None:
        self.db.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?)",
                        (p.model, p.batch, p.device, msgspec.json.encode(p).decode(), time.time()))
        self.db.commit()

    def get(self, model: str, batch: int, device: str) -> ModelProfile | None:
        row = self.db.execute("SELECT json FROM profiles WHERE model=? AND batch=? AND device=?",
                              (model, batch, device)).fetchone()
        return msgspec.json.decode(row[0], type=ModelProfile) if row else None

    def all(self) -> list[ModelProfile]:
        return [msgspec.json.decode(r[0], type=ModelProfile)
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
