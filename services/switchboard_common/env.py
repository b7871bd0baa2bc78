"""Reading typed values from an environment mapping, for the services' settings
objects (built once, at start). A bad value fails there, with a message that
names the variable, rather than deep in a request much later. An unset or
empty variable takes the default."""

from __future__ import annotations

from collections.abc import Collection, Mapping


class SettingsError(ValueError):
    """An environment variable's value is not one the service can run with."""


def _raw(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _bounded(name: str, value: float, raw: str, minimum: float | None, above: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum:g}, got {raw!r}")
    if above is not None and value <= above:
        raise SettingsError(f"{name} must be above {above:g}, got {raw!r}")


def integer(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    above: int | None = None,
) -> int:
    raw = _raw(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    _bounded(name, value, raw, minimum, above)
    return value


def optional_integer(env: Mapping[str, str], name: str) -> int | None:
    raw = _raw(env, name)
    return integer(env, name, 0) if raw else None


def number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    raw = _raw(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    _bounded(name, value, raw, minimum, above)
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum:g}, got {raw!r}")
    return value


def choice(env: Mapping[str, str], name: str, default: str, choices: Collection[str]) -> str:
    raw = _raw(env, name)
    if not raw:
        return default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(sorted(choices))}, got {raw!r}")
    return raw


def addresses(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of host:port; blanks are ignored."""
    listed = tuple(item.strip() for item in _raw(env, name).split(",") if item.strip())
    for address in listed:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise SettingsError(f"{name}: expected host:port, got {address!r}")
    return listed


def text(env: Mapping[str, str], name: str, default: str = "") -> str:
    """A string as given (surrounding blanks dropped); empty means the default."""
    return _raw(env, name) or default
