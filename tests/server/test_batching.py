"""DESIGN semantics 3: batching never changes an answer.

The same requests are run one at a time (each alone in its decode batch) and all at once
(continuous batching interleaves them, sessions included), on a batching server and on one
with ``max_batch_size=1``; every text must be identical. Classifier scores for a text agree
within 1e-5 alone, inside a 50-text call, and spread over concurrent calls.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from rnnserve.client import AsyncClient

PREFIXES = [
    "time traveller", "t", "the time machine", "The Psychologist said: ", "filby became pensive",
    "a", "what 🙂 is this?", "it is simply this that space as our mathematicians have it",
    "weena", "morlocks", "the medical man", "x",
]


@dataclass
class Spec:
    """One request of the mix."""

    prefix: str
    max_tokens: int
    options: dict = field(default_factory=dict)
    session: bool = False  # continue a session opened beforehand with SESSION_OPENER
    stream: bool = False


SESSION_OPENER = ("the time traveller smiled", 15)


def request_mix(n: int = 32) -> list[Spec]:
    """Mixed prefixes and lengths; greedy, sampled (seeded), top-k/top-p, stop strings, sessions."""
    rng = random.Random(7)
    specs = []
    for i in range(n):
        prefix = PREFIXES[i % len(PREFIXES)]
        max_tokens = rng.choice([1, 5, 17, 30, 48])
        kind = i % 6
        options: dict = {}
        if kind == 1:
            options = dict(temperature=0.8, seed=1000 + i)
        elif kind == 2:
            options = dict(temperature=1.2, top_k=5, seed=2000 + i)
        elif kind == 3:
            options = dict(temperature=0.7, top_p=0.9, seed=3000 + i)
        elif kind == 4:
            options = dict(stop=["the", "e "])
        specs.append(Spec(prefix, max_tokens, options, session=(i % 4 == 3), stream=(i % 5 == 2)))
    return specs


async def open_sessions(client: AsyncClient, count: int) -> list[str]:
    """Sessions with identical histories (so each run gets its own but equal starting state)."""
    prefix, n = SESSION_OPENER
    ids = []
    for _ in range(count):
        ids.append((await client.generate(prefix, max_tokens=n, keep_session=True)).session_id)
    return ids


async def run_one(client: AsyncClient, spec: Spec, session_id: str = "") -> tuple[str, str]:
    kwargs = dict(max_tokens=spec.max_tokens, session_id=session_id, **spec.options)
    if spec.stream:
        chunks = [c async for c in client.stream(spec.prefix, **kwargs)]
        return "".join(c.text for c in chunks), chunks[-1].finish_reason
    result = await client.generate(spec.prefix, **kwargs)
    return result.text, result.finish_reason


async def run_mix(client: AsyncClient, specs: list[Spec], *, concurrent: bool
                  ) -> list[tuple[str, str]]:
    sessions = iter(await open_sessions(client, sum(s.session for s in specs)))
    calls = [run_one(client, s, next(sessions) if s.session else "") for s in specs]
    if concurrent:
        return list(await asyncio.gather(*calls))
    return [await call for call in calls]


def decode_batches(view) -> tuple[float, float]:
    """(observations, sum) of the decode batch-size histogram."""
    return (view.value("rnnserve_batch_size_count", model="timemachine", engine="decode"),
            view.value("rnnserve_batch_size_sum", model="timemachine", engine="decode"))


async def test_batching_never_changes_a_generation(make_server, connect, metrics_of):
    specs = request_mix(32)
    batching = await make_server()
    async with connect(batching) as client:
        alone = await run_mix(client, specs, concurrent=False)
        count0, sum0 = decode_batches(await metrics_of(batching))
        assert sum0 == count0, "run one at a time, every decode step had a batch of one"
        together = await run_mix(client, specs, concurrent=True)
        count1, sum1 = decode_batches(await metrics_of(batching))
        assert (sum1 - sum0) / (count1 - count0) > 2, "the concurrent run really shared batches"

    unbatched = await make_server(max_batch_size=1)
    async with connect(unbatched) as client:
        serial = await run_mix(client, specs, concurrent=True)
        count, total = decode_batches(await metrics_of(unbatched))
        assert total == count, "max_batch_size=1 never steps two sequences together"

    for i, spec in enumerate(specs):
        label = f"request {i}: {spec}"
        assert together[i] == alone[i], label
        assert serial[i] == alone[i], label
    # the mix exercised what it claims to
    reasons = {r for _, r in alone}
    assert reasons == {"length", "stop"}
    assert all(len(t) <= s.max_tokens for (t, _), s in zip(alone, specs, strict=True))


async def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(aclient: AsyncClient):
    opts = dict(temperature=1.0, seed=424242, max_tokens=80)
    alone = (await aclient.generate("the time traveller", **opts)).text
    crowd = [aclient.generate(p, max_tokens=80, temperature=1.0, seed=i + 1)
             for i, p in enumerate(PREFIXES)]
    results = await asyncio.gather(aclient.generate("the time traveller", **opts), *crowd,
                                   aclient.generate("the time traveller", **opts))
    assert results[0].text == alone == results[-1].text


# ------------------------------------------------------------------------ classification
TEXTS = [
    "a wonderful , moving film with a superb cast",
    "dull , lifeless and far too long",
    "not bad at all",
    "i did not like it",
    "the best movie of the year !",
    "the worst movie of the year !",
    "UPPER CASE SHOUTING ABOUT A GREAT MOVIE",
    "emoji 🙂🙂 and ünïcödé",
    "?",
    "an utterly forgettable experience , though the score is lovely",
    " ".join(["long"] * 300),  # longer than the classifier's sequence length: truncated
    "it's a film",
    "zzzzqqq unknownword",
    "charming",
]


def fifty_texts() -> list[str]:
    rng = random.Random(3)
    words = " ".join(TEXTS).split()
    extra = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
             for _ in range(50 - len(TEXTS))]
    return TEXTS + extra


async def test_classifier_scores_do_not_depend_on_batch_mates(make_server, connect):
    texts = fifty_texts()
    server = await make_server()
    async with connect(server) as client:
        alone = [(await client.classify(t))[0].score for t in texts]
        in_one_call = [r.score for r in await client.classify(texts)]
        chunks = [texts[i:i + 5] for i in range(0, len(texts), 5)]
        spread = [r.score for rs in await asyncio.gather(*(client.classify(c) for c in chunks))
                  for r in rs]
        reversed_call = [r.score for r in await client.classify(texts[::-1])][::-1]
    unbatched = await make_server(classify_max_batch_size=1)
    async with connect(unbatched) as client:
        one_by_one = [r.score for rs in await asyncio.gather(*(client.classify(t) for t in texts))
                      for r in rs]
    for name, scores in [("one call", in_one_call), ("concurrent calls", spread),
                         ("reversed", reversed_call), ("batch size 1", one_by_one)]:
        assert scores == pytest.approx(alone, abs=1e-5), name
    assert all(0.0 <= s <= 1.0 for s in alone)


async def test_classify_labels_and_explain(aclient: AsyncClient, sentiment_config):
    from rnnserve.models.text import WordTokenizer, WordTokenizerConfig

    tok_cfg = sentiment_config["tokenizer"]
    tokenizer = WordTokenizer(WordTokenizerConfig(**tok_cfg))
    seq_length = tok_cfg["seq_length"]
    results = await aclient.classify(TEXTS, explain=True)
    plain = await aclient.classify(TEXTS)
    assert len(results) == len(TEXTS)
    for text, result, bare in zip(TEXTS, results, plain, strict=True):
        assert result.label == ("positive" if result.score >= 0.5 else "negative"), text
        assert result.score == pytest.approx(bare.score, abs=1e-6)
        assert bare.tokens == ()
        assert (result.model, result.model_version) == ("sentiment", 1)
        expected = tokenizer.tokenize(text)
        if len(expected) > seq_length:
            expected = (expected[:seq_length] if tok_cfg.get("truncation", "post") == "post"
                        else expected[-seq_length:])
        assert [t.token for t in result.tokens] == expected, text
        weights = [t.weight for t in result.tokens]
        assert all(0.0 <= w <= 1.0 for w in weights), text
        # attention is a softmax over every position, padding included: the real tokens hold
        # at most all of it
        assert sum(weights) <= 1.0 + 1e-4, text
