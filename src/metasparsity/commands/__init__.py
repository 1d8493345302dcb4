"""Sub-commands of the ``metasparsity`` CLI (one module each, see :mod:`metasparsity.cli`)."""
