"""`switchboard` argument parsing: every command, its validation (exit 2), options
before or after the command, and where the edge and keys come from."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from switchboard_cli.__main__ import main
from switchboard_cli.exit_codes import CliError, ExitCode
from switchboard_cli.parser import build_parser
from switchboard_cli.target import normalise_edge_url, resolve


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_models_add_takes_every_field() -> None:
    args = parse(
        "models",
        "add",
        "llama-3",
        "--provider",
        "local-vllm",
        "--upstream-model",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "--alias",
        "llama",
        "--alias",
        "l3",
        "--kind",
        "embedding",
        "--description",
        "self-hosted",
        "--input-per-1k",
        "0.1",
        "--output-per-1k",
        "0.2",
    )
    assert args.handler == "switchboard_cli.commands.models:add"
    assert (args.name, args.provider) == ("llama-3", "local-vllm")
    assert args.upstream_model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert args.alias == ["llama", "l3"]
    assert args.kind == "embedding"
    assert (args.input_per_1k, args.output_per_1k) == (0.1, 0.2)
    assert args.offline is False


def test_models_list_filters() -> None:
    args = parse("models", "list", "--status", "online", "--tag", "local", "--provider", "p")
    assert args.handler == "switchboard_cli.commands.models:list_models"
    assert (args.status, args.tag, args.provider) == ("online", "local", "p")
    assert parse("models", "list").status == "all"


@pytest.mark.parametrize(
    ("argv", "handler"),
    [
        (["up"], "stack:up"),
        (["down"], "stack:down"),
        (["status"], "stack:status"),
        (["models", "enable", "m"], "models:enable"),
        (["models", "disable", "m"], "models:disable"),
        (["models", "defaults"], "models:defaults"),
        (["models", "activate", "m", "--use", "rerank"], "models:activate"),
        (["keys", "revoke", "k"], "keys:revoke"),
        (["keys", "list", "--all"], "keys:list_keys"),
        (["usage", "summary"], "usage:summary"),
        (["gpu", "status"], "gpu:status"),
        (["gpu", "watch", "--count", "3"], "gpu:watch"),
        (["chat", "hi", "--model", "m", "--no-stream"], "chat:chat"),
    ],
)
def test_every_command_names_its_handler(argv: list[str], handler: str) -> None:
    assert parse(*argv).handler == f"switchboard_cli.commands.{handler}"


def test_keys_create_limits_and_models() -> None:
    args = parse(
        "keys", "create", "team-a", "--model", "a", "--model", "b", "--rpm", "600", "--tpm", "9"
    )
    assert args.models == ["a", "b"]
    assert (args.rpm, args.tpm, args.budget) == (600, 9, 0.0)


def test_usage_dates_are_parsed() -> None:
    args = parse("usage", "summary", "--start", "2025-01-01", "--end", "2025-01-31")
    assert (args.start, args.end) == (dt.date(2025, 1, 1), dt.date(2025, 1, 31))


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "add", "x", "--provider", "p"],  # --upstream-model is required
        ["models", "add", "x", "--provider", "p", "--upstream-model", "m", "--kind", "video"],
        ["models", "add", "x", "--provider", "p", "--upstream-model", "m", "--input-per-1k", "-1"],
        ["models", "list", "--status", "sleeping"],
        ["keys", "create", "k", "--rpm", "-5"],
        ["keys", "create", "k", "--rpm", "ten"],
        ["keys", "create", "k", "--tpm", str(2**32)],
        ["keys", "create", "k", "--budget", "nan"],
        ["chat", "hi"],  # --model is required
        ["chat", "hi", "-m", "x", "--max-tokens", "0"],
        ["usage", "summary", "--start", "2025-1-1"],
        ["usage", "summary", "--start", "yesterday"],
        ["gpu", "watch", "--count", "0"],
        ["--timeout", "0", "status"],
        ["nonsense"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == ExitCode.USAGE
    assert "error:" in capsys.readouterr().err


def test_common_options_go_before_or_after_the_command() -> None:
    before = parse("--edge-url", "http://h:1", "--json", "models", "list")
    after = parse("models", "list", "--edge-url", "http://h:1", "--json")
    middle = parse("models", "--json", "list", "--edge-url", "http://h:1")
    for args in (before, after, middle):
        assert args.edge_url == "http://h:1"
        assert args.json is True
    assert not hasattr(parse("models", "list"), "edge_url")


def test_a_group_without_a_command_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == ExitCode.USAGE
    assert "enable" in capsys.readouterr().err
    assert main([]) == ExitCode.USAGE


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--help")
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
        assert f"\n  {code}" in out


def test_the_edge_comes_from_flags_then_environment_then_the_edge_port() -> None:
    env = {"SWITCHBOARD_EDGE_PORT": "18080", "SWITCHBOARD_ADMIN_KEY": "adm"}
    assert resolve(env).edge_url == "http://127.0.0.1:18080"
    assert resolve({}).edge_url == "http://127.0.0.1:8080"
    env["SWITCHBOARD_EDGE_URL"] = "https://gw.example.com/"
    assert resolve(env).edge_url == "https://gw.example.com"
    assert resolve(env, edge_url="http://other:9/v1").edge_url == "http://other:9"
    assert resolve(env).admin_key == "adm"
    assert resolve(env, admin_key="flag").admin_key == "flag"
    assert resolve({"SWITCHBOARD_API_KEY": "sb-x"}).api_key == "sb-x"
    assert resolve({}).api_key is None


def test_keys_never_show_in_the_target_repr() -> None:
    target = resolve({"SWITCHBOARD_ADMIN_KEY": "s3cret", "SWITCHBOARD_API_KEY": "sb-s3cret"})
    assert "s3cret" not in repr(target)


def test_timeouts_default_per_command() -> None:
    assert resolve({}).timeout() == 30
    assert resolve({}).timeout(120) == 120
    assert resolve({}, timeout_s=5).timeout(120) == 5


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "http://", "ftp://host", "http://[::1"])
def test_an_edge_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    with pytest.raises(CliError) as raised:
        normalise_edge_url(url)
    assert raised.value.code == ExitCode.USAGE
    assert "--edge-url http://127.0.0.1:8080" in (raised.value.hint or "")


def test_main_reports_a_bad_edge_url_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "list", "--edge-url", "localhost:8080"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "is not an http(s) URL" in err
    assert "Traceback" not in err


def test_admin_commands_without_an_admin_key_say_which_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SWITCHBOARD_ADMIN_KEY", raising=False)
    assert main(["models", "list"]) == ExitCode.AUTH
    err = capsys.readouterr().err
    assert "the admin API needs SWITCHBOARD_ADMIN_KEY" in err
    assert "--admin-key" in err
