"""The README's environment table (under "## Configuration") names exactly the
environment variables the code under services/ reads: a variable added to the
code without a row, or a row left behind by a removed variable, fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "services"

# Every SWITCHBOARD_* name, as a whole string literal (env.get("…"), _int("…", d),
# tuples of names): a message that merely mentions one is not a whole literal.
_OWN = re.compile(r"""["'](SWITCHBOARD_[A-Z0-9_]+)["']""")
# Per-service names built from the service's name: SWITCHBOARD_{name.upper()}_PORT.
_PER_SERVICE = re.compile(r"""f["']SWITCHBOARD_\{[^}]+\}_([A-Z0-9_]+)["']""")
# Other variables the code reads by name.
_READ = re.compile(
    r"""(?:environ\.get|getenv|env\.get)\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    r"""|environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\](?!\s*=)"""
    r"""|^[A-Z_]+_VAR\s*=\s*["']([A-Z][A-Z0-9_]+)["']""",
    re.MULTILINE,
)
# Read, but not Switchboard's to document: the stack extends the children's
# path; the test stack picks its ports by the pytest-xdist worker it runs in.
NOT_SETTINGS = {"PYTHONPATH", "PYTEST_XDIST_WORKER"}
# In the table, but read by the name the config file gives (api_key_env, key_env).
NAMED_BY_CONFIG = {"OPENAI_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY", "DASHSCOPE_API_KEY"}
PER_SERVICE = "SWITCHBOARD_<SERVICE>_"


def code_variables() -> set[str]:
    found: set[str] = set()
    for path in SERVICES.rglob("*.py"):
        text = path.read_text()
        found.update(_OWN.findall(text))
        found.update(PER_SERVICE + suffix for suffix in _PER_SERVICE.findall(text))
        for groups in _READ.findall(text):
            found.update(name for name in groups if name)
    return found - NOT_SETTINGS


def table_variables() -> set[str]:
    """The first cell's names of each row of the Configuration table; a
    per-service pattern (`SWITCHBOARD_<SERVICE>_X`, `SWITCHBOARD_{A,B}_X`)
    counts as SWITCHBOARD_<SERVICE>_X."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].lstrip("\n")
    rows = section.split("\n\n", 1)[0].splitlines()
    names: set[str] = set()
    for row in rows:
        assert row.startswith("|"), row
        cell = row.split("|")[1]
        for name in re.findall(r"`([^`]+)`", cell):
            names.add(re.sub(r"^SWITCHBOARD_(<SERVICE>|\{[A-Z,]+\})_", PER_SERVICE, name))
    return names - {"variable"}


def test_every_variable_the_code_reads_has_a_row() -> None:
    missing = code_variables() - table_variables()
    assert not missing, f"README's environment table lacks {sorted(missing)}"


def test_every_row_names_a_variable_the_code_reads() -> None:
    stale = table_variables() - code_variables() - NAMED_BY_CONFIG
    assert not stale, f"README's environment table names variables nothing reads: {sorted(stale)}"


def test_the_scan_sees_what_it_must() -> None:
    """The regexes find each way a variable is read here (so a pass means something)."""
    found = code_variables()
    # env.get / os.environ.get, a helper's argument, a per-service template, a _VAR constant
    for name in ("KAFKA_BOOTSTRAP", "SWITCHBOARD_GPU_INTERVAL_S", "SWITCHBOARD_TLS_CA"):
        assert name in found
    assert PER_SERVICE + "METRICS_PORT" in found
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in found
    assert "PYTHONPATH" not in found
