"""The registry's service settings (seed 004's /api/config): the registry's
range checks naming the field, the surface's mapping both ways, and what the
services follow live (the root log level, the router's probe interval)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.config import LoadBalancingConfig
from switchboard_common.errors import SwitchboardError
from switchboard_common.logs import follow_log_level
from switchboard_registry.service_settings import validate
from switchboard_router.probes import Prober
from switchboard_router.surfaces.inference_manager_config import apply_body, config_body
from switchboard_router.surfaces.inference_manager_shapes import ValidationFailed


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (pb.ServiceSettings(gpu_monitor_interval_s=0), "settings.gpu_monitor_interval_s"),
        (pb.ServiceSettings(max_concurrent_models=1001), "settings.max_concurrent_models"),
        (pb.ServiceSettings(log_level="TRACE"), "settings.log_level"),
        (
            pb.ServiceSettings(alert_thresholds=pb.AlertThresholds(error_rate_high=1.5)),
            "settings.alert_thresholds.error_rate_high",
        ),
        (
            pb.ServiceSettings(
                alert_thresholds=pb.AlertThresholds(response_time_high=float("nan"))
            ),
            "settings.alert_thresholds.response_time_high",
        ),
    ],
)
def test_the_registry_names_the_bad_field(settings: pb.ServiceSettings, field: str) -> None:
    with pytest.raises(SwitchboardError) as caught:
        validate(settings)
    assert caught.value.param == field


def test_the_bounds_themselves_are_allowed() -> None:
    validate(
        pb.ServiceSettings(
            gpu_monitor_interval_s=1,
            max_concurrent_models=1000,
            default_model_timeout_s=86_400,
            health_check_interval_s=1,
            log_level="ERROR",
            alert_thresholds=pb.AlertThresholds(gpu_utilization_high=100, error_rate_high=0),
        )
    )


def test_a_put_merges_and_null_clears() -> None:
    settings = pb.ServiceSettings(max_concurrent_models=4, log_level="INFO")
    apply_body(
        settings,
        {
            "gpu_monitor_interval": 60,
            "log_level": None,
            "alert_thresholds": {"error_rate_high": 0.1},
        },
    )
    body = config_body(settings)
    assert body["gpu_monitor_interval"] == 60
    assert body["max_concurrent_models"] == 4
    assert body["log_level"] is None
    assert body["alert_thresholds"]["error_rate_high"] == 0.1
    assert body["alert_thresholds"]["gpu_utilization_high"] is None
    apply_body(settings, {"max_concurrent_models": None})
    assert not settings.HasField("max_concurrent_models")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_concurrent_models": True}, "max_concurrent_models"),
        ({"default_model_timeout": 2.5}, "default_model_timeout"),
        ({"log_level": 3}, "log_level"),
        (
            {"alert_thresholds": {"gpu_temperature_high": "hot"}},
            "alert_thresholds.gpu_temperature_high",
        ),
        ({"nope": 1}, "nope"),
    ],
)
def test_the_surface_refuses_wrong_types(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        apply_body(pb.ServiceSettings(), body)
    assert caught.value.param == field


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    yield
    root.setLevel(before)


@pytest.mark.usefixtures("root_level")
def test_the_log_level_follows_the_registry_and_returns() -> None:
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    # No level in the registry: the process keeps its own.
    follow_log_level("")
    assert root.level == logging.WARNING
    follow_log_level("DEBUG")
    assert root.level == logging.DEBUG
    follow_log_level("")
    # Back to the level the process started with (setup_logging's; INFO unless told).
    assert root.level == logging.INFO


def _router(balancing: LoadBalancingConfig | None, settings: pb.ServiceSettings) -> Any:
    config = SimpleNamespace(load_balancing=balancing)
    return SimpleNamespace(catalog=SimpleNamespace(config=config), service_settings=settings)


def test_the_probe_interval_comes_from_either_setting() -> None:
    none = Prober(cast(Any, _router(None, pb.ServiceSettings())))
    assert none.interval() == 0.0
    settings = pb.ServiceSettings(health_check_interval_s=60)
    assert Prober(cast(Any, _router(None, settings))).interval() == 60.0
    # The load-balancing setting's own interval is the more specific one.
    group = LoadBalancingConfig(group="auto", health_check_interval_s=5)
    assert Prober(cast(Any, _router(group, settings))).interval() == 5.0
