"""Each service's image installs the shared dependencies plus its own extra
(pyproject's optional-dependencies; deploy/docker/Dockerfile --build-arg
SERVICE=...). Each service, imported with every other service's own packages
made unimportable, must start importing: the router's image carries no chdb,
no NVML and no upstream SDK, and nothing it imports needs them."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest

from switchboard_stack.harness import REPO

SERVICES = ("router", "provider", "registry", "usage", "gpu", "engine")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]

# A blocked import fails as a package that is not installed would.
_BLOCK = """
import importlib, importlib.abc, sys
blocked = set(sys.argv[2].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ModuleNotFoundError(f"No module named {name!r} (not in this image)", name=name)
        return None
sys.meta_path.insert(0, Absent())
"""
_CHECK = (
    _BLOCK
    + """
for module in ("__main__", "service"):
    importlib.import_module(f"switchboard_{sys.argv[1]}.{module}")
"""
)


def _distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return match[0].lower().replace("_", "-")


def _modules(dist: str) -> set[str]:
    """The importable names a distribution installs: its top-level packages and
    modules, or, inside a namespace shared with others (google.*), the package
    under it (google.genai, not google)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    paths = [f.parts for f in files if f.suffix in (".py", ".so") and ".." not in f.parts]
    names = set()
    for parts in paths:
        if parts[0].endswith((".dist-info", ".data")) or parts[0] == "bin":
            continue
        if len(parts) == 1:
            names.add(parts[0].split(".")[0])
        elif (parts[0], "__init__.py") in {(q[0], q[1]) for q in paths if len(q) == 2}:
            names.add(parts[0])
        elif len(parts) > 2:
            names.add(f"{parts[0]}.{parts[1]}")
    return names


def _own(service: str) -> set[str]:
    return {_distribution(r) for r in EXTRAS[service]}


def _blocked(service: str) -> set[str]:
    """The modules of other services' extras that this service's do not name."""
    shared = {_distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    others = set().union(*(_own(s) for s in SERVICES if s != service))
    names = set().union(*(_modules(d) for d in others - _own(service) - shared))
    return {m for m in names if not m.startswith("switchboard")}


def test_every_service_has_an_extra_and_all_names_each() -> None:
    (everything,) = EXTRAS["all"]
    assert everything == f"switchboard[{','.join(SERVICES)}]"


def test_the_router_image_holds_no_chdb_nvml_or_upstream_sdk() -> None:
    blocked = _blocked("router")
    assert {"chdb", "pynvml", "openai", "anthropic", "google.genai", "sqlalchemy"} <= blocked


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_its_own_extra(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, service, ",".join(sorted(_blocked(service)))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


# The router with the provider in its process (SWITCHBOARD_PROVIDER_PLACEMENT=router).
_EMBED = (
    _BLOCK
    + """
import asyncio
from switchboard_router.provider_link import embedded_provider
from switchboard_common.env import SettingsError

async def main():
    try:
        provider = embedded_provider()
    except SettingsError as exc:
        print(exc)
        sys.exit(3)
    await provider.close()

asyncio.run(main())
"""
)


def _embed(blocked: set[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _EMBED, "router", ",".join(sorted(blocked))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_router_with_the_provider_extra_can_run_the_provider() -> None:
    done = _embed(_blocked("router") - _modules_of_extra("provider"))
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_router_image_without_it_refuses_the_placement_naming_the_variable() -> None:
    done = _embed(_blocked("router"))
    assert done.returncode == 3, done.stderr[-2000:]
    assert "SWITCHBOARD_PROVIDER_PLACEMENT=router needs the provider's packages" in done.stdout
    assert "switchboard[router,provider]" in done.stdout


def _modules_of_extra(service: str) -> set[str]:
    return set().union(*(_modules(d) for d in _own(service)))
