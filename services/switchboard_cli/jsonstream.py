"""Decode a JSON array's elements as its text arrives (pure).

Envoy's gRPC-JSON transcoder sends a server-streaming RPC as one JSON array, one
element per message, flushed as each message arrives: `[{...}` `,{...}` ... `]`."""

from __future__ import annotations

import json
from typing import Any

_WS = " \t\r\n"


class JsonArrayDecoder:
    def __init__(self) -> None:
        self._buf = ""
        self._started = False
        # True once an element was decoded and a ',' or ']' must come next.
        self._after_element = False
        self.done = False
        self._decoder = json.JSONDecoder()

    def feed(self, text: str) -> list[Any]:
        """The elements completed by `text`. Raises ValueError on text that cannot
        be (the start of) a JSON array, or anything after its closing bracket."""
        self._buf += text
        out: list[Any] = []
        while True:
            buf = self._buf.lstrip(_WS)
            if not buf:
                self._buf = ""
                return out
            if self.done:
                raise ValueError(f"text after the end of the array: {buf[:40]!r}")
            if not self._started:
                if buf[0] != "[":
                    raise ValueError(f"expected '[', got {buf[:40]!r}")
                self._started = True
                self._buf = buf[1:]
                continue
            if buf[0] == "]":
                self.done = True
                self._buf = buf[1:]
                continue
            if self._after_element:
                if buf[0] != ",":
                    raise ValueError(f"expected ',' or ']', got {buf[:40]!r}")
                self._after_element = False
                self._buf = buf[1:]
                continue
            try:
                item, end = self._decoder.raw_decode(buf)
            except json.JSONDecodeError:
                # Incomplete: wait for more (a broken element shows as a stream
                # that ends without ']': the caller checks `done`).
                self._buf = buf
                return out
            if end == len(buf) and buf[0] not in '{["':
                # A number or literal at the end may continue in the next chunk.
                self._buf = buf
                return out
            out.append(item)
            self._after_element = True
            self._buf = buf[end:]
