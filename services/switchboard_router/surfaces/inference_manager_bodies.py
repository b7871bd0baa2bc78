"""Seed API 004's model bodies, both ways: the document's create and update
bodies checked field by field (422 naming the field) and turned into the
engine's config (switchboard.registry.v1.EngineConfig) and the registry
model's fields; and an engine with its model rendered as the document's model.

The document's names and Switchboard's:
  framework "llama.cpp" | "vllm"       EngineConfig.framework
  config.model_path                    model_path
  config.n_ctx / n_threads / n_gpu_layers   context_size / threads / gpu_layers
  config.tensor_parallel_size (vllm)   tensor_parallel_size
  config.gpus (GPU uuids)              gpus
  config.extra_args                    extra_args
  config.temperature / top_p           the model's default parameters
  resource_requirements.gpu_memory (MiB) / memory (MiB)   resources.*_mib
  resource_requirements.cpu_cores      threads (when config.n_threads is not given)
"""

from __future__ import annotations

import re
from typing import Any

from switchboard.engine.v1 import engine_pb2 as epb
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard.registry.v1 import registry_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_router.surfaces.inference_manager_shapes import ValidationFailed, timestamp

FRAMEWORKS = {"llama.cpp": cfg.ENGINE_FRAMEWORK_LLAMA_CPP, "vllm": cfg.ENGINE_FRAMEWORK_VLLM}
FRAMEWORK_NAMES = {v: k for k, v in FRAMEWORKS.items()}
STATUSES = {
    epb.ENGINE_STATE_CREATED: "created",
    epb.ENGINE_STATE_STARTING: "starting",
    epb.ENGINE_STATE_RUNNING: "running",
    epb.ENGINE_STATE_STOPPING: "stopping",
    epb.ENGINE_STATE_STOPPED: "stopped",
    epb.ENGINE_STATE_ERROR: "error",
}
# The registry's model names (what clients call the model by).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_CREATE_FIELDS = {
    "name",
    "display_name",
    "description",
    "framework",
    "priority",
    "config",
    "resource_requirements",
    "tags",
}
_UPDATE_FIELDS = _CREATE_FIELDS - {"name", "framework"}
_CONFIG_FIELDS = {
    "model_path",
    "n_ctx",
    "n_threads",
    "n_gpu_layers",
    "tensor_parallel_size",
    "gpus",
    "extra_args",
    "temperature",
    "top_p",
    "start_timeout",
}
_RESOURCE_FIELDS = {"gpu_count", "gpu_memory", "memory", "cpu_cores"}


def _unknown(body: dict[str, Any], known: set[str], where: str) -> None:
    for key in body:
        if key not in known:
            raise ValidationFailed(f"{where}{key}", f"unknown field {where}{key}")


def _count(value: Any, field: str, *, most: int = 1 << 31) -> int:
    # JSON numbers reach here as floats (google.protobuf.Struct).
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValidationFailed(field, f"{field} must be a whole number")
    if not 0 <= value <= most:
        raise ValidationFailed(field, f"{field} must be between 0 and {most}")
    return int(value)


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValidationFailed(field, f"{field} must be a number between {low} and {high}")
    return float(value)


def _text(value: Any, field: str, most: int = 1000) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise ValidationFailed(field, f"{field} must be a string of at most {most} characters")
    return value


def _texts(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationFailed(field, f"{field} must be a list of strings")
    return list(value)


def name_of(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationFailed(
            "name", "name is required: letters, digits, '.', '_', ':' or '-', at most 128"
        )
    return name


def engine_config(
    body: dict[str, Any], base: cfg.EngineConfig | None = None
) -> tuple[cfg.EngineConfig, registry_pb2.DefaultParameters]:
    """The engine config (base with the body's changes) and sampling defaults."""
    config = cfg.EngineConfig()
    if base is not None:
        config.CopyFrom(base)
    defaults = registry_pb2.DefaultParameters()
    if "framework" in body:
        framework = (
            FRAMEWORKS.get(body["framework"]) if isinstance(body["framework"], str) else None
        )
        if framework is None:
            raise ValidationFailed("framework", "framework must be llama.cpp or vllm")
        config.framework = framework
    given = body.get("config", {})
    if not isinstance(given, dict):
        raise ValidationFailed("config", "config must be an object")
    _unknown(given, _CONFIG_FIELDS, "config.")
    if "model_path" in given:
        config.model_path = _text(given["model_path"], "config.model_path", 4096)
    if "n_ctx" in given:
        config.context_size = _count(given["n_ctx"], "config.n_ctx", most=1 << 24)
    if "n_threads" in given:
        config.threads = _count(given["n_threads"], "config.n_threads", most=1024)
    if "n_gpu_layers" in given:
        config.gpu_layers = _count(given["n_gpu_layers"], "config.n_gpu_layers", most=100_000)
    if "tensor_parallel_size" in given:
        config.tensor_parallel_size = _count(
            given["tensor_parallel_size"], "config.tensor_parallel_size", most=64
        )
    if "gpus" in given:
        config.ClearField("gpus")
        config.gpus.extend(_texts(given["gpus"], "config.gpus"))
    if "extra_args" in given:
        config.ClearField("extra_args")
        config.extra_args.extend(_texts(given["extra_args"], "config.extra_args"))
    if "start_timeout" in given:
        config.start_timeout_s = _number(given["start_timeout"], "config.start_timeout", 1, 3600)
    if "temperature" in given:
        defaults.temperature = _number(given["temperature"], "config.temperature", 0, 2)
    if "top_p" in given:
        defaults.top_p = _number(given["top_p"], "config.top_p", 0, 1)
    needs = body.get("resource_requirements", {})
    if not isinstance(needs, dict):
        raise ValidationFailed("resource_requirements", "resource_requirements must be an object")
    _unknown(needs, _RESOURCE_FIELDS, "resource_requirements.")
    if "gpu_memory" in needs:
        config.resources.gpu_memory_mib = _count(
            needs["gpu_memory"], "resource_requirements.gpu_memory"
        )
    if "memory" in needs:
        config.resources.memory_mib = _count(needs["memory"], "resource_requirements.memory")
    if "cpu_cores" in needs and "n_threads" not in given:
        config.threads = _count(needs["cpu_cores"], "resource_requirements.cpu_cores", most=1024)
    if "gpu_count" in needs:
        # GPUs are named (config.gpus); a count alone cannot pick them.
        count = _count(needs["gpu_count"], "resource_requirements.gpu_count", most=64)
        if count and len(config.gpus) != count:
            raise ValidationFailed(
                "resource_requirements.gpu_count",
                "gpu_count must match config.gpus (the GPU uuids the engine runs on)",
            )
    if not config.model_path:
        raise ValidationFailed("config.model_path", "config.model_path is required")
    return config, defaults


def checked_create(body: dict[str, Any]) -> None:
    _unknown(body, _CREATE_FIELDS, "")
    if "framework" not in body:
        raise ValidationFailed("framework", "framework is required (llama.cpp or vllm)")
    _common(body)


def checked_update(body: dict[str, Any]) -> None:
    _unknown(body, _UPDATE_FIELDS, "")
    _common(body)


def _common(body: dict[str, Any]) -> None:
    if "display_name" in body:
        _text(body["display_name"], "display_name", 200)
    if "description" in body:
        _text(body["description"], "description", 2000)
    if "tags" in body:
        _texts(body["tags"], "tags")
    if "priority" in body:
        _count(body["priority"], "priority", most=10)


def model_fields(body: dict[str, Any], model: registry_pb2.Model) -> list[str]:
    """Copy the registry's own fields from the body into model; the mask paths."""
    paths = []
    if "display_name" in body:
        model.display_name = body["display_name"]
        paths.append("display_name")
    if "description" in body:
        model.description = body["description"]
        paths.append("description")
    if "tags" in body:
        model.tags.extend(body["tags"])
        paths.append("tags")
    return paths


def rendered(
    engine: epb.Engine,
    model: registry_pb2.Model | None,
    performance: usage_pb2.ModelPerformance | None = None,
    *,
    detail: bool = False,
) -> dict[str, Any]:
    config = engine.config
    status = STATUSES.get(engine.state, "unknown")
    health = {"running": "healthy", "error": "unhealthy"}.get(status, "unknown")
    shown_config: dict[str, Any] = {"model_path": config.model_path}
    if config.context_size:
        shown_config["n_ctx"] = config.context_size
    if config.threads:
        shown_config["n_threads"] = config.threads
    if config.gpu_layers:
        shown_config["n_gpu_layers"] = config.gpu_layers
    if config.tensor_parallel_size:
        shown_config["tensor_parallel_size"] = config.tensor_parallel_size
    if config.gpus:
        shown_config["gpus"] = list(config.gpus)
    if config.extra_args:
        shown_config["extra_args"] = list(config.extra_args)
    usage = engine.usage
    out: dict[str, Any] = {
        "id": engine.name,
        "name": engine.name,
        "display_name": model.display_name if model else "",
        "framework": FRAMEWORK_NAMES.get(config.framework, "unknown"),
        "status": status,
        "health": health,
        "created_at": timestamp(model.create_time.ToDatetime()) if model else None,
        "updated_at": timestamp(engine.state_time.ToDatetime()),
        "config": shown_config,
        "resource_usage": {
            # MiB, as the document's gpu_memory figures.
            "gpu_memory": sum(g.used_mib for g in usage.gpu_memory),
            # Cores busy (percent of one core / 100).
            "cpu_cores": round(usage.cpu_percent / 100, 2),
            "memory": usage.rss_bytes // (1024 * 1024),
        },
    }
    if not detail:
        return out
    if model is not None and model.default_parameters.HasField("temperature"):
        shown_config["temperature"] = model.default_parameters.temperature
    if model is not None and model.default_parameters.HasField("top_p"):
        shown_config["top_p"] = model.default_parameters.top_p
    out["description"] = model.description if model else ""
    out["tags"] = list(model.tags) if model else []
    out["resource_requirements"] = {
        "gpu_count": len(config.gpus),
        "gpu_memory": config.resources.gpu_memory_mib,
        "memory": config.resources.memory_mib,
        "cpu_cores": config.threads,
    }
    out["performance_stats"] = {
        # Seconds, over the last hour of traffic (the usage ledger in ClickHouse).
        "avg_response_time": round(performance.latency_ms.average / 1000, 4) if performance else 0,
        "requests_per_second": round(performance.requests_per_second, 4) if performance else 0,
        "error_rate": round(performance.error_rate, 4) if performance else 0,
    }
    if engine.state_reason:
        out["status_reason"] = engine.state_reason
    return out
