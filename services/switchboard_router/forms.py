"""multipart/form-data bodies as the edge passes them on (google.api.HttpBody):
the vision route's picture and the audio routes' uploads."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass

from switchboard_common.errors import R, SwitchboardError


@dataclass(frozen=True)
class Part:
    data: bytes
    content_type: str
    filename: str

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace").strip()


def read_form(content_type: str, body: bytes, file_field: str) -> dict[str, list[Part]]:
    """Each field's parts, in order (a field such as timestamp_granularities[]
    may repeat); `file_field` names the upload, for the error a non-form gets."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"send multipart/form-data with a file field '{file_field}'",
            param=file_field,
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "the multipart body could not be parsed",
            param=file_field,
        )
    fields: dict[str, list[Part]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        fields.setdefault(name, []).append(
            Part(payload, part.get_content_type(), part.get_filename() or "")
        )
    return fields
