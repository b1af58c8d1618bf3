"""From a corpus to batches: the front-end seam (:mod:`~ct_core.data.frontend`),
prepared token stores, the Transformer-XL stream batcher and the synthetic
corpus. Imports :mod:`ct_core.model` at most, never :mod:`ct_core.train` or
:mod:`ct_core.cli`."""
