"""Request validation at the front door: every rejection names the field.

Also the router's half of the hostile-input defences (the edge's half is
deploy/envoy/edge.lua): keys that would choose an upstream or its credentials
are refused wherever free-form JSON can carry them, numbers must be finite,
and nothing a client sent is echoed back at length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from google.protobuf import message, struct_pb2

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.server import MAX_MESSAGE_BYTES
from switchboard_common.values import to_python
from switchboard_router.content import normalise_chat

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MESSAGES = 4096
MAX_N = 16
MAX_TOKENS_LIMIT = 1_000_000
MAX_STOP = 4
# Vocabulary sizes are in the hundreds of thousands; past that top_k means "all".
MAX_TOP_K = 1_000_000
# Registry names are at most 128 characters; anything longer cannot exist.
MAX_MODEL_LENGTH = 256
MAX_TOOLS = 128
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_EMBEDDING_INPUTS = 2048
MAX_DIMENSIONS = 65536
MAX_TOKEN_ID = 2**32 - 1
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The request is forwarded to the provider inside a slightly larger message, and
# every gRPC hop refuses messages over MAX_MESSAGE_BYTES.
MAX_PARAMS_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
# The edge's list (deploy/envoy/edge.lua), for gRPC callers and anything the
# edge's text match could miss: base_url, baseUrl, BASE-URL, ...
FORBIDDEN_KEY = re.compile(
    r"^(?:base[_-]?url|api[_-]?base|api[_-]?key|extra[_-]?(?:headers|query|body))$",
    re.IGNORECASE,
)
# Longest client-supplied text quoted back in an error message or param.
_ECHO = 64


def _bad(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=_short(param, 200))


def _short(text: str, limit: int = _ECHO) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _forbidden(param: str, key: str) -> SwitchboardError:
    return _bad(
        param,
        f"{_short(key)} cannot be set by clients: upstreams are chosen by the gateway's "
        "configuration",
    )


# -- free-form JSON: forbidden keys, finite numbers ------------------------------


def _check_value(value: struct_pb2.Value, where: str) -> None:
    kind = value.WhichOneof("kind")
    if kind is None:
        # JSON cannot say this; a gRPC caller can, by mistake (protobufjs with
        # keepCase drops {string_value: ...} silently). Never read it as null.
        raise _bad(
            where,
            f"{_short(where)} has no value set: a google.protobuf.Value needs one of "
            "null_value, number_value, string_value, bool_value, struct_value, list_value",
        )
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise _bad(where, f"{_short(where)} must be a finite number")
    elif kind == "struct_value":
        _check_struct(value.struct_value, where)
    elif kind == "list_value":
        for i, item in enumerate(value.list_value.values):
            _check_value(item, f"{where}[{i}]")


def _check_struct(struct: struct_pb2.Struct, where: str) -> None:
    for key, item in struct.fields.items():
        path = f"{where}.{key}"
        if FORBIDDEN_KEY.match(key):
            raise _forbidden(path, key)
        _check_value(item, path)


def _check_keys(keys: Iterable[str], where: str) -> None:
    for key in keys:
        if FORBIDDEN_KEY.match(key):
            raise _forbidden(f"{where}.{key}", key)


def _check_json_fields(msg: message.Message, where: str = "") -> None:
    """Walk every google.protobuf.Struct/Value (and map key) in `msg`."""
    for field, value in msg.ListFields():
        path = f"{where}.{field.name}" if where else field.name
        kind = field.message_type
        if kind is None:
            continue
        if kind.full_name == "google.protobuf.Value" and field.is_repeated:
            for i, item in enumerate(value):
                _check_value(item, f"{path}[{i}]")
        elif kind.full_name == "google.protobuf.Value":
            _check_value(value, path)
        elif kind.full_name == "google.protobuf.Struct":
            _check_struct(value, path)
        elif kind.GetOptions().map_entry:
            _check_keys(value.keys(), path)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _check_json_fields(item, f"{path}[{i}]")
        else:
            _check_json_fields(value, path)


def _check_envelope(params: message.Message) -> None:
    size = params.ByteSize()
    if size > MAX_PARAMS_BYTES:
        raise SwitchboardError(
            R.ERROR_REASON_REQUEST_TOO_LARGE,
            f"Request too large: {size} bytes once decoded (limit {MAX_PARAMS_BYTES}).",
        )
    _check_json_fields(params)


# -- fields ------------------------------------------------------------------------


def _check_model(model: str) -> None:
    if not model.strip():
        raise _bad("model", "you must provide a model parameter")
    if len(model) > MAX_MODEL_LENGTH:
        raise _bad("model", f"model must be at most {MAX_MODEL_LENGTH} characters")


def _check_range(param: str, value: float | None, low: float, high: float) -> None:
    # NaN fails both comparisons, so it is refused too.
    if value is not None and not low <= value <= high:
        raise _bad(param, f"{param} must be between {low:g} and {high:g}")


def _check_common(
    model: str,
    temperature: float | None,
    top_p: float | None,
    n: int | None,
    max_tokens: tuple[str, int] | None,
    stop: struct_pb2.Value | None,
) -> None:
    _check_model(model)
    _check_range("temperature", temperature, 0, 2)
    _check_range("top_p", top_p, 0, 1)
    if n is not None and not 1 <= n <= MAX_N:
        raise _bad("n", f"n must be between 1 and {MAX_N}")
    if max_tokens is not None:
        name, value = max_tokens
        if not 1 <= value <= MAX_TOKENS_LIMIT:
            raise _bad(name, f"{name} must be between 1 and {MAX_TOKENS_LIMIT}")
    if stop is not None:
        stops = to_python(stop)
        if stops is None or isinstance(stops, str):
            return
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP
            or not all(isinstance(s, str) for s in stops)
        ):
            raise _bad("stop", f"stop must be a string or an array of at most {MAX_STOP} strings")


def _check_sampling(params: openai_pb2.ChatCompletionParams | openai_pb2.CompletionParams) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if params.HasField(name):
            _check_range(name, getattr(params, name), -2, 2)
    if params.HasField("top_k") and not 1 <= params.top_k <= MAX_TOP_K:
        raise _bad("top_k", f"top_k must be between 1 and {MAX_TOP_K}")
    for token, bias in params.logit_bias.items():
        if not token.isdigit() or not -100 <= bias <= 100:
            raise _bad(
                "logit_bias",
                "logit_bias maps token ids (digits) to numbers between -100 and 100",
            )


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA:
        raise _bad("metadata", f"metadata holds at most {MAX_METADATA} pairs")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise _bad(
                "metadata",
                f"metadata keys are at most {MAX_METADATA_KEY} characters and values "
                f"at most {MAX_METADATA_VALUE}",
            )


def _check_tools(params: openai_pb2.ChatCompletionParams) -> None:
    if len(params.tools) > MAX_TOOLS:
        raise _bad("tools", f"tools must have at most {MAX_TOOLS} entries")
    for i, tool in enumerate(params.tools):
        if tool.type != "function":
            raise _bad(f"tools[{i}].type", f"tools[{i}].type must be 'function'")
        if not TOOL_NAME.match(tool.function.name):
            raise _bad(
                f"tools[{i}].function.name",
                f"tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-'",
            )
    if params.HasField("tool_choice"):
        choice = to_python(params.tool_choice)
        if not (isinstance(choice, dict) or (isinstance(choice, str) and choice in TOOL_CHOICES)):
            raise _bad(
                "tool_choice",
                "tool_choice must be 'none', 'auto', 'required' or an object naming a tool",
            )
    if (
        params.HasField("response_format")
        and _field(params.response_format, "type") not in RESPONSE_FORMATS
    ):
        raise _bad(
            "response_format.type",
            "response_format.type must be one of " + ", ".join(sorted(RESPONSE_FORMATS)),
        )


def _field(struct: struct_pb2.Struct, key: str) -> object:
    # .get: indexing a Struct's map would add the key.
    value = struct.fields.get(key)
    return to_python(value) if value is not None else None


def _check_objects(params: openai_pb2.ChatCompletionParams) -> None:
    """The kinds OpenAI's free-form objects hold where a field has one meaning."""
    if _field(params.response_format, "type") == "json_schema" and not isinstance(
        _field(params.response_format, "json_schema"), dict
    ):
        raise _bad("response_format.json_schema", "response_format.json_schema must be an object")
    if params.HasField("prediction"):
        if _field(params.prediction, "type") != "content":
            raise _bad("prediction.type", "prediction.type must be 'content'")
        if not isinstance(_field(params.prediction, "content"), str | list):
            raise _bad(
                "prediction.content", "prediction.content must be a string or an array of parts"
            )
    if params.HasField("audio"):
        for key in ("voice", "format"):
            if not isinstance(_field(params.audio, key), str):
                raise _bad(f"audio.{key}", f"audio.{key} must be a string")


def validate_chat(params: openai_pb2.ChatCompletionParams) -> None:
    """Also rewrites typed content into its JSON form (switchboard_router.content)."""
    normalise_chat(params)
    _check_envelope(params)
    max_tokens: tuple[str, int] | None = None
    if params.HasField("max_completion_tokens"):
        max_tokens = ("max_completion_tokens", params.max_completion_tokens)
    elif params.HasField("max_tokens"):
        max_tokens = ("max_tokens", params.max_tokens)
    _check_common(
        params.model,
        params.temperature if params.HasField("temperature") else None,
        params.top_p if params.HasField("top_p") else None,
        params.n if params.HasField("n") else None,
        max_tokens,
        params.stop if params.HasField("stop") else None,
    )
    _check_sampling(params)
    if params.HasField("top_logprobs") and not 0 <= params.top_logprobs <= 20:
        raise _bad("top_logprobs", "top_logprobs must be between 0 and 20")
    _check_metadata(dict(params.metadata))
    _check_tools(params)
    _check_objects(params)
    if not params.messages:
        raise _bad("messages", "messages must be a non-empty array")
    if len(params.messages) > MAX_MESSAGES:
        raise _bad("messages", f"messages must have at most {MAX_MESSAGES} entries")
    for i, msg in enumerate(params.messages):
        where = f"messages[{i}]"
        if msg.role not in ROLES:
            raise _bad(
                f"{where}.role",
                f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {_short(msg.role)!r}",
            )
        content = to_python(msg.content) if msg.HasField("content") else None
        if content is None and msg.role in ("user", "system", "developer"):
            raise _bad(f"{where}.content", f"{where}.content is required for role {msg.role}")
        _check_content(where, content)


def _check_content(where: str, content: object) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}.content", f"{where}.content must be a string or an array of parts")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = part["image_url"].get("url")
            if isinstance(url, str) and url.startswith(("https://", "http://", "data:image/")):
                continue
        if kind in ("input_audio", "file") and isinstance(part.get(kind), dict):
            continue
        if kind == "refusal" and isinstance(part.get(kind, ""), dict | str):
            continue
        raise _bad(
            f"{where}.content[{j}]",
            f"{where}.content[{j}] must be a text part, or an image_url part "
            "with an http(s) or data: URL",
        )


def validate_completion(params: openai_pb2.CompletionParams) -> None:
    _check_envelope(params)
    _check_common(
        params.model,
        params.temperature if params.HasField("temperature") else None,
        params.top_p if params.HasField("top_p") else None,
        params.n if params.HasField("n") else None,
        ("max_tokens", params.max_tokens) if params.HasField("max_tokens") else None,
        params.stop if params.HasField("stop") else None,
    )
    _check_sampling(params)
    if params.HasField("logprobs") and not 0 <= params.logprobs <= 5:
        raise _bad("logprobs", "logprobs must be between 0 and 5")
    if params.HasField("best_of") and not 1 <= params.best_of <= 20:
        raise _bad("best_of", "best_of must be between 1 and 20")
    prompt = to_python(params.prompt) if params.HasField("prompt") else None
    if not _is_prompt(prompt):
        raise _bad(
            "prompt",
            "prompt must be a string, an array of strings, an array of token ids, "
            "or an array of token-id arrays",
        )


def _is_token_ids(value: object) -> bool:
    # A google.protobuf.Value holds numbers as doubles: token 5 arrives as 5.0.
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and float(v).is_integer()
            and 0 <= v <= MAX_TOKEN_ID
            for v in value
        )
    )


def _is_prompt(value: object) -> bool:
    """OpenAI's shapes: a string, a non-empty array of strings, of token ids, or of
    non-empty token-id arrays (never a mix, never deeper)."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    return (
        all(isinstance(v, str) for v in value)
        or _is_token_ids(value)
        or all(_is_token_ids(v) for v in value)
    )


def validate_embedding(params: openai_pb2.EmbeddingParams) -> None:
    _check_envelope(params)
    _check_model(params.model)
    value = to_python(params.input) if params.HasField("input") else None
    if not _is_prompt(value) or value == "" or (isinstance(value, list) and "" in value):
        raise _bad(
            "input",
            "input must be a non-empty string, an array of non-empty strings, an array of "
            "token ids, or an array of token-id arrays",
        )
    if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
        raise _bad("input", f"input must have at most {MAX_EMBEDDING_INPUTS} entries")
    if params.encoding_format not in ("", "float", "base64"):
        raise _bad("encoding_format", "encoding_format must be 'float' or 'base64'")
    if params.HasField("dimensions") and not 1 <= params.dimensions <= MAX_DIMENSIONS:
        raise _bad("dimensions", f"dimensions must be between 1 and {MAX_DIMENSIONS}")
