"""Compressive Transformer core: modality-agnostic model, memory, training.

Example::

    from ct_core import ModelConfig, CompressiveTransformerLM
    model = CompressiveTransformerLM(ModelConfig(vocab_size=256, seq_len=16, mem_len=16,
                                                 cmem_len=8, compression_rate=4))
"""

from ct_core.config import ModelConfig
from ct_core.errors import CheckpointError, ConfigError, DataError, UserError
from ct_core.memory import MemoryState
from ct_core.model import CompressiveTransformerLM, LMOutput

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CompressiveTransformerLM",
    "ConfigError",
    "DataError",
    "LMOutput",
    "MemoryState",
    "ModelConfig",
    "UserError",
    "__version__",
]
