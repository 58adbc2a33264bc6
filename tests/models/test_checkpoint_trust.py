"""Issue 9 B, C, D: checkpoints bounded before they are trusted, values that cannot be served,
and refusal messages that name the real cause."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.models.checkpoint import (
    CheckpointError,
    config_schema,
    list_model_dirs,
    load_model,
    validate_config,
    validate_name,
)

from .test_checkpoint import charlm_config, make_version


def _state(vdir: Path) -> dict[str, torch.Tensor]:
    return torch.load(vdir / "model.pt", weights_only=True)


def _refusal(vdir: Path, repo: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(vdir, repo=repo)
    return str(caught.value)


# ------------------------------------------------------------------ B: bounded before trusted
def test_a_compressed_weights_archive_is_refused_before_torch_reads_it(tmp_path):
    vdir = make_version(tmp_path)
    path = vdir / "model.pt"
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info, data in entries:
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
    assert torch.load(path, weights_only=True)  # torch itself would inflate it
    message = _refusal(vdir, tmp_path)
    assert "compressed" in message and "model.pt" in message


def test_a_weights_entry_larger_than_the_architecture_needs_is_refused(tmp_path):
    vdir = make_version(tmp_path)
    state = _state(vdir)
    key = "linear.weight"
    big = torch.zeros(state[key].numel() + 2**20)  # a 4 MiB storage behind a small view
    big[: state[key].numel()] = state[key].flatten()
    state[key] = big[: state[key].numel()].view(state[key].shape)
    torch.save(state, vdir / "model.pt")
    message = _refusal(vdir, tmp_path)
    assert "bytes" in message and "architecture" in message


def test_config_validation_has_no_quadratic_unique_items(tmp_path):
    def walk(node):
        if isinstance(node, dict):
            assert "uniqueItems" not in node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config_schema())
    cfg = charlm_config()
    # numbers mixed with strings: jsonschema's uniqueItems compared every pair (O(n²))
    cfg["vocab"] = ["<unk>"] + [i if i % 2 else str(i) for i in range(1, 200_000)]
    cfg["architecture"]["vocab_size"] = len(cfg["vocab"])
    with pytest.raises(CheckpointError, match=r"vocab/1"):
        validate_config(cfg)
    dup = charlm_config()
    dup["vocab"] = ["<unk>", " ", "a", "b", "a"]
    with pytest.raises(CheckpointError, match=r"vocab/4.*'a'.*duplicate|duplicate.*'a'"):
        validate_config(dup)


def test_a_decode_step_allocates_nothing_of_vocab_squared(tmp_path):
    vocab_size = 3000
    net = RNNModel.from_config(CharLMConfig(cell="gru", vocab_size=vocab_size, num_hiddens=4))
    tokens = torch.tensor([5, 2999, 0])
    logits, _ = net.step(tokens, net.zero_state(3))
    big = [name for name, value in vars(net).items()
           if isinstance(value, torch.Tensor) and value.numel() >= vocab_size * vocab_size]
    assert big == []
    expected, _ = net.prefill([[5], [2999], [0]], net.zero_state(3))
    assert torch.equal(logits, expected)


# ------------------------------------------------------------------ C: values that can't serve
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_tensor_is_refused_naming_its_key(tmp_path, value):
    vdir = make_version(tmp_path)
    state = _state(vdir)
    state["linear.bias"][1] = value
    torch.save(state, vdir / "model.pt")
    message = _refusal(vdir, tmp_path)
    assert "'linear.bias'" in message and ("NaN" in message or "inf" in message)


@pytest.mark.parametrize("where", ["vocab", "labels"])
def test_an_ill_formed_string_is_refused_naming_the_entry(tmp_path, where):
    cfg = charlm_config()
    if where == "vocab":
        cfg["vocab"] = ["<unk>", " ", "a", "b", "\ud83d"]
        pattern = r"vocab/4"
    else:
        cfg = {"kind": "classifier", "vocab": ["<unk>", "<pad>", "good"],
               "architecture": {"type": "sentiment_rnn", "vocab_size": 3, "embedding_dim": 4,
                                "hidden_dim": 4, "no_layers": 1},
               "tokenizer": {"seq_length": 8, "pad_index": 1},
               "labels": ["negative", "\udc00"]}
        pattern = r"labels/1"
    with pytest.raises(CheckpointError, match=pattern):
        validate_config(cfg)


def test_an_ill_formed_vocab_in_a_file_is_refused(tmp_path):
    vdir = make_version(tmp_path)
    cfg = json.loads((vdir / "config.json").read_text())
    text = json.dumps(cfg).replace('"c"', '"\\ud83d"')  # written as JSON escapes, as an attacker would
    (vdir / "config.json").write_text(text)
    assert "vocab/4" in _refusal(vdir, tmp_path)


# ------------------------------------------------------------------ D: the real cause
def test_a_data_parallel_checkpoint_is_named_as_such(tmp_path):
    vdir = make_version(tmp_path)
    state = {f"module.{k}": v for k, v in _state(vdir).items()}
    torch.save(state, vdir / "model.pt")
    message = _refusal(vdir, tmp_path)
    assert "DataParallel" in message and "module." in message


def test_a_whole_pickled_module_names_the_global_and_the_fix(tmp_path):
    vdir = make_version(tmp_path)
    net = RNNModel.from_config(CharLMConfig(**charlm_config()["architecture"]))
    torch.save(net, vdir / "model.pt")
    message = _refusal(vdir, tmp_path)
    assert "state_dict()" in message
    assert "RNNModel" in message
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", message), repr(message)


def test_names_match_the_whole_string(tmp_path):
    for bad in ("timemachine\n", "a\n", "x\r"):
        with pytest.raises(CheckpointError):
            validate_name(bad)
    good = make_version(tmp_path, name="lm")
    (tmp_path / "lm\n").mkdir()
    assert good.is_dir()
    assert [name for name, _ in list_model_dirs(tmp_path)] == ["lm"]
