"""Decoding options end to end: temperature/top_k/top_p/seed, stop strings, default max_tokens."""

from __future__ import annotations

import pytest
from rnnserve.client import AsyncClient

PREFIX = "the time traveller"


async def test_seeded_sampling_is_reproducible_and_seed_dependent(aclient: AsyncClient):
    for opts in [dict(temperature=1.0), dict(temperature=1.5, top_k=8),
                 dict(temperature=2.0, top_k=20, top_p=0.8)]:
        a = await aclient.generate(PREFIX, max_tokens=60, seed=11, **opts)
        b = await aclient.generate(PREFIX, max_tokens=60, seed=11, **opts)
        c = await aclient.generate(PREFIX, max_tokens=60, seed=12, **opts)
        assert a.text == b.text, opts
        assert a.text != c.text, opts  # 60 draws agreeing by chance: vanishingly unlikely
        assert a.generated_tokens == len(a.text) == 60
        streamed = "".join([x.text async for x in aclient.stream(PREFIX, max_tokens=60,
                                                                  seed=11, **opts)])
        assert streamed == a.text, opts


async def test_sampling_differs_from_greedy_and_unseeded_calls_differ(aclient: AsyncClient):
    greedy = (await aclient.generate(PREFIX, max_tokens=100)).text
    hot = [(await aclient.generate(PREFIX, max_tokens=100, temperature=1.5)).text
           for _ in range(2)]
    assert hot[0] != greedy and hot[1] != greedy
    assert hot[0] != hot[1], "seed 0 means unseeded: two calls draw differently"


async def test_truncated_sampling_that_keeps_one_token_is_greedy(aclient: AsyncClient):
    greedy = (await aclient.generate(PREFIX, max_tokens=120)).text
    top1 = await aclient.generate(PREFIX, max_tokens=120, temperature=1.0, top_k=1, seed=5)
    assert top1.text == greedy
    hot_top1 = await aclient.generate(PREFIX, max_tokens=120, temperature=50.0, top_k=1)
    assert hot_top1.text == greedy
    # top_p keeps the smallest set reaching p, and always the most likely token
    tiny_p = await aclient.generate(PREFIX, max_tokens=120, temperature=1.0, top_p=1e-6, seed=9)
    assert tiny_p.text == greedy


async def test_stop_strings_end_the_text(aclient: AsyncClient):
    greedy = (await aclient.generate(PREFIX, max_tokens=200)).text
    # pick stop strings from the greedy text itself, so we know where each first occurs
    word = greedy.split()[1]
    stop = word[-3:] if len(word) >= 3 else word
    end = greedy.index(stop) + len(stop)
    result = await aclient.generate(PREFIX, max_tokens=200, stop=[stop])
    assert result.text == greedy[:end]
    assert result.text.endswith(stop)
    assert result.finish_reason == "stop"
    assert result.generated_tokens == end

    # several stop strings: the one completed first wins
    # a second stop string that first completes after the first one does
    later = next((greedy[p:p + 4] for p in range(end, len(greedy) - 4)
                  if greedy[p:p + 4] not in greedy[:end]), "")
    assert later, "the greedy text has a 4-character window that first appears late"
    both = await aclient.generate(PREFIX, max_tokens=200, stop=[later, stop])
    assert both.text == greedy[:end] and both.finish_reason == "stop"

    # streamed, with the stop string spanning chunks
    chunks = [c async for c in aclient.stream(PREFIX, max_tokens=200, stop=[stop])]
    assert "".join(c.text for c in chunks) == greedy[:end]
    assert chunks[-1].finish_reason == "stop"

    # a stop string that never appears: the length limit ends it (one the model could not
    # produce at all, such as "🙂", is INVALID_ARGUMENT: tests/hardening/test_keepalive_defaults.py)
    never = await aclient.generate(PREFIX, max_tokens=60, stop=["qqqq"])
    assert never.text == greedy[:60] and never.finish_reason == "length"

    # a stop string completed exactly on the last allowed character says "stop"
    exact = await aclient.generate(PREFIX, max_tokens=end, stop=[stop])
    assert exact.text == greedy[:end] and exact.finish_reason == "stop"


async def test_stop_string_with_sampling_and_in_sessions(aclient: AsyncClient):
    sampled = await aclient.generate(PREFIX, max_tokens=300, temperature=1.0, seed=3)
    stop = " "
    cut = await aclient.generate(PREFIX, max_tokens=300, temperature=1.0, seed=3, stop=[stop])
    assert cut.text == sampled.text[:sampled.text.index(stop) + 1]
    # in a session, the stop string's text is part of the session and a later turn continues
    opened = await aclient.generate(PREFIX, max_tokens=300, stop=["e"], keep_session=True)
    assert opened.text.endswith("e") and opened.finish_reason == "stop"
    cont = await aclient.generate(" x", session_id=opened.session_id, max_tokens=40)
    whole = await aclient.generate(PREFIX + opened.text + " x", max_tokens=40)
    assert cont.text == whole.text
    await aclient.end_session(opened.session_id)


async def test_max_tokens_zero_uses_the_server_default(make_server, connect, aclient):
    default = await aclient.generate(PREFIX)
    assert default.generated_tokens == len(default.text) == 100  # ServerSettings' default
    server = await make_server(default_max_tokens=37)
    async with connect(server) as client:
        result = await client.generate(PREFIX, max_tokens=0)
        assert result.generated_tokens == len(result.text) == 37
        assert result.finish_reason == "length"
        assert result.text == default.text[:37]
        chunks = [c async for c in client.stream(PREFIX)]
        assert "".join(c.text for c in chunks) == result.text


@pytest.mark.parametrize("n", [1, 2, 4096])
async def test_max_tokens_edges(aclient: AsyncClient, n):
    result = await aclient.generate("a", max_tokens=n)
    assert result.generated_tokens == len(result.text) == n


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, 1e-30, 1e-6])
async def test_tiny_temperatures_are_valid_and_act_greedy(aclient: AsyncClient, temperature):
    """Any temperature in (0, 100] is accepted; near 0 sampling becomes argmax, not an error.

    (float32 logits / 1e-38 overflow to inf and softmax gives NaN: this used to be INTERNAL.)
    """
    greedy = (await aclient.generate(PREFIX, max_tokens=40)).text
    result = await aclient.generate(PREFIX, max_tokens=40, temperature=temperature, seed=1)
    assert result.text == greedy


async def test_a_hot_temperature_still_works(aclient: AsyncClient):
    result = await aclient.generate(PREFIX, max_tokens=40, temperature=100.0, seed=1)
    assert result.generated_tokens == 40
