"""Compressive Transformer core: modality-agnostic model, memory, training."""

__version__ = "0.1.0"
