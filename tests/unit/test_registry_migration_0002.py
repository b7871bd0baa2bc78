"""Upgrading a registry to the seed APIs' model fields: migration 0002 (the
settings table, and numbers for models created before Model.number existed, in
creation order) and config-file entry hashes that stay as they were."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from switchboard_common.config import ModelConfig
from switchboard_registry.bootstrap import entry_hash
from switchboard_registry.migrate import alembic_config


def test_models_get_stable_numbers_in_creation_order(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
            for i, name in enumerate(["zeta", "alpha", "kept"]):
                spec = {"name": name, "number": 7} if name == "kept" else {"name": name}
                conn.execute(
                    sa.text(
                        "INSERT INTO models (name, kind, online, spec, revision, "
                        "create_time, update_time) VALUES (:n, 'MODEL_KIND_CHAT', 1, :s, 1, :t, :t)"
                    ),
                    {"n": name, "s": json.dumps(spec), "t": start + dt.timedelta(i)},
                )
            command.upgrade(alembic_config(conn), "head")
            query = sa.text("SELECT name, json_extract(spec, '$.number') FROM models")
            rows = {name: number for name, number in conn.execute(query)}
            tables = set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert rows == {"zeta": 1, "alpha": 2, "kept": 7}
    assert "settings" in tables


def test_file_entries_hash_as_before_the_new_model_fields() -> None:
    """A registry that applied a config file before the catalogue fields existed
    must not see every model entry as edited after the upgrade (the file would
    then overwrite API edits); an entry that sets one of them does change."""
    entry = {"name": "m", "deployments": [{"provider": "p", "model": "u"}], "tags": ["x"]}
    plain = ModelConfig.model_validate(entry)
    # What 0.1.0 hashed: the entry's JSON without the fields it did not have.
    before = hashlib.sha256(
        plain.model_dump_json(
            exclude={"icon_url", "keyword", "release_date", "default_parameters", "number",
                     "created_at", "updated_at"}
        ).encode() + b"\0"
    ).hexdigest()  # fmt: skip
    assert entry_hash(plain) == before
    assert entry_hash(ModelConfig.model_validate({**entry, "keyword": "k"})) != before
