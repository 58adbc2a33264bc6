"""rnnserve.models: recurrent architectures, vocabularies, text handling, checkpoints, training.

torch only (never grpc/asyncio). Modules, one concept each:

- :mod:`.vocab` — d2l ``Vocab`` (index 0 ``<unk>``, frequency order, first-seen ties);
- :mod:`.text` — d2l corpus normalisation, character normalisation, word tokenizer;
- :mod:`.charlm` — seed 000's ``RNNModel`` (nn.RNN/GRU/LSTM) with a fast serving step;
- :mod:`.forecast` — seed 002's sine-wave forecaster ``Net`` generalised (``Forecaster``);
- :mod:`.scratch` — the hand-written RNN/LSTM steps of seeds 000/004 (oracles, converters);
- :mod:`.sentiment` — seed 001's ``SentimentRNN`` with attention weights for ``explain``;
- :mod:`.kinds` — ``ModelKind`` and one class per kind (config checks, module, assets);
- :mod:`.repository` — the model repository layout (names, versions, paths);
- :mod:`.checkpoint` — config validation, the safe weights loader, saving a version;
- :mod:`.training` — training functions and the ``rnnserve train`` command.
"""

from .charlm import CharLMConfig, RNNModel, predict_greedy
from .checkpoint import (
    NAME_RE,
    CheckpointError,
    LoadedModel,
    ModelSpec,
    find_models,
    list_model_dirs,
    load_model,
    read_config,
    save_model,
    select_version,
)
from .forecast import ForecastConfig, Forecaster, forecast
from .kinds import KindSpec, ModelKind, kind_spec
from .sentiment import SentimentConfig, SentimentRNN
from .text import (
    CharNormalization,
    WordTokenizer,
    WordTokenizerConfig,
    load_corpus,
    normalize_chars,
    normalize_corpus_line,
)
from .vocab import Vocab

__all__ = [
    "NAME_RE",
    "CharLMConfig",
    "CharNormalization",
    "CheckpointError",
    "ForecastConfig",
    "Forecaster",
    "KindSpec",
    "LoadedModel",
    "ModelKind",
    "ModelSpec",
    "RNNModel",
    "SentimentConfig",
    "SentimentRNN",
    "Vocab",
    "WordTokenizer",
    "WordTokenizerConfig",
    "find_models",
    "forecast",
    "kind_spec",
    "list_model_dirs",
    "load_corpus",
    "load_model",
    "normalize_chars",
    "normalize_corpus_line",
    "predict_greedy",
    "read_config",
    "save_model",
    "select_version",
]
