"""Seed 004's shapes: paging, the error body and codes, and the model bodies
checked field by field and mapped to the engine's config."""

from __future__ import annotations

from typing import Any

import pytest

from switchboard.engine.v1 import engine_pb2 as epb
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.surfaces import inference_manager_bodies as bodies
from switchboard_router.surfaces.inference_manager_shapes import (
    ValidationFailed,
    error,
    page_of,
)


def test_paging() -> None:
    items = list(range(45))
    assert page_of(items, 0, 0) == {
        "items": items[:20],
        "total": 45,
        "page": 1,
        "size": 20,
        "pages": 3,
    }
    last = page_of(items, 3, 20)
    assert last["items"] == items[40:]
    assert page_of(items, 9, 100)["items"] == []
    assert page_of([], 1, 10)["pages"] == 0
    for page, size, field in ((1, 101, "size"), (-1, 10, "page"), (1, -5, "size")):
        with pytest.raises(ValidationFailed) as exc:
            page_of(items, page, size)
        assert exc.value.param == field


@pytest.mark.parametrize(
    ("reason", "status", "code"),
    [
        (R.ERROR_REASON_MODEL_NOT_FOUND, 404, "MODEL_NOT_FOUND"),
        (R.ERROR_REASON_NOT_FOUND, 404, "MODEL_NOT_FOUND"),
        (R.ERROR_REASON_ALREADY_EXISTS, 409, "MODEL_ALREADY_EXISTS"),
        (R.ERROR_REASON_MODEL_NOT_RUNNING, 503, "MODEL_NOT_RUNNING"),
        (R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT, 503, "MODEL_NOT_RUNNING"),
        (R.ERROR_REASON_INSUFFICIENT_RESOURCES, 409, "INSUFFICIENT_RESOURCES"),
        (R.ERROR_REASON_UPSTREAM_TIMEOUT, 504, "OPERATION_TIMEOUT"),
        (R.ERROR_REASON_MISSING_API_KEY, 401, "AUTHENTICATION_FAILED"),
        (R.ERROR_REASON_PERMISSION_DENIED, 403, "AUTHORIZATION_FAILED"),
        (R.ERROR_REASON_INVALID_REQUEST, 400, "INVALID_REQUEST"),
        (R.ERROR_REASON_INTERNAL, 500, "INTERNAL_ERROR"),
    ],
)
def test_error_codes(reason: Any, status: int, code: str) -> None:
    got_status, body = error(SwitchboardError(reason, "secret detail"), model_id="m-1")
    assert got_status == status
    assert body["error"]["code"] == code
    assert body["error"]["details"] == {"model_id": "m-1"}
    assert set(body) == {"error", "timestamp", "path"}
    # Internal details never leave.
    assert (body["error"]["message"] == "internal error") == (status == 500)


def test_a_validation_failure_is_422_naming_the_field() -> None:
    status, body = error(ValidationFailed("config.n_ctx", "config.n_ctx must be a whole number"))
    assert status == 422
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert body["error"]["details"] == {"field": "config.n_ctx"}


def _create(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "my-model",
        "framework": "llama.cpp",
        "config": {"model_path": "/models/model.gguf", "n_ctx": 2048.0, "n_gpu_layers": 32.0},
        "resource_requirements": {"gpu_memory": 4096.0, "cpu_cores": 4.0},
    }
    body.update(changes)
    return body


def test_the_create_body_maps_to_the_engine_config() -> None:
    body = _create(config={"model_path": "/m.gguf", "n_ctx": 2048.0, "temperature": 0.8})
    bodies.checked_create(body)
    config, defaults = bodies.engine_config(body)
    assert config.framework == cfg.ENGINE_FRAMEWORK_LLAMA_CPP
    assert (config.model_path, config.context_size, config.threads) == ("/m.gguf", 2048, 4)
    assert config.resources.gpu_memory_mib == 4096
    assert defaults.temperature == 0.8
    engine = epb.Engine(name="my-model", config=config, state=epb.ENGINE_STATE_RUNNING)
    shown = bodies.rendered(engine, None, detail=True)
    assert shown["status"] == "running"
    assert shown["health"] == "healthy"
    assert shown["config"] == {"model_path": "/m.gguf", "n_ctx": 2048, "n_threads": 4}
    assert shown["resource_requirements"]["gpu_memory"] == 4096


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_create(name=""), "name"),
        (_create(name="has space"), "name"),
        (_create(framework="onnx"), "framework"),
        (_create(config={}), "config.model_path"),
        (_create(config={"model_path": "/m", "n_ctx": 1.5}), "config.n_ctx"),
        (_create(config={"model_path": "/m", "n_ctx": -1.0}), "config.n_ctx"),
        (_create(config={"model_path": "/m", "top_p": 2.0}), "config.top_p"),
        (_create(config={"model_path": "/m", "bogus": 1.0}), "config.bogus"),
        (_create(resource_requirements={"gpu_count": 2.0}), "resource_requirements.gpu_count"),
        (_create(tags="chat"), "tags"),
        (_create(priority=11.0), "priority"),
        (_create(colour="red"), "colour"),
    ],
)
def test_invalid_bodies_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        bodies.checked_create(body)
        bodies.name_of(body)
        bodies.engine_config(body)
    assert exc.value.param == field
