"""The Redis record's state encoding and the scale-out settings checks (no server, no Redis)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from rnnserve.server.serving.redis_store import decode_state, encode_state, redacted
from rnnserve.server.settings import ServerSettings


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_state_survives_the_record_bit_for_bit(dtype):
    state = torch.randn(2, 1, 3, 5).to(dtype)  # (S, L, B, H) or any shape
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode()
              for k, v in encode_state(state).items()}
    back = decode_state(fields)
    assert back.dtype == dtype and back.shape == state.shape
    assert torch.equal(back.view(torch.uint8), state.contiguous().view(torch.uint8))


def test_a_record_without_a_finished_turn_has_no_state():
    assert decode_state({b"model": b"m"}) is None


def test_urls_are_logged_without_their_password():
    assert redacted("redis://user:secret@db.example:6380/2") == "redis://db.example:6380/2"
    assert "secret" not in redacted("rediss://:secret@h/0")


def test_session_store_values_and_workers_are_checked():
    assert ServerSettings().session_store == "memory"
    ServerSettings(session_store="rediss://h:6380/1", workers=2)
    with pytest.raises(ValidationError, match="session_store must be"):
        ServerSettings(session_store="mysql://h")
    with pytest.raises(ValidationError, match="needs a shared session store"):
        ServerSettings(workers=2)
