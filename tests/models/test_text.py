"""Text: d2l normalisation, character normalisation (concatenation-safe), word tokenizer."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rnnserve.models.text import (
    WordTokenizer,
    WordTokenizerConfig,
    load_corpus,
    normalize_chars,
    normalize_corpus_line,
    read_lines,
)
from rnnserve.models.vocab import Vocab

TIMEMACHINE = Path(__file__).resolve().parents[3] / "shared/data/timemachine/timemachine.txt"
ODD = ["\ud800", "\x00", "💥👍🏽", "e\u0301", "İstanbul", "ß", "\u202eevil", "\ufeff", "Ⅻ", "ﬁ",
       "日本語のテキスト", "\t\n\r\x0b\x0c", "", " " * 10]


def test_d2l_line_normalisation():
    assert normalize_corpus_line("The Time Machine, by H. G. Wells [1898]") == \
        "the time machine by h g wells"
    assert normalize_corpus_line("  ...  ") == ""


def test_load_corpus_concatenates_without_separator(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("Hello, World!\n\nIt's 1898.\n")
    assert load_corpus(p) == "hello worldit s"


def test_corpus_from_shared_data():
    if not TIMEMACHINE.is_file():
        pytest.skip(f"{TIMEMACHINE} not available")
    corpus = load_corpus(TIMEMACHINE)
    assert corpus.startswith("the time machine by h g wells")
    assert set(corpus) <= set(" abcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize("mode", ["none", "lower", "d2l"])
@given(a=st.text(), b=st.text())
def test_char_normalisation_is_per_char(mode, a, b):
    na, nb = normalize_chars(a, mode), normalize_chars(b, mode)
    assert normalize_chars(a + b, mode) == na + nb
    assert len(na) == len(a)


def test_char_normalisation_modes():
    assert normalize_chars("Time-Travel İ!", "none") == "Time-Travel İ!"
    assert normalize_chars("Time-Travel İ!", "lower") == "time-travel İ!"  # İ.lower() is 2 chars
    assert normalize_chars("Time-Travel é!", "d2l") == "time travel   "
    with pytest.raises(ValueError):
        normalize_chars("x", "upper")


def test_read_lines_falls_back_to_latin1(tmp_path):
    p = tmp_path / "mixed.txt"
    p.write_bytes("caf\u00e9 ok\n".encode() + b"na\xefve film\n\n  \n")
    assert read_lines(p) == ["café ok", "naïve film"]


VOCAB = Vocab(["<unk>", "<pad>", "the", "film", "is", "n't", "good", ",", "!"])


@pytest.mark.parametrize("text", ODD)
def test_tokenizer_never_raises_on_odd_unicode(text):
    tok = WordTokenizer(WordTokenizerConfig(seq_length=8, pad_index=1))
    ids, tokens, positions = tok.encode(text, VOCAB)
    assert len(ids) == 8
    assert all(0 <= i < len(VOCAB) for i in ids)
    assert len(tokens) == len(positions)


def test_tokenizer_rules():
    tok = WordTokenizer()
    assert tok.tokenize("The film isn't GOOD, at all!!") == \
        ["the", "film", "isn't", "good", ",", "at", "all", "!", "!"]
    assert tok.tokenize("ca n't") == ["ca", "n't"]
    assert tok.tokenize("naïve") == ["na", "ï", "ve"]  # non-ASCII letters are tokens of their own
    assert WordTokenizer(WordTokenizerConfig(lowercase=False)).tokenize("Film") == ["F", "ilm"]


def test_padding_sides_and_positions():
    text = "the film is good !"
    pre = WordTokenizer(WordTokenizerConfig(seq_length=8, padding="pre", pad_index=1))
    ids, tokens, pos = pre.encode(text, VOCAB)
    assert ids == [1, 1, 1, 2, 3, 4, 6, 8]
    assert tokens == ["the", "film", "is", "good", "!"] and pos == [3, 4, 5, 6, 7]
    post = WordTokenizer(WordTokenizerConfig(seq_length=8, padding="post", pad_index=1))
    ids, tokens, pos = post.encode(text, VOCAB)
    assert ids == [2, 3, 4, 6, 8, 1, 1, 1] and pos == [0, 1, 2, 3, 4]
    assert all(ids[p] == VOCAB[t] for p, t in zip(pos, tokens, strict=True))


def test_truncation_and_exact_length():
    text = "the film is n't good , the film"
    first = WordTokenizer(WordTokenizerConfig(seq_length=3, truncation="post", pad_index=1))
    last = WordTokenizer(WordTokenizerConfig(seq_length=3, truncation="pre", pad_index=1))
    assert first.encode(text, VOCAB).tokens == ["the", "film", "is"]
    assert last.encode(text, VOCAB).tokens == [",", "the", "film"]
    assert first.encode("", VOCAB).ids == [1, 1, 1]
    assert first.encode("zzz qqq", VOCAB).ids == [1, 0, 0]


def test_config_validation():
    for bad in ({"seq_length": 0}, {"padding": "left"}, {"truncation": "x"}, {"pad_index": -1},
                {"pattern": "("}):
        with pytest.raises(Exception):  # noqa: B017 - ValueError or re.error
            WordTokenizerConfig(**bad)
