"""Vocab: d2l semantics (index 0 <unk>, descending frequency, ties in first-seen order)."""

from pathlib import Path

import pytest
from rnnserve.models.text import load_corpus
from rnnserve.models.vocab import Vocab

TIMEMACHINE = Path(__file__).resolve().parents[3] / "shared/data/timemachine/timemachine.txt"


def test_order_is_frequency_then_first_seen():
    # freqs: b=3, a=2, c=2, d=1, e=1 ; a seen before c, e seen before d
    vocab = Vocab.build(list("baebcacbd"))
    assert vocab.idx_to_token == ["<unk>", "b", "a", "c", "e", "d"]
    assert vocab.token_to_idx == {t: i for i, t in enumerate(vocab.idx_to_token)}


def test_ties_follow_first_seen_not_alphabet():
    assert Vocab.build(["zeta", "alpha", "mid"]).idx_to_token == ["<unk>", "zeta", "alpha", "mid"]


def test_unknown_maps_to_zero_and_d2l_getitem():
    vocab = Vocab.build("hello")
    assert vocab.UNK == 0 and vocab["<unk>"] == 0
    assert vocab["?"] == 0 and vocab["\ud800"] == 0
    assert vocab[["h", "?", "l"]] == [vocab["h"], 0, vocab["l"]]
    assert vocab.encode("hex") == [vocab["h"], vocab["e"], 0]
    assert "".join(vocab.to_tokens(vocab.encode("hello"))) == "hello"
    assert vocab.decode([0]) == ["<unk>"]
    with pytest.raises(IndexError):
        vocab.to_tokens([len(vocab)])


def test_min_freq_reserved_and_max_size():
    tokens = ["a", "a", "b", "b", "c", "<pad>"]
    v = Vocab.build(tokens, min_freq=2, reserved_tokens=["<pad>"])
    assert v.idx_to_token == ["<unk>", "<pad>", "a", "b"]
    assert Vocab.build(tokens, max_size=3).idx_to_token == ["<unk>", "a", "b"]
    assert Vocab.build(["<unk>", "x"]).idx_to_token == ["<unk>", "x"]  # no duplicate <unk>


def test_rebuild_from_config_list():
    v = Vocab.build("the time machine")
    assert Vocab(list(v.idx_to_token)) == v
    with pytest.raises(ValueError):
        Vocab(["a", "<unk>"])
    with pytest.raises(ValueError):
        Vocab(["<unk>", "a", "a"])
    with pytest.raises(ValueError):
        Vocab([])


def test_timemachine_char_vocab_is_d2ls():
    if not TIMEMACHINE.is_file():
        pytest.skip(f"{TIMEMACHINE} not available")
    vocab = Vocab.build(load_corpus(TIMEMACHINE))
    assert len(vocab) == 28
    assert vocab.idx_to_token[:10] == ["<unk>", " ", "e", "t", "a", "i", "n", "o", "s", "h"]
