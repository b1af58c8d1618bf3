"""Training and evaluation: the run configuration, the trainer, complete
evaluation passes, optimizer and schedule, checkpoints, data parallelism,
metric logging and the runtime (device, precision, seeding). Imports
:mod:`ct_core.model` and :mod:`ct_core.data`, never :mod:`ct_core.cli`."""
