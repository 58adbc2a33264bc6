"""The model repository format and its loader: every refusal names the file and the mismatch."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.models.checkpoint import (
    CheckpointError,
    expected_shapes,
    find_models,
    list_model_dirs,
    load_model,
    read_config,
    save_model,
    select_version,
    validate_name,
)

CHARS = ["<unk>", " ", "a", "b", "c"]


def charlm_config(**arch):
    a = {"cell": "lstm", "vocab_size": len(CHARS), "num_hiddens": 6, "num_layers": 2, **arch}
    return {"name": "lm", "version": 1, "kind": "charlm", "architecture": a, "vocab": CHARS,
            "text": {"normalization": "none"}, "metrics": {"split": "none", "perplexity": 1.0}}


def make_version(repo: Path, name="lm", version=1, config=None) -> Path:
    config = dict(config or charlm_config())
    config.update(name=name, version=version)
    vdir = repo / name / str(version)
    torch.manual_seed(0)
    net = RNNModel.from_config(CharLMConfig(**config["architecture"]))
    save_model(vdir, net, config)
    return vdir


class RunsCommand:
    """Unpickling this would run a shell command (the classic pickle RCE payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_save_load_round_trip(tmp_path):
    vdir = make_version(tmp_path)
    m = load_model(vdir, repo=tmp_path)
    assert (m.name, m.version, m.kind, m.normalization) == ("lm", 1, "charlm", "none")
    assert m.vocab.idx_to_token == CHARS and not m.module.training
    assert m.device == torch.device("cpu") and m.num_parameters > 0
    assert oct((vdir / "model.pt").stat().st_mode & 0o777) == "0o644"


def test_missing_key(tmp_path):
    vdir = make_version(tmp_path)
    sd = torch.load(vdir / "model.pt", weights_only=True)
    del sd["rnn.weight_hh_l1"]
    torch.save(sd, vdir / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: missing key 'rnn\.weight_hh_l1'"):
        load_model(vdir)


def test_unexpected_key(tmp_path):
    vdir = make_version(tmp_path)
    sd = torch.load(vdir / "model.pt", weights_only=True)
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, vdir / "model.pt")
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        load_model(vdir)


def test_wrong_shape(tmp_path):
    vdir = make_version(tmp_path)
    sd = torch.load(vdir / "model.pt", weights_only=True)
    sd["rnn.weight_hh_l0"] = torch.zeros(24, 7)
    torch.save(sd, vdir / "model.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(vdir)
    msg = str(err.value)
    assert str(vdir / "model.pt") in msg
    assert "key 'rnn.weight_hh_l0' has shape [24, 7], config expects [24, 6]" in msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch_save", "raw_pickle"])
def test_pickled_object_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    vdir = make_version(tmp_path / "repo")
    sd = torch.load(vdir / "model.pt", weights_only=True)
    sd["linear.bias"] = RunsCommand(marker)
    if how == "torch_save":
        torch.save(sd, vdir / "model.pt")
    else:
        (vdir / "model.pt").write_bytes(pickle.dumps(sd))
    with pytest.raises(CheckpointError, match="refused: holds pickled objects"):
        load_model(vdir)
    assert not marker.exists()
    # the payload is real: unpickling it without weights_only would run the command
    pickle.loads(pickle.dumps(RunsCommand(marker)))
    assert marker.exists()


def test_config_is_checked_before_tensors(tmp_path):
    marker = tmp_path / "pwned"
    vdir = make_version(tmp_path / "repo")
    torch.save({"x": RunsCommand(marker)}, vdir / "model.pt")
    cfg = json.loads((vdir / "config.json").read_text())
    cfg["architecture"]["cell"] = "transformer"
    (vdir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid config at architecture/cell"):
        load_model(vdir)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 10, 100, 1000, -50])
def test_truncated_or_corrupt_file(tmp_path, keep):
    vdir = make_version(tmp_path)
    data = (vdir / "model.pt").read_bytes()
    (vdir / "model.pt").write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError, match=r"model\.pt: (unreadable or truncated|refused)"):
        load_model(vdir)


def test_garbage_bytes(tmp_path):
    vdir = make_version(tmp_path)
    (vdir / "model.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_model(vdir)


def test_non_dense_non_float_non_dict(tmp_path):
    vdir = make_version(tmp_path)
    sd = torch.load(vdir / "model.pt", weights_only=True)
    for bad, msg in [(sd["linear.bias"].to_sparse(), "not a dense tensor"),
                     (sd["linear.bias"].long(), "expected floating point"),
                     ("text", "is a str, not a tensor")]:
        torch.save({**sd, "linear.bias": bad}, vdir / "model.pt")
        with pytest.raises(CheckpointError, match=msg):
            load_model(vdir)
    torch.save(torch.zeros(3), vdir / "model.pt")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_model(vdir)


def test_size_limits(tmp_path):
    vdir = make_version(tmp_path)
    with pytest.raises(CheckpointError, match="byte limit"):
        load_model(vdir, max_bytes=1000)
    cfg = json.loads((vdir / "config.json").read_text())
    cfg["architecture"]["num_hiddens"] = 16000
    (vdir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="architecture needs .* bytes"):
        load_model(vdir)


@pytest.mark.parametrize("name", ["", "Upper", "-dash", ".hidden", "a/b", "a" * 65, "sp ace", "é"])
def test_bad_names(name):
    with pytest.raises(CheckpointError, match="invalid model name"):
        validate_name(name)


def test_list_model_dirs_skips_bad_names_and_escapes(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    make_version(repo, "good")
    make_version(outside, "evil")
    (repo / "Bad_Name").mkdir()
    (repo / "escape").symlink_to(outside / "evil", target_is_directory=True)
    (repo / "file.txt").write_text("x")
    assert [n for n, _ in list_model_dirs(repo)] == ["good"]
    with pytest.raises(CheckpointError, match="outside"):
        load_model(repo / "escape" / "1", repo=repo)
    assert [s.name for s in find_models(repo)] == ["good"]


def test_weights_symlink_escape_refused(tmp_path):
    vdir = make_version(tmp_path / "repo")
    other = make_version(tmp_path / "elsewhere")
    (vdir / "model.pt").unlink()
    (vdir / "model.pt").symlink_to(other / "model.pt")
    with pytest.raises(CheckpointError, match="outside"):
        load_model(vdir)


def test_version_selection(tmp_path):
    for v in (1, 2, 10):
        make_version(tmp_path, version=v)
    (tmp_path / "lm" / "latest").mkdir()
    assert select_version(tmp_path / "lm") == 10
    assert select_version(tmp_path / "lm", config_pin=2) == 2
    with pytest.raises(CheckpointError, match="pinned version 3 not found"):
        select_version(tmp_path / "lm", config_pin=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no numeric version"):
        select_version(tmp_path / "empty")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c.pop("kind"), "'kind' is a required property"),
        (lambda c: c.update(kind="regressor"), "kind"),
        (lambda c: c["architecture"].update(vocab_size=9), "vocab_size is 9 but vocab has 5"),
        (lambda c: c.update(vocab=["a", "<unk>", "b", "c", "d"]), "vocab/0"),
        (lambda c: c.update(vocab=["<unk>", "a", "a", "c", "d"]), "non-unique"),
        (lambda c: c["architecture"].update(num_layers=0), "architecture/num_layers"),
        (lambda c: c["architecture"].update(extra=1), "Additional properties"),
        (lambda c: c["text"].update(normalization="upper"), "text/normalization"),
        (lambda c: c.update(name="other"), "does not match directory"),
        (lambda c: c.update(version=7), "does not match directory"),
    ],
)
def test_invalid_config(tmp_path, mutate, match):
    vdir = make_version(tmp_path)
    cfg = json.loads((vdir / "config.json").read_text())
    mutate(cfg)
    (vdir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match) as err:
        read_config(vdir)
    assert "config.json" in str(err.value)


def test_config_not_json_or_missing(tmp_path):
    vdir = make_version(tmp_path)
    (vdir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(vdir)
    (vdir / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_model(vdir)


def test_classifier_config_cross_checks(tmp_path):
    cfg = {"kind": "classifier", "vocab": ["<unk>", "<pad>", "x"],
           "architecture": {"type": "sentiment_rnn", "vocab_size": 3, "embedding_dim": 4,
                            "hidden_dim": 4, "no_layers": 1},
           "tokenizer": {"seq_length": 5, "pad_index": 3}}
    vdir = tmp_path / "sa" / "1"
    vdir.mkdir(parents=True)
    (vdir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="pad_index 3 outside vocab"):
        read_config(vdir)
    cfg["tokenizer"] = {"seq_length": 5, "pad_index": 1, "pattern": "(unclosed"}
    (vdir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="invalid config"):
        read_config(vdir)


def test_save_model_refuses_mismatched_module(tmp_path):
    net = RNNModel.from_config(CharLMConfig(cell="gru", vocab_size=5, num_hiddens=6))
    with pytest.raises(CheckpointError, match="does not match config"):
        save_model(tmp_path / "lm" / "1", net, charlm_config())
    assert not (tmp_path / "lm" / "1" / "model.pt").exists()


def test_expected_shapes_use_no_memory():
    shapes = expected_shapes(charlm_config(num_hiddens=4096))
    assert shapes["rnn.weight_hh_l0"] == (4 * 4096, 4096)


def test_schema_file_is_valid_json_schema():
    import jsonschema
    from rnnserve.models.checkpoint import config_schema

    jsonschema.Draft202012Validator.check_schema(config_schema())
