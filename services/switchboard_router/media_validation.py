"""Requests of the media kinds, checked before admission (400s with the
offending field), as validation.py does for chat and embeddings."""

from __future__ import annotations

from switchboard.common.v1 import media_pb2
from switchboard_common.audio import MAX_AUDIO_BYTES
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.forms import read_form
from switchboard_router.validation import _check_envelope, _check_model

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# OpenAI's limits.
MAX_SPEECH_CHARACTERS = 4096
MAX_RERANK_DOCUMENTS = 1000
MAX_IMAGES = 10
GRANULARITIES = ("word", "segment")


def _bad(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def transcription_from_form(content_type: str, body: bytes) -> media_pb2.TranscriptionParams:
    fields = read_form(content_type, body, "file")

    def text(name: str) -> str:
        parts = fields.get(name)
        return parts[-1].text if parts else ""

    params = media_pb2.TranscriptionParams(
        model=text("model"),
        language=text("language"),
        prompt=text("prompt"),
        response_format=text("response_format"),
    )
    files = fields.get("file")
    if files:
        params.file, params.filename = files[-1].data, files[-1].filename
        params.file_type = files[-1].content_type
    if text("temperature"):
        try:
            params.temperature = float(text("temperature"))
        except ValueError:
            raise _bad("temperature", "temperature must be a number") from None
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        params.timestamp_granularities.extend(p.text for p in fields.get(name, []))
    return params


def validate_transcription(params: media_pb2.TranscriptionParams) -> None:
    """Everything but the model, which admission checks once a default filled it."""
    if not params.file:
        raise _bad("file", "file is required: send the audio as the multipart file field 'file'")
    if len(params.file) > MAX_AUDIO_BYTES:
        raise SwitchboardError(
            R.ERROR_REASON_REQUEST_TOO_LARGE,
            f"the audio file is larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MB",
            param="file",
        )
    if params.response_format not in ("", *TRANSCRIPTION_FORMATS):
        raise _bad("response_format", f"response_format must be one of {TRANSCRIPTION_FORMATS}")
    if params.HasField("temperature") and not 0 <= params.temperature <= 1:
        raise _bad("temperature", "temperature must be between 0 and 1")
    for granularity in params.timestamp_granularities:
        if granularity not in GRANULARITIES:
            raise _bad("timestamp_granularities", "each must be 'word' or 'segment'")


def validate_transcription_model(params: media_pb2.TranscriptionParams) -> None:
    _check_model(params.model)


def validate_speech(params: media_pb2.SpeechParams) -> None:
    _check_envelope(params)
    _check_model(params.model)
    if not params.input:
        raise _bad("input", "input is required: the text to speak")
    if len(params.input) > MAX_SPEECH_CHARACTERS:
        raise _bad("input", f"input must be at most {MAX_SPEECH_CHARACTERS} characters")
    if not params.voice:
        raise _bad("voice", "voice is required")
    if params.response_format not in ("", *SPEECH_FORMATS):
        raise _bad("response_format", f"response_format must be one of {SPEECH_FORMATS}")
    if params.HasField("speed") and not 0.25 <= params.speed <= 4.0:
        raise _bad("speed", "speed must be between 0.25 and 4.0")


def validate_rerank(params: media_pb2.RerankParams) -> None:
    _check_envelope(params)
    _check_model(params.model)
    if not params.query:
        raise _bad("query", "query is required")
    if not params.documents:
        raise _bad("documents", "documents must be a non-empty array")
    if len(params.documents) > MAX_RERANK_DOCUMENTS:
        raise _bad("documents", f"documents must have at most {MAX_RERANK_DOCUMENTS} entries")
    for document in params.documents:
        kind = document.WhichOneof("kind")
        if kind == "struct_value" and "text" in document.struct_value.fields:
            continue
        if kind != "string_value":
            raise _bad("documents", 'each document must be a string or an object with "text"')
    if params.HasField("top_n") and params.top_n < 1:
        raise _bad("top_n", "top_n must be at least 1")


def validate_image(params: media_pb2.ImageParams) -> None:
    _check_envelope(params)
    _check_model(params.model)
    if not params.prompt.strip():
        raise _bad("prompt", "prompt is required")
    if params.HasField("n") and not 1 <= params.n <= MAX_IMAGES:
        raise _bad("n", f"n must be between 1 and {MAX_IMAGES}")
    if params.response_format not in ("", "url", "b64_json"):
        raise _bad("response_format", "response_format must be 'url' or 'b64_json'")
