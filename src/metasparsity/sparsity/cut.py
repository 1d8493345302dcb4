"""Is the backbone still connected to its input?  Zero groups can cut every path.

The group prox may zero every input channel of every convolution that reads some feature map:
at a ResNet's transition block, the first conv of the residual branch *and* the shortcut's
``downsample`` conv.  The stream is then a constant from that block on (a zero conv gives 0, its
BN a per-channel constant), and every task head sees the same features whatever the image: the
model predicts one answer for everything.  Removing a whole residual branch (an identity block
whose ``conv1`` has only zero inputs) is not such a cut, the identity carries the stream on; so
the test is not a per-layer rule but whether the output depends on the input at all.

:func:`backbone_cut` runs the backbone in eval mode on two different inputs: a stream that is cut
is *exactly* the same for both (a sum of exact zeros is exactly zero), a connected one is not.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def backbone_cut(model: nn.Module, example_input: torch.Tensor | tuple | list) -> str | None:
    """The first stage or block of the backbone (in forward order) from which its output no
    longer depends on the input, or None while it does.

    Args:
        model: a ``MultiTaskNet`` (its ``backbone`` is checked) or a backbone with
            ``forward_features``; left untouched (a copy runs, in eval mode).
        example_input: one floating-point input ``[1, C, H, W]`` (or a list / tuple holding it,
            as :func:`~metasparsity.sparsity.prune_zero_channels` takes it); a second one is
            drawn from a fixed generator.
    """
    net = getattr(model, "backbone", model)
    if not callable(getattr(net, "forward_features", None)):
        raise TypeError(f"backbone_cut needs a model whose 'backbone' has forward_features(x), or "
                        f"such a backbone; {type(net).__name__} has no forward_features")
    x1 = _one_input(example_input).detach()
    net = copy.deepcopy(net).eval()
    gen = torch.Generator(device="cpu").manual_seed(0)
    x2 = torch.randn(x1.shape, generator=gen, dtype=x1.dtype).to(x1.device) + 1.0
    if torch.equal(x1, x2):  # the same input twice would show a "cut" at the first stage
        x2 = x2 + 1.0
    # the stream after every stage and every block of a stage (ResNet: conv1 … layer4.1)
    watched = [n for n, _ in net.named_modules() if n and n.count(".") <= 1]
    outs: list[dict[str, torch.Tensor]] = [{}, {}]
    order: list[str] = []
    which = [0]

    def hook(name):
        def record(_m, _inp, out):
            if torch.is_tensor(out):
                outs[which[0]][name] = out.detach()
                if which[0] == 0 and name not in order:
                    order.append(name)
        return record

    modules = dict(net.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in watched]
    try:
        with torch.no_grad():
            f1 = net.forward_features(x1)
            which[0] = 1
            f2 = net.forward_features(x2)
    finally:
        for h in handles:
            h.remove()
    if not (torch.isfinite(f1).all() and torch.isfinite(f2).all()):
        raise ValueError("backbone_cut: the backbone's outputs are not finite (NaN or inf); "
                         "check its weights and example_input")
    if not torch.equal(f1, f2):
        return None
    for name in order:
        a, b = outs[0].get(name), outs[1].get(name)
        # a stage's stream (not a part of a block: a block's own convs may be constant legitimately)
        if a is not None and b is not None and a.shape == b.shape and torch.equal(a, b) \
                and _is_stream(name, modules):
            return name
    return "output"


def _one_input(example_input: torch.Tensor | tuple | list) -> torch.Tensor:
    x = example_input
    if isinstance(x, (tuple, list)) and len(x) == 1:
        x = x[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError("example_input must be one input tensor [N, C, H, W] (or a list / tuple "
                        f"holding it), got {type(example_input).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"example_input must be floating point (an image batch), got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"example_input is empty (shape {tuple(x.shape)}): a cut shows only on "
                         "at least one input")
    return x


def _is_stream(name: str, modules: dict[str, nn.Module]) -> bool:
    """A top-level module of the backbone or a child of a ``Sequential`` stage (a block)."""
    if "." not in name:
        return True
    parent = modules[name.rsplit(".", 1)[0]]
    return isinstance(parent, nn.Sequential)


def report_cut(model: nn.Module, example_input: torch.Tensor, run: str) -> str | None:
    """:func:`backbone_cut`, with a warning on stderr naming where the stream is cut; for the
    ``backbone_cut`` entry of a run's results."""
    import sys

    cut = backbone_cut(model, example_input)
    if cut is None:
        return None
    net = getattr(model, "backbone", model)
    # a cut made by zero groups has a conv with every input channel zero; without one, the
    # constant comes from elsewhere (e.g. activations that are zero for every input)
    by_zeros = any(isinstance(m, nn.Conv2d) and not m.weight.detach().any()
                   for m in net.modules())
    why = ("zero groups cut every path (every input channel of the convs that read the stream "
           "there is zero)" if by_zeros else
           "no conv has all its inputs zero, so not the zero groups: the activations there are "
           "the same for every input")
    print(f"warning: {run}: the backbone's output no longer depends on the image: from {cut} "
          f"on, {why}, so each task predicts the same for every input. A smaller λ or a larger "
          "sparsity target keeps a path (README, \"Limits\").", file=sys.stderr, flush=True)
    return cut


class CutWatch:
    """:func:`backbone_cut` at every validation of a run: warns on stderr when the backbone
    becomes cut (with the step, so that a long run can be stopped early) and notes when zero
    groups that revive connect it again.  Returns the cut, for the validation's log record."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.cut: str | None = None

    def __call__(self, model: nn.Module, example_input: torch.Tensor, step: int) -> str | None:
        import sys

        cut = backbone_cut(model, example_input)
        if cut is not None and self.cut is None:
            print(f"warning: {self.run}: at step {step} the backbone's output no longer depends "
                  f"on the image (cut from {cut} on); unless revived groups reconnect it, the "
                  "rest of the run trains heads on a constant (README, \"Limits\").",
                  file=sys.stderr, flush=True)
        elif cut is None and self.cut is not None:
            print(f"note: {self.run}: at step {step} the backbone depends on the image again.",
                  file=sys.stderr, flush=True)
        self.cut = cut
        return cut
