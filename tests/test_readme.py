"""The README's worked example: a model saved with the seed code serves as the README says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from rnnserve.client import AsyncClient
from seed_oracles import RNNModel, SeedVocab, predict_ch8
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- marker -->`` in the README."""
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no block after <!-- {marker} -->"
    return match.group(1)


async def test_readme_seed_example_serves_like_predict_ch8(tmp_path, monkeypatch, make_server):
    shipped = json.loads((ROOT / "model_repository/timemachine/1/config.json").read_text())
    vocab = SeedVocab(shipped["vocab"])
    torch.manual_seed(3)
    net = RNNModel(nn.GRU(len(vocab), 256), vocab_size=len(vocab))
    for p in net.parameters():  # an untrained net predicts one character; spread its weights
        nn.init.normal_(p, std=0.3)
    monkeypatch.chdir(tmp_path)
    exec(readme_block("readme-seed-save"), {"net": net, "vocab": vocab})

    written = json.loads((tmp_path / "model_repository/mygru/1/config.json").read_text())
    documented = json.loads(readme_block("readme-seed-config"))
    assert written == documented

    server = await make_server(model_repository=tmp_path / "model_repository")
    async with AsyncClient(server.target) as client:
        for prefix in ("time traveller", "the Time Machine!"):
            got = await client.generate(prefix, model="mygru", max_tokens=60)
            # predict_ch8 echoes the prefix with unknown characters rendered as "<unk>"
            echoed = "".join(vocab.idx_to_token[vocab[c]] for c in prefix)
            want = predict_ch8(prefix, 60, net, vocab, "cpu")[len(echoed):]
            assert got.text == want
