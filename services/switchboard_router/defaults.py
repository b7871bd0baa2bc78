"""A model's default parameters (registry Model.default_parameters), filled
into calls that leave them out, whichever API the call came through."""

from __future__ import annotations

from typing import Any

from switchboard_common.config import ModelConfig


def apply_defaults(model: ModelConfig, params: Any) -> None:
    defaults = model.default_parameters
    fields = params.DESCRIPTOR.fields_by_name
    for name in ("temperature", "top_p"):
        value = getattr(defaults, name)
        if value is not None and name in fields and not params.HasField(name):
            setattr(params, name, value)
    if defaults.max_tokens is not None and "max_tokens" in fields:
        # max_completion_tokens is the newer name for the same limit.
        given = params.HasField("max_tokens") or (
            "max_completion_tokens" in fields and params.HasField("max_completion_tokens")
        )
        if not given:
            params.max_tokens = defaults.max_tokens
