"""Helpers for the hardening tests: throwaway model repositories, certificates, raw stubs.

Servers come from ``make_server`` (tests/conftest.py) and live in the test's event loop, so
tests talk to them with grpc.aio (or the AsyncClient); blocking work goes to a thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rnnserve.models.checkpoint import save_model
from rnnserve.models.sentiment import SentimentConfig, SentimentRNN

ROOT = Path(__file__).resolve().parents[2]
TIMEMACHINE_DIR = ROOT / "model_repository" / "timemachine" / "1"

SENTIMENT_VOCAB = ["<unk>", "<pad>", "good", "bad", "film", "a", "the", "dull"]


def tiny_classifier_config(version: int = 1) -> dict:
    """A small, untrained classifier (its scores mean nothing; it exercises the plumbing)."""
    return {
        "name": "sentiment", "version": version, "kind": "classifier",
        "vocab": SENTIMENT_VOCAB,
        "architecture": {"type": "sentiment_rnn", "vocab_size": len(SENTIMENT_VOCAB),
                         "embedding_dim": 8, "hidden_dim": 8, "no_layers": 1},
        "tokenizer": {"seq_length": 16, "pad_index": 1},
    }


def add_classifier(repo: Path, version: int = 1) -> Path:
    cfg = tiny_classifier_config(version)
    torch.manual_seed(0)
    arch = {k: v for k, v in cfg["architecture"].items() if k != "type"}
    net = SentimentRNN.from_config(SentimentConfig(**arch))
    vdir = repo / "sentiment" / str(version)
    save_model(vdir, net, cfg)
    return vdir


def add_timemachine_version(repo: Path, version: int, perplexity: float | None = None) -> Path:
    """Copy timemachine/1 as ``version`` (same weights; config says the new version number).

    Written beside the repository and renamed in, as a deployment should: a poll never sees a
    half-copied version.
    """
    staging = repo / f".staging-{version}"
    shutil.copytree(TIMEMACHINE_DIR, staging)
    cfg = json.loads((staging / "config.json").read_text())
    cfg["version"] = version
    if perplexity is not None:
        cfg.setdefault("metrics", {})["perplexity"] = perplexity
    (staging / "config.json").write_text(json.dumps(cfg))
    target = repo / "timemachine" / str(version)
    os.replace(staging, target)
    return target


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository of our own: timemachine/1 (the shipped one) and a tiny classifier."""
    root = tmp_path / "repo"
    (root / "timemachine").mkdir(parents=True)
    shutil.copytree(TIMEMACHINE_DIR, root / "timemachine" / "1")
    add_classifier(root)
    return root


# --------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def channel_credentials(self, with_client_cert: bool = False) -> grpc.ChannelCredentials:
        ca = self.ca.read_bytes()
        if not with_client_cert:
            return grpc.ssl_channel_credentials(ca)
        return grpc.ssl_channel_credentials(
            ca, self.client_key.read_bytes(), self.client_cert.read_bytes())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rnnserve test CA")])
    ca = _cert("rnnserve test CA", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ca_name, ca_key,
                   san=[x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = _cert("test-client", client_key, ca_name, ca_key)
    pem = serialization.Encoding.PEM
    paths = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                folder / "client.pem", folder / "client.key")
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.server_cert.write_bytes(server.public_bytes(pem))
    paths.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(server_key, paths.server_key)
    _write_key(client_key, paths.client_key)
    return paths


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
