"""Pricing, the migration files and the outbox, without servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from switchboard.usage.v1 import usage_pb2
from switchboard_common.config import PricingConfig
from switchboard_usage.migrations import MigrationError, discover
from switchboard_usage.pricing import price


def _record(prompt: int, completion: int, cached: int = 0) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        event_id="e1", prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached
    )


def test_price_is_exact_nanos() -> None:
    pricing = PricingConfig(input_per_1k=0.00015, output_per_1k=0.0006)
    event = price(_record(1000, 500), pricing)
    assert event.input_cost_nanos == 150_000  # 0.00015 USD
    assert event.output_cost_nanos == 300_000
    assert event.total_cost_nanos == 450_000
    assert event.currency == "USD"


def test_cached_tokens_use_the_cached_rate() -> None:
    pricing = PricingConfig(input_per_1k=1.0, output_per_1k=0.0, cached_input_per_1k=0.1)
    event = price(_record(1000, 0, cached=400), pricing)
    assert event.input_cost_nanos == 600_000_000 + 40_000_000


def test_unpriced_model_costs_nothing() -> None:
    assert price(_record(10, 10), None).total_cost_nanos == 0


def test_sums_of_many_small_costs_do_not_drift() -> None:
    pricing = PricingConfig(input_per_1k=0.0001, output_per_1k=0.0003)
    total = sum(price(_record(7, 3), pricing).total_cost_nanos for _ in range(10_000))
    assert total == 10_000 * (700 + 900)


def test_shipped_migrations_are_numbered_and_split() -> None:
    # Package data, found through importlib.resources: no repository path involved.
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.statements() for m in migrations)
    assert not any("--" in s.splitlines()[0] for m in migrations for s in m.statements())


def test_shipped_migrations_are_idempotent_statements() -> None:
    """Applying a statement twice changes nothing, so a migration interrupted
    halfway (before the ledger row) can simply run again."""
    idempotent = re.compile(
        r"^(CREATE (TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS|CREATE OR REPLACE VIEW"
        r"|DROP (TABLE|VIEW) IF EXISTS"
        r"|ALTER TABLE \w+ (MODIFY SETTING|ADD COLUMN IF NOT EXISTS))\b"
    )
    for migration in discover():
        for statement in migration.statements():
            assert idempotent.match(" ".join(statement.split())), (migration.name, statement)


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


def test_checksum_changes_with_the_sql(tmp_path: Path) -> None:
    path = tmp_path / "0001_a.sql"
    path.write_text("SELECT 1;")
    before = discover(tmp_path)[0].checksum
    path.write_text("SELECT 2;")
    assert discover(tmp_path)[0].checksum != before
