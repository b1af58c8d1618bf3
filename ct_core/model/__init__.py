"""The paper's model: configuration, relative attention, layers, compressive
memory (Algorithm 1), compression functions and their losses (Algorithm 2),
the language model and cached sampling.

Imports nothing from :mod:`ct_core.data`, :mod:`ct_core.train`,
:mod:`ct_core.cli` or a front end (a test checks it).
"""

from ct_core.model.config import ModelConfig
from ct_core.model.lm import CompressiveTransformerLM, LMOutput
from ct_core.model.memory import MemoryState
from ct_core.model.sampling import IncrementalDecoder, generate, sample_next

__all__ = ["CompressiveTransformerLM", "IncrementalDecoder", "LMOutput", "MemoryState", "ModelConfig", "generate",
           "sample_next"]
