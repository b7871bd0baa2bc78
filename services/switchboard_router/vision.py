"""The vision route: a picture in (multipart/form-data at the edge), the main
objects in it out, recognised by a vision-capable chat model asked for JSON."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.forms import read_form

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_OBJECTS = 50
INSTRUCTION = (
    "List the main objects in this picture. Answer with JSON only, no prose, shaped "
    'exactly as {"objects": [{"name": "<short name>", "description": "<one sentence>"}]}, '
    f"with at most {MAX_OBJECTS} objects, most prominent first."
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True)
class Picture:
    data: bytes
    mime: str
    model: str


def _bad(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def read_request(request: router_pb2.CreateVisionCompletionRequest) -> Picture:
    if request.HasField("form"):
        picture = _read_form(request.form.content_type, request.form.data)
    else:
        picture = Picture(request.image, request.image_type, request.model)
    if not picture.data:
        raise _bad("image", "image is required: send it as the multipart file field 'image'")
    if picture.mime not in IMAGE_TYPES:
        raise _bad("image", f"image must be one of {', '.join(sorted(IMAGE_TYPES))}")
    if len(picture.data) > MAX_IMAGE_BYTES:
        raise SwitchboardError(
            R.ERROR_REASON_REQUEST_TOO_LARGE,
            f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB",
            param="image",
        )
    return picture


def _read_form(content_type: str, body: bytes) -> Picture:
    fields = read_form(content_type, body, "image")
    image = fields.get("image", [])[-1:]
    model = fields.get("model", [])[-1:]
    return Picture(
        image[0].data if image else b"",
        image[0].content_type if image else "",
        model[0].text if model else "",
    )


def chat_params(model: str, picture: Picture) -> openai_pb2.ChatCompletionParams:
    params = openai_pb2.ChatCompletionParams(model=model, temperature=0)
    params.messages.add(role="system").content.string_value = INSTRUCTION
    parts = params.messages.add(role="user").content.list_value
    text = parts.values.add().struct_value
    text.update({"type": "text", "text": "What are the main objects in this picture?"})
    image = parts.values.add().struct_value
    url = f"data:{picture.mime};base64,{base64.b64encode(picture.data).decode()}"
    image.update({"type": "image_url", "image_url": {"url": url}})
    return params


def objects_from(text: str) -> list[router_pb2.RecognizedObject]:
    """The model's JSON answer as objects; a 502 when it answered something else."""
    try:
        data = json.loads(_FENCE.sub("", text.strip()))
        items = data["objects"] if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise TypeError("objects is not a list")
        return [
            router_pb2.RecognizedObject(
                name=str(item.get("name", "")).strip(),
                description=str(item.get("description", "")).strip(),
            )
            for item in items[:MAX_OBJECTS]
            if isinstance(item, dict) and str(item.get("name", "")).strip()
        ]
    except (ValueError, KeyError, TypeError):
        raise SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR,
            "the vision model did not answer with the expected JSON list of objects",
        ) from None
