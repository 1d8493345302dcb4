"""Bounds shared by settings, options and files: the config schema, the commands and the readers
of other files (a compact model's ``model.json``, ``data prepare``) take them from here."""

MAX_THREADS = 1024
"""The most torch CPU threads a setting, option or variable takes (``train.num_threads``,
``--threads``, ``$METASPARSITY_NUM_THREADS``)."""

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 4096
"""The square input sizes in pixels ``data.image_size`` takes (and ``data prepare --size``)."""

MAX_LATENCY_BATCH = 4096
"""The largest batch a latency measurement runs (``prune --batch-sizes``, dense and pruned)."""

MAX_LATENCY_PASSES = 100_000
"""The most timed or untimed passes per latency measurement (``prune --repeats``, ``--warmup``)."""
