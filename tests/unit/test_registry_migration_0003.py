"""Migration 0003: providers created before Provider.number existed get theirs
(the Bisheng LLM API's server ids), in creation order; a number already held stays."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from switchboard_registry.migrate import alembic_config


def test_providers_get_stable_numbers_in_creation_order(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0002")
            start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
            for i, name in enumerate(["zeta", "alpha", "kept"]):
                spec = {"name": name, "number": 9} if name == "kept" else {"name": name}
                conn.execute(
                    sa.text(
                        "INSERT INTO providers (name, kind, spec, revision, create_time, "
                        "update_time) VALUES (:n, 'PROVIDER_KIND_OPENAI', :s, 1, :t, :t)"
                    ),
                    {"n": name, "s": json.dumps(spec), "t": start + dt.timedelta(i)},
                )
            command.upgrade(alembic_config(conn), "head")
            query = sa.text("SELECT name, json_extract(spec, '$.number') FROM providers")
            rows = {name: number for name, number in conn.execute(query)}
    finally:
        engine.dispose()
    assert rows == {"zeta": 1, "alpha": 2, "kept": 9}
