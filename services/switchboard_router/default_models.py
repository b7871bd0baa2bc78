"""The model of a call that names none: the registry's default for the call's
use (SetDefaultModel, live: the next call after a change goes to the new one).
The use is the kind's own (chat, embedding, asr, tts, rerank, image) unless
an `x-switchboard-use` header on /v1 names another (knowledge_base, assistant,
evaluation, workflow, ...); surfaces with uses of their own pass theirs."""

from __future__ import annotations

from typing import Any, cast, get_args

import grpc

from switchboard_common.config import ModelUse
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.catalog import Catalog

USE_KEY = "x-switchboard-use"
USES: tuple[str, ...] = get_args(ModelUse)


def requested_use(context: grpc.aio.ServicerContext[Any, Any], kind: str) -> str:
    named = next(
        (str(v) for k, v in context.invocation_metadata() or () if k == USE_KEY), ""
    ).strip()
    if not named:
        return kind
    if named not in USES:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"{USE_KEY} must be one of {', '.join(USES)}",
            param=USE_KEY,
        )
    return named


def default_model(catalog: Catalog, context: grpc.aio.ServicerContext[Any, Any], kind: str) -> str:
    return model_for_use(catalog, requested_use(context, kind), kind)


def model_for_use(catalog: Catalog, use: str, kind: str) -> str:
    name = catalog.active_model(cast(ModelUse, use))
    if name is None:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"No model given, and no default model is set for the use '{use}'. Name a model, "
            f"or have an administrator set a {kind} model as the default: "
            f'PUT /v1/admin/defaults/MODEL_USE_{use.upper()} {{"model": "<name>"}} '
            f"(or `switchboard models activate <name> --use {use}`).",
            param="model",
        )
    return name
