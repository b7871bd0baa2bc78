"""Audio measured from the file itself: transcriptions are accounted in
seconds of audio, and a client's word for the length is not trusted."""

from __future__ import annotations

import io
import wave

from switchboard_common.errors import R, SwitchboardError

# OpenAI's limit for /v1/audio/transcriptions and /translations.
MAX_AUDIO_BYTES = 25 * 1024 * 1024


def wav_seconds(data: bytes) -> float:
    """The duration of a WAV (RIFF PCM) file from its header and data size.
    Other containers are refused: their length cannot be read without a
    decoder, and an unmeasured file cannot be accounted honestly."""
    if len(data) > MAX_AUDIO_BYTES:
        raise SwitchboardError(
            R.ERROR_REASON_REQUEST_TOO_LARGE,
            f"the audio file is larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MB",
            param="file",
        )
    try:
        with wave.open(io.BytesIO(data), "rb") as audio:
            rate = audio.getframerate()
            width = audio.getsampwidth() * audio.getnchannels()
            # The samples present, not the header's claim (a truncated upload).
            frames = len(audio.readframes(audio.getnframes())) // max(width, 1)
    except (wave.Error, EOFError) as exc:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "file must be WAV (RIFF PCM) audio: Switchboard measures the seconds it bills "
            f"from the file itself ({exc}). Convert other formats first, e.g. "
            "`ffmpeg -i in.mp3 out.wav`.",
            param="file",
        ) from None
    if rate <= 0:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "the WAV file has no sample rate", param="file"
        )
    return frames / rate
