"""The MLServer runtime `make bench-peers` serves rnnserve's shipped ``sentiment`` model with.

Runs inside MLServer's own virtual environment (``.venv/peers``), never in rnnserve's:
it imports only ``mlserver`` and ``rnnserve.models`` (torch only). ``load`` reads the version
directory named by the model settings' ``parameters.uri`` with rnnserve's safe loader;
``predict`` takes one BYTES input ``text`` of shape ``[N]`` (MLServer's adaptive batcher
concatenates the requests' inputs along the first axis), tokenizes every text with the model's
own tokenizer and vocabulary, scores the padded rows in one call of the module's ``score`` under
``torch.inference_mode()`` with one torch thread, and answers one FP32 output ``score``
(P(positive), shape ``[N]``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from rnnserve.models import load_model


class SentimentRuntime(MLModel):
    """rnnserve's SentimentRNN behind MLServer's ``MLModel`` interface."""

    async def load(self) -> bool:
        torch.set_num_threads(1)
        uri = self.settings.parameters.uri if self.settings.parameters else None
        if not uri:
            raise ValueError("model settings need parameters.uri: a sentiment version directory")
        self._loaded = load_model(Path(uri), "cpu")
        if self._loaded.tokenizer is None:
            raise ValueError(f"{uri} is not a classifier")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])  # N texts
        model = self._loaded
        rows = [model.tokenizer.encode(text, model.vocab).ids for text in texts]
        with torch.inference_mode():
            probs, _ = model.module.score(torch.tensor(rows, dtype=torch.long))  # (N,), (N, S)
        scores = probs.float().tolist()
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="score", shape=[len(scores)], datatype="FP32",
                                    data=scores)],
        )
