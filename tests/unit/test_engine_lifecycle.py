"""The engine lifecycle table, tasks, command lines and log parsing."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from switchboard_engine import commands, states
from switchboard_engine import logs as engine_logs
from switchboard_engine.settings import EngineSettings

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard.registry.v1 import registry_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_registry import validation

S = states
LIFECYCLE = [S.CREATED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.STARTING]


def test_the_documented_lifecycle_is_allowed() -> None:
    for current, new in itertools.pairwise(LIFECYCLE):
        states.check_transition(current, new)
    for current in (S.STARTING, S.RUNNING, S.STOPPING):
        states.check_transition(current, S.ERROR)
    states.check_transition(S.ERROR, S.STARTING)
    states.check_transition(S.RUNNING, S.STARTING)  # a crash being recovered


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.CREATED, S.RUNNING),
        (S.CREATED, S.STOPPING),
        (S.STOPPED, S.RUNNING),
        (S.STOPPED, S.STOPPING),
        (S.STOPPING, S.RUNNING),
        (S.STOPPING, S.STARTING),
        (S.RUNNING, S.STOPPED),
        (S.ERROR, S.RUNNING),
    ],
)
def test_shortcuts_are_refused(current: states.State, new: states.State) -> None:
    with pytest.raises(states.InvalidTransition, match="cannot go from"):
        states.check_transition(current, new)


def test_tasks_record_their_outcome_and_forget_the_oldest() -> None:
    tasks = states.Tasks(keep=2)
    first = tasks.create("m", pb.TASK_KIND_START)
    assert first.state == pb.TASK_STATE_PENDING
    assert tasks.get(first.id) is first
    states.Tasks.finish(first, S.ERROR, "boom")
    assert (first.state, first.error, first.engine_state) == (pb.TASK_STATE_FAILED, "boom", S.ERROR)
    second = tasks.create("m", pb.TASK_KIND_STOP)
    states.Tasks.finish(second, S.STOPPED)
    assert second.state == pb.TASK_STATE_SUCCEEDED
    assert second.end_time.ToDatetime() >= first.create_time.ToDatetime()
    tasks.create("m", pb.TASK_KIND_RESTART)
    with pytest.raises(SwitchboardError) as err:
        tasks.get(first.id)
    assert err.value.reason == R.ERROR_REASON_NOT_FOUND


def test_backoff_doubles_up_to_its_cap() -> None:
    s = EngineSettings(Path("/x"), "n", "127.0.0.1", "127.0.0.1", backoff_base_s=0.5)
    assert [s.backoff_s(a) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert s.backoff_s(20) == s.backoff_max_s


# -- command lines ----------------------------------------------------------------


def test_llama_cpp_command_line() -> None:
    config = cfg.EngineConfig(
        framework=cfg.ENGINE_FRAMEWORK_LLAMA_CPP,
        model_path="/models/smol.gguf",
        context_size=2048,
        threads=2,
        gpu_layers=99,
        extra_args=["--parallel", "4"],
        gpus=["0", "GPU-abc"],
    )
    launch = commands.command(
        config, name="smol", host="127.0.0.1", port=4321, binary_path=Path("/bin/llama-server")
    )
    assert launch.argv == [
        "/bin/llama-server",
        "--model",
        "/models/smol.gguf",
        "--host",
        "127.0.0.1",
        "--port",
        "4321",
        "--alias",
        "smol",
        "--log-timestamps",
        "--log-prefix",
        "--ctx-size",
        "2048",
        "--threads",
        "2",
        "--n-gpu-layers",
        "99",
        "--parallel",
        "4",
    ]
    assert launch.env == {"CUDA_VISIBLE_DEVICES": "0,GPU-abc"}


def test_llama_cpp_takes_the_node_arguments_make_engines_found(tmp_path: Path) -> None:
    (tmp_path / commands.NODE_ARGS_FILE).write_text('["--no-repack"]')
    config = cfg.EngineConfig(framework=cfg.ENGINE_FRAMEWORK_LLAMA_CPP, model_path="/m.gguf")
    launch = commands.command(
        config, name="m", host="h", port=1, binary_path=tmp_path / "llama-server"
    )
    assert launch.argv[-1] == "--no-repack"
    assert launch.argv[-2] == "--log-prefix"


def test_vllm_command_line() -> None:
    config = cfg.EngineConfig(
        framework=cfg.ENGINE_FRAMEWORK_VLLM,
        model_path="Qwen/Qwen2.5-0.5B-Instruct",
        context_size=4096,
        tensor_parallel_size=2,
        extra_args=["--gpu-memory-utilization", "0.5"],
    )
    launch = commands.command(
        config, name="qwen", host="0.0.0.0", port=8001, binary_path=Path("/v/bin/vllm")
    )
    assert launch.argv == [
        "/v/bin/vllm",
        "serve",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8001",
        "--served-model-name",
        "qwen",
        "--max-model-len",
        "4096",
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.5",
    ]
    assert launch.env == {}


def test_vllm_refuses_llama_cpp_settings() -> None:
    config = cfg.EngineConfig(framework=cfg.ENGINE_FRAMEWORK_VLLM, model_path="m", gpu_layers=10)
    with pytest.raises(SwitchboardError, match="gpu_layers"):
        commands.command(config, name="m", host="h", port=1, binary_path=Path("/v"))


def test_a_missing_llama_server_says_to_run_make_engines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SwitchboardError) as err:
        commands.binary(cfg.ENGINE_FRAMEWORK_LLAMA_CPP, llama_server=tmp_path / "nothing-here")
    assert err.value.reason == R.ERROR_REASON_FAILED_PRECONDITION
    assert "make engines" in err.value.message


def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    config = cfg.EngineConfig(
        framework=cfg.ENGINE_FRAMEWORK_LLAMA_CPP, model_path=str(tmp_path / "no.gguf")
    )
    with pytest.raises(SwitchboardError, match="does not exist"):
        commands.check_model_path(config)


# -- logs ---------------------------------------------------------------------------

T0 = dt.datetime(2026, 12, 6, 8, 0, 0, tzinfo=dt.UTC)


def test_llama_cpp_lines_count_from_the_launch() -> None:
    line = engine_logs.parse(
        "1.02.345.678 W srv  load_model: slow disk",
        started_at=T0.timestamp(),
        seen_at=T0 + dt.timedelta(hours=1),
    )
    assert line.level == pb.LOG_LEVEL_WARNING
    assert line.message == "srv  load_model: slow disk"
    assert line.time == T0 + dt.timedelta(seconds=62.345678)


def test_vllm_lines_carry_their_own_time() -> None:
    seen = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
    line = engine_logs.parse(
        "(APIServer pid=7) ERROR 12-06 08:59:58 [api_server.py:12] engine died",
        started_at=0,
        seen_at=seen,
    )
    assert line.level == pb.LOG_LEVEL_ERROR
    assert line.message == "engine died"
    local = dt.datetime(2026, 12, 6, 8, 59, 58).astimezone()
    assert line.time == local.astimezone(dt.UTC)


def test_plain_lines_get_a_level_from_their_words() -> None:
    error = engine_logs.parse("CUDA error: out of memory", started_at=0, seen_at=T0)
    assert (error.level, error.time) == (pb.LOG_LEVEL_ERROR, T0)
    info = engine_logs.parse("build: 1 (abc)", started_at=0, seen_at=T0)
    assert info.level == pb.LOG_LEVEL_INFO


def test_a_launch_marker_resets_the_clock() -> None:
    parser = engine_logs.Parser(started_at=0)
    marker = parser.parse(f"{engine_logs.MARKER} {T0.isoformat()} /bin/llama-server", T0)
    assert marker.time == T0
    after = parser.parse("0.01.000.000 I ready", T0)
    assert after.time == T0 + dt.timedelta(seconds=1)


def test_rotation_keeps_backups_and_tail_reaches_into_them(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("".join(f"old {i}\n" for i in range(10)))
    assert engine_logs.rotate_if_needed(log, max_bytes=10, backups=2)
    assert log.read_text() == ""
    assert (tmp_path / "engine.log.1").read_text().startswith("old 0\n")
    with log.open("a") as f:
        f.write("new 0\nnew 1\n")
    assert engine_logs.tail(log, 3) == ["old 9", "new 0", "new 1"]
    assert not engine_logs.rotate_if_needed(log, max_bytes=1000, backups=2)
    assert engine_logs.rotate_if_needed(log, max_bytes=1, backups=2)
    assert (tmp_path / "engine.log.2").read_text().startswith("old 0\n")
    assert (tmp_path / "engine.log.1").read_text() == "new 0\nnew 1\n"


# -- the registry's checks on Model.engine -------------------------------------------


@pytest.mark.parametrize(
    ("engine", "param"),
    [
        (cfg.EngineConfig(model_path="/m.gguf"), "model.engine.framework"),
        (cfg.EngineConfig(framework=cfg.ENGINE_FRAMEWORK_VLLM), "model.engine.model_path"),
        (
            cfg.EngineConfig(framework=cfg.ENGINE_FRAMEWORK_VLLM, model_path="m", gpus=["0 1"]),
            "model.engine.gpus[0]",
        ),
        (
            cfg.EngineConfig(framework=cfg.ENGINE_FRAMEWORK_VLLM, model_path="m", node="a/b"),
            "model.engine.node",
        ),
        (
            cfg.EngineConfig(
                framework=cfg.ENGINE_FRAMEWORK_LLAMA_CPP, model_path="m", start_timeout_s=-1
            ),
            "model.engine.start_timeout_s",
        ),
    ],
)
def test_the_registry_refuses_an_engine_config_naming_the_field(
    engine: cfg.EngineConfig, param: str
) -> None:
    model = registry_pb2.Model(name="m", kind=registry_pb2.MODEL_KIND_CHAT, engine=engine)
    with pytest.raises(SwitchboardError) as err:
        validation.model(model)
    assert err.value.param == param


def test_the_registry_accepts_a_complete_engine_config() -> None:
    engine = cfg.EngineConfig(
        framework=cfg.ENGINE_FRAMEWORK_VLLM, model_path="org/m", gpus=["0", "GPU-8f3c-aa"]
    )
    validation.model(registry_pb2.Model(name="m", kind=registry_pb2.MODEL_KIND_CHAT, engine=engine))
