"""Seed checkpoints load as they are: the seed classes (verbatim, as oracles) vs rnnserve.models.

RNNModel and predict_ch8 are seed 000's, SentimentRNN is seed 001's. A state_dict saved from
the seed class is written into a model-repository directory with a config.json, loaded with
``load_model`` (strict, weights_only) and must give the same numbers.
"""

import json

import pytest
import torch
from rnnserve.models.charlm import predict_greedy
from rnnserve.models.checkpoint import load_model
from rnnserve.models.vocab import Vocab
from seed_oracles import RNNModel, SentimentRNN, predict_ch8
from torch import nn

# ----------------------------------------------------------------- helpers
CHARS = ["<unk>", " ", "e", "t", "a", "i", "n", "o", "s", "h", "r", "d", "l", "m", "u", "c"]
LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def _write_version(tmp_path, name, config, state_dict):
    vdir = tmp_path / "repo" / name / "1"
    vdir.mkdir(parents=True)
    (vdir / "config.json").write_text(json.dumps(config))
    torch.save(state_dict, vdir / "model.pt")
    return vdir


def _sharpen(net, scale=3.0):
    # make the random model's predictions less flat so greedy decoding is not a near tie
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_seed_charlm_checkpoint_round_trip(tmp_path, cell, num_layers):
    torch.manual_seed(0)
    V, H = len(CHARS), 24
    seed_net = RNNModel(LAYERS[cell](V, H, num_layers=num_layers), vocab_size=V)
    _sharpen(seed_net)
    seed_net.eval()
    config = {"kind": "charlm", "vocab": CHARS,
              "architecture": {"cell": cell, "vocab_size": V, "num_hiddens": H,
                               "num_layers": num_layers},
              "text": {"normalization": "none"}}
    vdir = _write_version(tmp_path, "seedlm", config, seed_net.state_dict())
    loaded = load_model(vdir)
    ours = loaded.module
    assert set(ours.state_dict()) == set(seed_net.state_dict())

    x = torch.randint(0, V, (3, 7))
    with torch.no_grad():
        y_seed, s_seed = seed_net(x, seed_net.begin_state("cpu", batch_size=3))
        y_ours, s_ours = ours(x, ours.begin_state("cpu", batch_size=3))
    torch.testing.assert_close(y_ours, y_seed, rtol=0, atol=1e-6)
    s_seed, s_ours = ours.to_serving_state(s_seed), ours.to_serving_state(s_ours)
    for a, b in zip(s_ours, s_seed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    # greedy generation equals the seed's predict_ch8 (the fast path vs the seed's loop)
    vocab = Vocab(CHARS)
    for prefix in ["the ", "a", "sent?", "ths tn heat"]:
        with torch.no_grad():
            expected = predict_ch8(prefix, 30, seed_net, vocab, "cpu")
        prefix_ids = vocab.encode(prefix)  # '?' is unknown -> '<unk>' in predict_ch8's output too
        got = "".join(vocab.to_tokens(prefix_ids + predict_greedy(ours, prefix_ids, 30)))
        assert got == expected


def test_seed_charlm_loads_into_our_class_directly():
    torch.manual_seed(1)
    seed_net = RNNModel(nn.LSTM(10, 8, num_layers=2), vocab_size=10)
    from rnnserve.models.charlm import RNNModel as Ours

    ours = Ours(nn.LSTM(10, 8, num_layers=2), vocab_size=10)
    ours.load_state_dict(seed_net.state_dict(), strict=True)
    seed_back = RNNModel(nn.LSTM(10, 8, num_layers=2), vocab_size=10)
    seed_back.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("no_layers", [1, 2])
def test_seed_sentiment_checkpoint_round_trip(tmp_path, bidirectional, no_layers):
    torch.manual_seed(0)
    words = ["<unk>", "<pad>", "good", "bad", "movie", "not", "great", "boring"]
    seed_net = SentimentRNN(no_layers, len(words), 12, 10, 1, drop_prob=0.3,
                            bidirectional=bidirectional).eval()
    config = {"kind": "classifier", "vocab": words,
              "architecture": {"type": "sentiment_rnn", "vocab_size": len(words),
                               "embedding_dim": 10, "hidden_dim": 12, "no_layers": no_layers,
                               "output_dim": 1, "drop_prob": 0.3, "bidirectional": bidirectional},
              "tokenizer": {"seq_length": 6, "padding": "pre", "pad_index": 1},
              "labels": ["negative", "positive"]}
    vdir = _write_version(tmp_path, "seedsa", config, seed_net.state_dict())
    loaded = load_model(vdir)
    ours = loaded.module
    assert not ours.training
    x = torch.stack([torch.tensor(loaded.tokenizer.encode(t, loaded.vocab).ids)
                     for t in ["good movie", "not great , boring", "bad bad bad bad bad bad bad"]])
    with torch.no_grad():
        p_seed, (h_seed, c_seed) = seed_net(x)
        p_ours, (h_ours, c_ours) = ours(x)
    torch.testing.assert_close(p_ours, p_seed, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_ours, h_seed, rtol=0, atol=1e-6)
    scores, weights = ours.score(x)
    torch.testing.assert_close(scores, p_seed[:, 0], rtol=0, atol=1e-6)
    assert weights.shape == x.shape
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    # a text's score does not depend on its batch mates
    alone, _ = ours.score(x[1:2])
    torch.testing.assert_close(alone, scores[1:2], rtol=0, atol=1e-5)
