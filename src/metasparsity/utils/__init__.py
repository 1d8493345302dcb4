"""Bottom layer: errors, registries, file I/O, run directories, the compute device."""

from metasparsity.utils.errors import UserError
from metasparsity.utils.registry import Registry

__all__ = ["UserError", "Registry"]
