"""Compressive Transformer core: modality-agnostic model, memory, training.

Four subpackages, imported in one direction (cli -> train -> data, model):

- :mod:`ct_core.model`: the paper's model, memory and sampling;
- :mod:`ct_core.data`: the front-end seam, token stores, the stream batcher;
- :mod:`ct_core.train`: run configuration, trainer, evaluation, checkpoints;
- :mod:`ct_core.cli`: the console scripts.

Example::

    from ct_core import ModelConfig, CompressiveTransformerLM, load_model
    trained = load_model("runs/demo/checkpoints/last.pt")   # or a ct-export .safetensors file
    model = CompressiveTransformerLM(ModelConfig(vocab_size=256, seq_len=16, mem_len=16,
                                                 cmem_len=8, compression_rate=4))
"""

from ct_core.errors import CheckpointError, ConfigError, DataError, UserError, WriteError
from ct_core.model import (
    CompressiveTransformerLM,
    IncrementalDecoder,
    LMOutput,
    MemoryState,
    ModelConfig,
    generate,
    sample_next,
)
from ct_core.train.model_loading import load_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CompressiveTransformerLM",
    "ConfigError",
    "DataError",
    "IncrementalDecoder",
    "LMOutput",
    "MemoryState",
    "ModelConfig",
    "UserError",
    "WriteError",
    "__version__",
    "generate",
    "load_model",
    "sample_next",
]
