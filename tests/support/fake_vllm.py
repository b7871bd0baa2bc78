"""A stand-in for `vllm serve` that speaks vLLM's HTTP surface on loopback:
`GET /health` (503 until the file named by FAKE_VLLM_READY_FILE exists, so a
test decides when the "model is loaded"), `GET /v1/models`, and
`POST /v1/chat/completions` (404 for a model name other than the served one,
as vLLM answers), with vLLM's log line format. SIGTERM ends it cleanly.

    python tests/support/fake_vllm.py serve MODEL --host H --port P --served-model-name N ..."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def log(level: str, message: str) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"(APIServer pid={os.getpid()}) {level} {stamp} [api_server.py:1] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--max-model-len", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args, extra = parser.parse_known_args()
    ready_file = Path(os.environ["FAKE_VLLM_READY_FILE"])
    served = args.served_model_name

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: Any) -> None:
            log("INFO", f"{self.address_string()} - {format % a}")

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200 if ready_file.exists() else 503)
                self.send_header("content-length", "0")
                self.end_headers()
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": served, "object": "model"}]})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self._json(404, {"detail": "Not Found"})
                return
            if body.get("model") != served:
                self._json(
                    404,
                    {
                        "object": "error",
                        "message": f"The model `{body.get('model')}` does not exist.",
                        "type": "NotFoundError",
                        "code": 404,
                    },
                )
                return
            self._json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": served,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"served by {args.model}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                },
            )

    server = ThreadingHTTPServer((args.host, args.port), Handler)

    def stop(signum: int, frame: Any) -> None:
        log("INFO", "Shutting down FastAPI HTTP server.")
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    log("INFO", f"vLLM API server version 0.0-fake; args: {sys.argv[1:]} extra {extra}")
    log("INFO", f"Starting vLLM API server on http://{args.host}:{args.port}")
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
