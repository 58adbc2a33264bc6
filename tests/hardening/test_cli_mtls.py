"""Issue 9 I: the CLI can present a client certificate (mutual TLS), as the server asks."""

from __future__ import annotations

import asyncio

from rnnserve.client import cli


async def test_the_cli_talks_to_a_mutual_tls_server(make_server, repo, pki, capsys):
    server = await make_server(model_repository=repo, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca)
    target = f"localhost:{server.port}"
    base = ["models", "--target", target, "--tls-ca", str(pki.ca), "--timeout", "5"]
    refused = await asyncio.to_thread(cli.main, base)
    assert refused == cli.EXIT_ERROR  # no client certificate: the handshake fails
    capsys.readouterr()
    status = await asyncio.to_thread(
        cli.main, [*base, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)])
    assert status == cli.EXIT_OK
    assert "timemachine" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, [*base, "--tls-cert", str(pki.client_cert)]) \
        == cli.EXIT_USAGE  # a certificate needs its key
