"""TLS for the gRPC port: server certificate and key, optionally mutual TLS with a client CA."""

from __future__ import annotations

from pathlib import Path

import grpc
from rnnserve.server.settings import ServerSettings


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path}: {err.strerror or err}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{what} {path}: not a PEM file")
    return data


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext (no certificate configured).

    With ``tls_client_ca_file`` clients must present a certificate signed by that CA; a client
    without one fails the handshake.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read(settings.tls_cert_file, "tls_cert_file")
    key = _read(settings.tls_key_file, "tls_key_file")
    client_ca = (_read(settings.tls_client_ca_file, "tls_client_ca_file")
                 if settings.tls_client_ca_file is not None else None)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
