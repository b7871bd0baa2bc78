"""Mutual TLS between services, from certificate files named in the
environment: SWITCHBOARD_TLS_CERT (this process's certificate chain, PEM),
SWITCHBOARD_TLS_KEY (its private key) and SWITCHBOARD_TLS_CA (the CA that
signed every service's certificate). All three or none: with them, every
server requires a client certificate from that CA and every client verifies
the server's; without them, services talk plaintext (loopback development).

One certificate may serve every service (its SANs name them all); the edge
uses the same files for its upstream connections."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

_VARS = ("SWITCHBOARD_TLS_CERT", "SWITCHBOARD_TLS_KEY", "SWITCHBOARD_TLS_CA")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_env(cls) -> TlsFiles | None:
        values = [os.environ.get(name) or "" for name in _VARS]
        if not any(values):
            return None
        missing = [name for name, value in zip(_VARS, values, strict=True) if not value]
        if missing:
            raise ValueError(f"mutual TLS needs all of {', '.join(_VARS)}; missing {missing}")
        files = cls(*(Path(v) for v in values))
        for name, path in zip(_VARS, (files.cert, files.key, files.ca), strict=True):
            if not path.is_file():
                raise ValueError(f"{name}={path}: no such file")
        return files

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )
