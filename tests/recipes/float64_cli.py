"""``python tests/recipes/float64_cli.py ARGS``: the ``metasparsity`` command computing in float64.

The distributed equivalence tests run both sides (one process and ``torch.distributed.run``)
through this script.  In float32 a reduction split over ranks rounds differently from the same
reduction in one process (~1e-7 relative), and Adam turns that noise into a whole step
(``lr·g/(|g|+ε)`` flips with the sign of g) wherever a gradient is within rounding of zero: how
many such elements there are depends on the CPU's vector width and the thread split, so no
float32 tolerance is safe on every machine.  In float64 the noise (~1e-16·|terms|) is far below
Adam's ε = 1e-8, where ``g/(|g|+ε)`` is Lipschitz (1/ε): the runs then agree to ~lr·1e-8 per step,
a tolerance derived from the arithmetic, not from one machine.
"""

from __future__ import annotations

import sys

import torch

from metasparsity.cli import main
from metasparsity.data.synthscenes import SynthScenes

_getitem = SynthScenes.__getitem__


def _getitem_f64(self, i):
    x, y = _getitem(self, i)
    return x.double(), {t: v.double() if v.is_floating_point() else v for t, v in y.items()}


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    SynthScenes.__getitem__ = _getitem_f64
    sys.exit(main(sys.argv[1:]))
