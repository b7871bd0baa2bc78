"""How the CLI shows things (pure: data in, rich renderables out). The inputs are
the edge's JSON: proto field names, enums as names (MODEL_KIND_CHAT), and fields
NVML did not give absent, shown as "—", never as zero."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

JSON = Mapping[str, Any]
ABSENT = "—"


def plain(value: object, style: str = "") -> Text:
    """Data from the API as literal text: a name holding "[b]" is not rich markup."""
    return Text(str(value), style=style)


def enum_label(value: object, prefix: str) -> str:
    """MODEL_KIND_CHAT -> chat; unset or unknown -> —."""
    text = str(value or "")
    if not text or text.endswith("_UNSPECIFIED"):
        return ABSENT
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return text.lower().replace("_", " ")


def number(value: object) -> str:
    """Counts from the API (doubles in JSON) as integers with separators."""
    if value is None or value == "":
        return ABSENT
    try:
        as_float = float(str(value))
    except ValueError:
        return str(value)
    if not math.isfinite(as_float):
        return str(value)
    return f"{as_float:,.0f}" if as_float == int(as_float) else f"{as_float:,.2f}"


def money(value: object) -> str:
    """Prices and costs are small: keep the significant digits, drop trailing zeros."""
    try:
        amount = float(str(value))
    except ValueError:
        return ABSENT
    if amount == 0 or not math.isfinite(amount):
        return str(amount).removesuffix(".0")
    # Nine decimals below 1: costs are kept in nano-units.
    text = f"{amount:,.9f}" if abs(amount) < 1 else f"{amount:,.4f}"
    return text.rstrip("0").rstrip(".")


def limit(value: object) -> str:
    """rpm/tpm/budget: 0 means none."""
    try:
        amount = float(str(value or 0))
    except ValueError:
        return ABSENT
    return "none" if amount == 0 else number(amount)


def _online(model: JSON) -> Text:
    # `online` is optional in the proto; the registry always sets it.
    if model.get("online", True):
        return Text("● online", style="green")
    return Text("○ offline", style="red")


def _deployments(model: JSON) -> Text:
    lines = Text()
    for i, dep in enumerate(model.get("deployments") or []):
        if i:
            lines.append("\n")
        lines.append(f"{dep.get('provider', '?')}/{dep.get('upstream_model', '?')}")
        if dep.get("enabled") is False:
            lines.append(" (disabled)", style="red")
    return lines if lines.plain else Text("none", style="yellow")


# The unit price of each kind priced per unit rather than per token (Pricing's fields).
UNIT_PRICES = {
    "MODEL_KIND_ASR": ("per_audio_second", "/audio s"),
    "MODEL_KIND_TTS": ("per_1k_characters", "/1K chars"),
    "MODEL_KIND_RERANK": ("per_search_unit", "/search unit"),
    "MODEL_KIND_IMAGE": ("per_image", "/image"),
}


def _price(model: JSON) -> str:
    pricing = model.get("pricing") or {}
    currency = pricing.get("currency") or ""
    unit = UNIT_PRICES.get(str(model.get("kind")))
    if unit is not None and pricing.get(unit[0]):
        return f"{money(pricing[unit[0]])}{unit[1]} {currency}".rstrip()
    cin, cout = pricing.get("input_per_1k") or 0, pricing.get("output_per_1k") or 0
    if not cin and not cout:
        return ABSENT
    return f"{money(cin)} / {money(cout)} {currency}".rstrip()


def _defaults(model: JSON) -> str:
    """The default parameters applied to calls that leave them out."""
    given = model.get("default_parameters") or {}
    names = ("temperature", "max_tokens", "top_p")
    return ", ".join(f"{k}={given[k]}" for k in names if k in given)


def models_table(models: Sequence[JSON]) -> Table:
    table = Table()
    table.add_column("MODEL", style="bold", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("KIND")
    table.add_column("DEPLOYMENTS (provider/upstream)")
    table.add_column("TAGS")
    table.add_column("PRICE /1K in / out")
    table.add_column("DESCRIPTION, DEFAULTS", overflow="fold")
    for model in models:
        name = Text(str(model.get("name", "")))
        aliases = model.get("aliases") or []
        if aliases:
            name.append("\n" + ", ".join(aliases), style="dim")
        table.add_row(
            name,
            _online(model),
            enum_label(model.get("kind"), "MODEL_KIND_"),
            _deployments(model),
            plain(", ".join(model.get("tags") or []) or ABSENT),
            plain(_price(model)),
            plain(
                "\n".join(
                    part for part in (model.get("description") or "", _defaults(model)) if part
                )
            ),
        )
    return table


def defaults_table(defaults: Mapping[str, str], uses: Sequence[str]) -> Table:
    """The default model of every use, unset ones included."""
    table = Table()
    table.add_column("USE", style="bold", no_wrap=True)
    table.add_column("MODEL")
    for use in uses:
        model = defaults.get(use)
        table.add_row(use, plain(model) if model else Text("not set", style="dim"))
    return table


def keys_table(keys: Sequence[JSON]) -> Table:
    table = Table()
    table.add_column("KEY", style="bold", no_wrap=True)
    table.add_column("PREFIX", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("MODELS")
    table.add_column("RPM", justify="right")
    table.add_column("TPM", justify="right")
    table.add_column("BUDGET", justify="right")
    table.add_column("CREATED", no_wrap=True)
    for key in keys:
        state = (
            Text("revoked", style="red") if key.get("revoked") else Text("active", style="green")
        )
        prefix = key.get("display_prefix")
        table.add_row(
            plain(key.get("name", "")),
            plain(f"{prefix}…" if prefix else ABSENT),
            state,
            plain(", ".join(key.get("models") or []) or "all"),
            limit(key.get("rpm")),
            limit(key.get("tpm")),
            limit(key.get("budget")),
            _time(key.get("create_time")),
        )
    return table


def _time(value: object) -> str:
    """RFC 3339 from the API, shortened to the second."""
    text = str(value or "")
    if not text:
        return ABSENT
    return text.replace("T", " ")[:19] + (" UTC" if text.endswith("Z") else "")


def key_created(reply: JSON) -> Group:
    """Print it with soft_wrap=True: the secret must stay on one line, never wrapped
    or cropped, whatever the terminal's width."""
    key = reply.get("key") or {}
    secret = str(reply.get("secret") or "")
    models = ", ".join(key.get("models") or []) or "all models"
    limits = ", ".join(
        f"{name} {limit(key.get(name))}"
        for name in ("rpm", "tpm", "budget")
        if float(key.get(name) or 0)
    )
    summary = Text.assemble(
        ("✓ created key ", "green"),
        (str(key.get("name", "")), "bold"),
        f" for {models}" + (f" ({limits})" if limits else ""),
    )
    return Group(
        summary,
        Text(""),
        Text("Secret (shown only this once; Switchboard stores only its SHA-256):"),
        Text("  ").append(secret, style="bold yellow"),
        Text(""),
        Text(f"Use it: export SWITCHBOARD_API_KEY={secret}"),
    )


def usage_table(summary: JSON) -> Table:
    period = summary.get("period") or {}
    start, end = period.get("start", "?"), period.get("end", "?")
    currency = str(summary.get("currency") or "USD")
    title = f"Usage {start}" + (f" … {end}" if end != start else "") + " (UTC)"
    table = Table(title=plain(title), title_justify="left", show_footer=True)
    by_model: Mapping[str, JSON] = summary.get("by_model") or {}
    table.add_column("MODEL", "total", style="bold", no_wrap=True)
    table.add_column("REQUESTS", number(summary.get("total_requests", 0)), justify="right")
    table.add_column("TOKENS", number(summary.get("total_tokens", 0)), justify="right")
    cost = money(summary.get("total_cost", 0))
    table.add_column(plain(f"COST ({currency})"), cost, justify="right")
    for name in sorted(by_model):
        row = by_model[name]
        table.add_row(
            plain(name),
            number(row.get("requests", 0)),
            number(row.get("tokens", 0)),
            money(row.get("cost", 0)),
        )
    if not by_model:
        table.add_row(Text("no calls in this period", style="dim"), "", "", "")
    return table


# -- stack -------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentState:
    name: str
    pid: int | None
    healthy: bool
    address: str


def stack_table(rows: Iterable[ComponentState], home: str) -> Table:
    table = Table(title=plain(f"Switchboard stack ({home})"), title_justify="left")
    table.add_column("COMPONENT", style="bold")
    table.add_column("STATE")
    table.add_column("PID", justify="right")
    table.add_column("ADDRESS")
    for row in rows:
        if row.pid is None:
            state = Text("○ stopped", style="red")
        elif row.healthy:
            state = Text("● healthy", style="green")
        else:
            state = Text("◐ running, not ready", style="yellow")
        table.add_row(row.name, state, str(row.pid) if row.pid else ABSENT, row.address)
    return table


# -- gpu ---------------------------------------------------------------------------


def _opt(device: JSON, field: str, unit: str = "", digits: int = 0) -> str:
    value = device.get(field)
    if value is None:
        return ABSENT
    return f"{float(value):.{digits}f}{unit}"


def _bar(percent: object, width: int = 10) -> Text:
    if percent is None:
        return Text(ABSENT)
    value = max(0.0, min(100.0, float(str(percent))))
    filled = round(value / 100 * width)
    style = "green" if value < 70 else "yellow" if value < 90 else "red"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"), f" {value:3.0f}%")


def _memory(device: JSON) -> str:
    used, total = device.get("memory_used_mib"), device.get("memory_total_mib")
    if used is None and total is None:
        return ABSENT
    used_text = ABSENT if used is None else f"{int(used):,}"
    total_text = ABSENT if total is None else f"{int(total):,}"
    return f"{used_text} / {total_text} MiB"


def _power(device: JSON) -> str:
    power, cap = device.get("power_w"), device.get("power_limit_w")
    if power is None:
        return ABSENT
    return f"{float(power):.0f}" + (f" / {float(cap):.0f}" if cap is not None else "") + " W"


_HEALTH_STYLE = {"ok": "green", "saturated": "yellow", "alerting": "yellow", "unhealthy": "red"}


def no_gpu_message(status: JSON) -> str | None:
    """The one-line reason there is nothing to show, or None when devices were read."""
    state = str(status.get("nvml_state") or "NVML_STATE_UNSPECIFIED")
    if state == "NVML_STATE_UNAVAILABLE":
        return f"no GPU / NVML unavailable: {status.get('reason') or 'no reason given'}"
    if state == "NVML_STATE_NO_DEVICES":
        driver = status.get("driver_version")
        return "no GPU: NVML works but reports no devices" + (
            f" (driver {driver})" if driver else ""
        )
    if state != "NVML_STATE_AVAILABLE":
        return "no GPU reading yet: the gpu service has not sampled NVML"
    return None


def gpu_view(
    status: JSON, alerts: Sequence[JSON] = (), footer: str | None = None
) -> RenderableType:
    host = str(status.get("hostname") or "?")
    sampled = _time(status.get("sample_time"))
    missing = no_gpu_message(status)
    parts: list[RenderableType] = []
    if missing is not None:
        parts.append(
            Panel(
                plain(missing, style="bold yellow"),
                title=plain(f"GPU · {host}"),
                subtitle=plain(f"sampled {sampled}"),
                border_style="yellow",
            )
        )
    else:
        driver = status.get("driver_version") or ABSENT
        cuda = status.get("cuda_version") or ABSENT
        table = Table(
            title=plain(f"GPU · {host} · driver {driver} · CUDA {cuda} · sampled {sampled}"),
            title_justify="left",
        )
        for column in ("#", "NAME", "UTIL", "MEM UTIL", "MEMORY", "TEMP", "POWER", "SM CLOCK"):
            table.add_column(column, no_wrap=column != "NAME")
        table.add_column("HEALTH")
        table.add_column("PROCS", justify="right")
        for device in status.get("devices") or []:
            label = enum_label(device.get("health"), "GPU_HEALTH_")
            health = Text(label, style=_HEALTH_STYLE.get(label, ""))
            why = [str(device.get("health_reason") or ""), *(device.get("nvml_errors") or [])]
            for reason in filter(None, why):
                health.append(f"\n{reason}", style="dim")
            table.add_row(
                str(device.get("index", 0)),
                plain(device.get("name") or ABSENT),
                _bar(device.get("utilization_gpu_percent")),
                _bar(device.get("utilization_memory_percent")),
                _memory(device),
                _opt(device, "temperature_c", " °C"),
                _power(device),
                _opt(device, "sm_clock_mhz", " MHz"),
                health,
                str(len(device.get("processes") or [])),
            )
        parts.append(table)
    if alerts:
        parts.append(alerts_table(alerts))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def alerts_table(alerts: Sequence[JSON]) -> Table:
    table = Table(title="GPU alerts", title_justify="left")
    for column in ("TIME", "STATE", "SEVERITY", "RULE", "GPU", "VALUE", "THRESHOLD"):
        table.add_column(column)
    table.add_column("MESSAGE", overflow="fold")
    for alert in alerts:
        state = enum_label(alert.get("state"), "ALERT_STATE_")
        table.add_row(
            _time(alert.get("time")),
            Text(state, style="red" if state == "firing" else "green"),
            enum_label(alert.get("severity"), "SEVERITY_"),
            plain(alert.get("rule_name") or ABSENT),
            plain(f"{alert.get('hostname', '?')}#{alert.get('gpu_index', 0)}"),
            number(alert.get("value")),
            number(alert.get("threshold")),
            plain(alert.get("message") or ""),
        )
    return table


def gpu_line(status: JSON) -> str:
    """One line per sample, for `gpu watch` when stdout is not a terminal."""
    head = f"{status.get('sample_time') or '?'} {status.get('hostname') or '?'}"
    missing = no_gpu_message(status)
    if missing is not None:
        return f"{head} {missing}"
    devices = [
        f"gpu{d.get('index', 0)} util {_opt(d, 'utilization_gpu_percent', '%')} "
        f"mem {_memory(d)} temp {_opt(d, 'temperature_c', '°C')} power {_power(d)} "
        f"{enum_label(d.get('health'), 'GPU_HEALTH_')}"
        for d in status.get("devices") or []
    ]
    return f"{head} " + " | ".join(devices)
