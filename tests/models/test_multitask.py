"""MultiTaskNet and the builders: one backbone pass, head selection, parameter split,
``torch.func.functional_call`` parity, heads for unseen tasks, config-driven building."""

from __future__ import annotations

import types

import pytest
import torch
from torch.func import functional_call

from metasparsity.builders import build_model
from metasparsity.config import Config
from metasparsity.data import DATASETS, DatasetSpec
from metasparsity.data.tasks import Task
from metasparsity.models import (
    BACKBONES,
    ASPPHead,
    MLPHead,
    MultiTaskNet,
    build_head,
    build_model_from_tasks,
)
from metasparsity.utils.errors import UserError

TASKS = {
    "segment": Task("segment", "dense", "segmentation", 6, 6),
    "depth": Task("depth", "dense", "depth", 1),
    "has_sphere": Task("has_sphere", "image", "binary", 1),
}
SMALL = dict(depth=18, width=0.25, output_stride=8, head_channels=32, aspp_rates=(2, 4, 6))


@pytest.fixture
def model() -> MultiTaskNet:
    return build_model_from_tasks(TASKS, **SMALL)


def test_outputs_and_single_backbone_pass(model):
    calls = {"stem": 0, "layer4": 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    model.backbone.conv1.register_forward_hook(counter("stem"))
    model.backbone.layer4.register_forward_hook(counter("layer4"))
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert calls == {"stem": 1, "layer4": 1}
    assert list(out) == ["segment", "depth", "has_sphere"] == model.tasks
    assert out["segment"].shape == (2, 6, 64, 64)
    assert out["depth"].shape == (2, 1, 64, 64)
    assert out["has_sphere"].shape == (2, 1)
    assert isinstance(model.heads["segment"], ASPPHead)
    assert isinstance(model.heads["has_sphere"], MLPHead)
    assert model.out_channels == model.backbone.out_channels == 128
    assert "backbone.fc.weight" not in dict(model.named_parameters())


def test_task_subset_and_unknown_task(model):
    x = torch.randn(1, 3, 64, 64)
    out = model(x, tasks=["depth", "has_sphere"])
    assert set(out) == {"depth", "has_sphere"}
    assert set(model(x, tasks="depth")) == {"depth"}
    assert model(x, tasks=[]) == {}
    with pytest.raises(UserError, match="unknown task 'normal'.*segment, depth, has_sphere"):
        model(x, tasks=["depth", "normal"])
    with pytest.raises(UserError, match="unknown task"):
        list(model.task_parameters("normal"))


def test_subset_outputs_equal_full_outputs(model):
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        part = model(x, tasks=["has_sphere"])
    assert torch.equal(full["has_sphere"], part["has_sphere"])


def test_parameter_split(model):
    named = dict(model.named_parameters())
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for n, p in named.items() if n.startswith("backbone.")}
    per_task = {t: {id(p) for p in model.task_parameters(t)} for t in model.tasks}
    for t, ids in per_task.items():
        assert ids == {id(p) for n, p in named.items() if n.startswith(f"heads.{t}.")}
        assert not ids & shared
    assert set().union(shared, *per_task.values()) == {id(p) for p in named.values()}


def test_add_head_for_unseen_task(model):
    head = build_model_from_tasks({"normal": Task("normal", "dense", "normal", 3)},
                                  **SMALL).heads["normal"]
    with pytest.raises(UserError, match="already has a head"):
        model.add_head("depth", head)
    model.add_head("normal", head)
    assert model.tasks[-1] == "normal"
    assert all(p.requires_grad for p in model.task_parameters("normal"))
    out = model(torch.randn(2, 3, 64, 64), tasks=["normal"])
    assert out["normal"].shape == (2, 3, 64, 64)
    out["normal"].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.task_parameters("normal"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # new parameters are registered
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for p in model.parameters())
    assert any(n.startswith("heads.normal.") for n, _ in model.named_parameters())


@pytest.mark.parametrize("train", [True, False])
def test_functional_call_matches_forward(model, train):
    model.train(train)
    x = torch.randn(2, 3, 64, 64)
    params = dict(model.named_parameters())
    with torch.no_grad():
        ref = model(x)
        got = functional_call(model, params, (x,))
    assert ref.keys() == got.keys()
    for t in ref:
        assert torch.allclose(ref[t], got[t], atol=1e-6), t

    # substituted parameters: same as a copy of the model that holds them
    scaled = {n: p.detach() * 1.1 for n, p in params.items()}
    twin = build_model_from_tasks(TASKS, **SMALL).train(train)
    twin.load_state_dict({**model.state_dict(), **scaled})
    with torch.no_grad():
        sub = functional_call(model, scaled, (x,), {"tasks": ["segment"]})
        ref2 = twin(x, tasks=["segment"])
    assert torch.allclose(sub["segment"], ref2["segment"], atol=1e-5)
    assert not torch.allclose(sub["segment"], ref["segment"], atol=1e-3)
    for n, p in model.named_parameters():  # the model's own parameters are untouched
        assert torch.equal(p, params[n])


def test_second_order_gradient_through_functional_inner_step(model):
    """The meta-learning path: grad of a loss at adapted parameters w.r.t. the originals."""
    x = torch.randn(2, 3, 64, 64)
    params = dict(model.named_parameters())
    loss = functional_call(model, params, (x,), {"tasks": ["depth"]})["depth"].square().mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    used = {n: p - 0.01 * g for (n, p), g in zip(params.items(), grads) if g is not None}
    assert all(n in used for n in params if n.startswith("backbone."))  # no unused shared param
    adapted = {**params, **used}
    q = functional_call(model, adapted, (x,), {"tasks": ["depth"]})["depth"].mean()
    g2 = torch.autograd.grad(q, model.backbone.conv1.weight)[0]
    assert torch.isfinite(g2).all()


def test_pretrained_backbone(tmp_path):
    src = BACKBONES["resnet18"](width=0.25)  # with fc, as a torchvision file would have
    src.train()
    with torch.no_grad():
        src(torch.randn(2, 3, 32, 32))
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    model = build_model_from_tasks(TASKS, pretrained=str(tmp_path / "r18.pth"), **SMALL)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    with pytest.raises(UserError, match="width"):
        build_model_from_tasks(TASKS, pretrained=str(tmp_path / "r18.pth"),
                               **{**SMALL, "width": 0.5})


def test_build_model_from_config(tmp_path):
    served = dict(TASKS, normal=Task("normal", "dense", "normal", 3))
    DATASETS.register("models-test", DatasetSpec(build=lambda d, split: [], tasks=lambda d: served),
                      overwrite=True)
    cfg = Config()
    cfg.data.name = "models-test"
    cfg.model = types.SimpleNamespace(**{**vars(cfg.model), "depth": 18, "width": 0.25,
                                         "output_stride": 16, "head_channels": 16,
                                         "aspp_rates": [1, 2, 3]})
    model = build_model(cfg, ["depth", "has_sphere"])
    assert model.tasks == ["depth", "has_sphere"]
    assert model.backbone.output_stride == 16
    assert model.heads["depth"].rates == (1, 2, 3)
    assert model.heads["has_sphere"].fc1.in_features == 16
    out = model(torch.randn(1, 3, 64, 64))
    assert out["depth"].shape == (1, 1, 64, 64) and out["has_sphere"].shape == (1, 1)

    head = build_head(cfg, served["normal"], model.out_channels)
    model.add_head("normal", head)
    assert model(torch.randn(1, 3, 64, 64), tasks=["normal"])["normal"].shape == (1, 3, 64, 64)
    with pytest.raises(UserError, match="not served"):
        build_model(cfg, ["depth", "nope"])
