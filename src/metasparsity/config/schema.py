"""The config's sections and fields, each declared once with its checks (:func:`_f`).

The rules every field obeys:

* numbers are finite (NaN and ±inf are refused unless a field says ``allow_inf``) and integers are
  at most :data:`INT_MAX` unless a field sets its own ``max``;
* ``min`` / ``max`` / ``choices`` / ``pattern`` apply to a scalar, and to **every element** of a
  list;
* ``nonempty`` lists must hold at least one element and ``unique`` lists no duplicate;
* strings (and string elements) are never empty and hold no control character (use null to leave
  an optional path unset).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from metasparsity.utils.limits import MAX_IMAGE_SIZE, MAX_THREADS, MIN_IMAGE_SIZE

ALL_SYNTH_TASKS = ["segment", "depth", "normal", "edge", "has_sphere", "many_objects", "light_left"]

INT_MAX = 2**31 - 1
"""Upper bound of every integer field that sets no ``max`` of its own (counts, steps, seeds):
beyond it values overflow the 32-bit indices and seeds of NumPy / PyTorch and mean nothing here."""

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"


def _f(default: Any = dataclasses.MISSING, *, choices=None, min=None, max=None, min_open=False,
       help: str = "", factory=None, nonempty: bool = False, unique: bool = False,
       allow_inf: bool = False, pattern: str | None = None, pattern_help: str = ""):
    """A config field and its checks (see the module docstring): ``choices``, ``min`` (``min_open``:
    strictly greater), ``max``, ``pattern`` (a full-match regex for strings, described by
    ``pattern_help``) apply to a scalar or to each element of a list; ``nonempty`` and ``unique``
    to a list itself; ``allow_inf`` lets a float be ±inf."""
    meta = {"choices": choices, "min": min, "max": max, "min_open": min_open, "help": help,
            "nonempty": nonempty, "unique": unique, "allow_inf": allow_inf, "pattern": pattern,
            "pattern_help": pattern_help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _f("synthscenes", help="data set: synthscenes, nyuv2, celebamaskhq, or a registered one")
    root: str | None = _f(None, help="data folder for real data sets")
    image_size: int = _f(64, min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE,
                         help="square input size (pixels)")
    tasks: list[str] = _f(factory=lambda: list(ALL_SYNTH_TASKS), nonempty=True, unique=True,
                          help="tasks the data set serves")
    seen_tasks: list[str] = _f(
        factory=lambda: ["segment", "depth", "edge", "has_sphere", "many_objects"],
        nonempty=True, unique=True, help="tasks used in (meta-)training")
    unseen_tasks: list[str] = _f(factory=lambda: ["normal", "light_left"], unique=True,
                                 help="tasks held out of meta-training")
    train_size: int | None = _f(2000, min=1, help="training samples (real data: null = all)")
    val_size: int | None = _f(200, min=1, help="validation samples")
    test_size: int | None = _f(500, min=1, help="test samples (real data: null = all)")
    seed: int = _f(0, min=0, help="data seed (SynthScenes sample i depends only on (seed, i) "
                                         "and data.image_size)")
    cache_dir: str | None = _f(None, help="optional on-disk cache of generated samples")
    num_workers: int = _f(0, min=0, max=256, help="DataLoader workers")
    layout: str = _f("auto", choices=["auto", "nyud_mt", "mtan"], help="NYU-v2 layout")
    num_classes: int | None = _f(None, min=2, max=65536,
                                 help="segmentation classes where the data set allows a choice")
    attributes: list[str] = _f(factory=list, unique=True, help="CelebAMask-HQ attributes served as tasks")
    augment: bool = _f(False, help="training augmentation (flip, scale-crop)")


@dataclass
class ModelConfig:
    depth: int = _f(18, choices=[18, 34, 50, 101], help="ResNet depth")
    width: float = _f(1.0, min=0.0, max=8.0, min_open=True,
                      help="ResNet width multiplier (base 64 channels)")
    output_stride: int = _f(8, choices=[8, 16, 32], help="backbone output stride (dilation after)")
    dense_head: str = _f("aspp", help="head for dense tasks")
    image_head: str = _f("mlp", help="head for image-level tasks")
    head_channels: int = _f(256, min=1, max=4096, help="channels inside each head")
    aspp_rates: list[int] = _f(factory=lambda: [12, 24, 36], min=1, max=256, nonempty=True,
                               help="ASPP atrous rates (three for the aspp head)")
    pretrained: str | None = _f(None, help="torchvision ResNet checkpoint file (.pth/.safetensors)")


@dataclass
class TrainConfig:
    max_steps: int = _f(1000, min=1, help="optimizer steps")
    batch_size: int = _f(32, min=1, help="training batch size")
    eval_batch_size: int = _f(64, min=1, help="batch size of validation and test")
    lr: float = _f(1e-3, min=0.0, min_open=True, help="Adam learning rate (and the prox step size)")
    weight_decay: float = _f(0.0, min=0.0, help="Adam's (L2) weight decay")
    lr_schedule: str = _f("cosine", choices=["constant", "cosine", "poly", "step"],
                          help="after the warm-up: constant, cosine to 0, poly (1 − t)^0.9, or "
                               "step (÷10 at 1/3 and 2/3 of the steps)")
    warmup_steps: int = _f(0, min=0, help="linear warm-up of lr (steps)")
    val_every: int = _f(200, min=1, help="validate (and keep the best checkpoint) every N steps")
    log_every: int = _f(10, min=1, help="write a train record to metrics.jsonl every N steps")
    ckpt_every: int = _f(0, min=0, help="also save a resumable checkpoint every N steps (0 = at validation)")
    loss_weighting: str = _f("equal", choices=["equal", "uncertainty"],
                             help="sum of the task losses, or learned uncertainty weights "
                                  "(Kendall et al. 2018)")
    tasks: list[str] | None = _f(None, nonempty=True, unique=True,
                                 help="tasks to train (null = data.seen_tasks)")
    seed: int = _f(0, min=0, help="seed of the weights, the data order and every sampler")
    device: str = _f("auto", pattern=DEVICE_PATTERN, pattern_help="auto, cpu, cuda, cuda:N or mps",
                     help="auto, cpu, cuda, cuda:N or mps")
    num_threads: int | None = _f(None, min=1, max=MAX_THREADS,
                                 help="torch CPU threads (null = $METASPARSITY_NUM_THREADS if "
                                      "set, else the cores divided among a node's processes, "
                                      "at most 8)")
    amp: bool = _f(False, help="bf16 autocast on GPU (ignored on CPU)")
    progress: bool = _f(True, help="tqdm progress bars")


def _target_field(help: str) -> Any:
    """A budget's target: a fraction of the dense backbone's cost in (0, 1], or null."""
    return _f(None, min=0.0, max=1.0, min_open=True, help=help)


def _ramp_field(default: float, help: str) -> Any:
    """The share of the steps over which a budget's target ramps down from the dense cost."""
    return _f(default, min=0.0, max=1.0, help=help)


def _measure_field(target_key: str) -> Any:
    """The cost a budget's target bounds."""
    return _f("macs", choices=["macs", "params", "groups"],
              help=f"cost that {target_key} bounds: backbone MACs or conv parameters after "
                   "pruning, or non-zero groups")


@dataclass
class SparsityConfig:
    lam: float = _f(0.0, min=0.0, help="group-lasso strength λ of `train`, in gradient units "
                                       "(0 = dense); with sparsity.target, where the budget's "
                                       "multiplier starts (also for compare's train_budget, at "
                                       "meta.target)")
    prox_metric: str = _f("adam", choices=["adam", "euclidean"],
                          help="metric of the group prox after each Adam step: adam (the "
                               "group lasso's prox in Adam's metric) or euclidean (plain "
                               "soft-threshold, for ablation)")
    penalize: str = _f("all", choices=["all", "removable"],
                       help="which backbone groups carry the penalty: all, or "
                            "removable: only those of convs that alone read their input feature "
                            "map, where a zero group removes a channel (the convs inside a "
                            "ResNet block: conv2, and conv3 in a bottleneck; not conv1, the "
                            "downsample or the stem, which share their input)")
    target: float | None = _target_field(
        "budget mode of `train`: keep at most this fraction of the dense backbone's cost "
        "(sparsity.target_measure); λ becomes a Lagrange multiplier, starting at sparsity.lam "
        "and moved by dual ascent after every step; the last step (or sparsity.target_land's) "
        "lands on the target, and the checkpoint kept is the landed one (null = off; "
        "meta-train's budget is meta.target)")
    target_measure: str = _measure_field("sparsity.target")
    target_ramp: float = _ramp_field(
        0.5, "the target falls from 1 to sparsity.target over this share of train.max_steps, "
        "cubically (as meta.target_ramp), then holds; 0 = the target from the first step "
        "(measured worse; 1 measured level with 0.5 over five seeds: docs/lambda_study.md, "
        "budget mode in plain training)")
    dual_rate: float = _f(0.05, min=0.0, min_open=True,
                          help="sparsity.target's dual ascent: log λ moves by this rate × "
                               "(cost − target)/target after every step up to the landing")
    multiplier_on: str = _f("all", choices=["all", "removable"],
                            help="budget mode of `train`: the layers the multiplier acts on: all "
                                 "penalised layers, or removable: only those whose zero groups "
                                 "lower sparsity.target_measure (macs, params: conv2 inside a "
                                 "ResNet block and conv3 in a bottleneck, as "
                                 "sparsity.penalize=removable; groups: every layer); the others "
                                 "keep the λ they start with (sparsity.lam), moved by neither the "
                                 "dual ascent nor the landing")
    target_land: float = _f(1.0, min=0.0, max=1.0, min_open=True,
                            help="budget mode of `train` lands on sparsity.target after this "
                                 "share of train.max_steps (1 = at the last step); after an "
                                 "earlier landing its zero groups stay zero, the other weights "
                                 "train on without the prox (the cost stays where it landed), "
                                 "and the best validated checkpoint from the landing on is kept; "
                                 "a landing before the ramp's end (sparsity.target_ramp) cuts "
                                 "from the ramped target to sparsity.target at once")


@dataclass
class MetaConfig:
    steps: int = _f(300, min=1, help="outer (meta) steps")
    inner_steps: int = _f(1, min=1, help="K, SGD steps of the inner loop")
    inner_lr: float = _f(0.01, min=0.0, min_open=True, help="α, inner-loop learning rate")
    outer_lr: float = _f(1e-3, min=0.0, min_open=True, help="Adam rate on θ (and prox step size η)")
    lr_schedule: str = _f("constant", choices=["constant", "cosine", "poly", "step"],
                          help="schedule of outer_lr over meta.steps (also the prox step size)")
    warmup_steps: int = _f(0, min=0, help="linear warm-up of outer_lr (outer steps)")
    outer_beta1: float = _f(0.9, min=0.0, max=0.999,
                            help="Adam's β1 on θ: the prox in Adam's metric keeps a zero group "
                                 "while ‖m̂_g‖ ≤ λ·w_g, m̂ averaging the meta-gradient over "
                                 "about 1/(1−β1) outer steps")
    clip_grad: float = _f(0.0, min=0.0,
                          help="clip θ's meta-gradient norm at this multiple of the median norm "
                               "of the last 20 outer steps, from the 6th step on (0 = off)")
    meta_batch: int = _f(4, min=1, help="M, task subsets per outer step")
    batch_size: int = _f(16, min=1, help="support (and query) batch size")
    meta_grad: str = _f("lambda_path", choices=["second_order", "lambda_path", "first_order"],
                        help="how φ_K depends on θ and λ: the whole inner loop differentiated, "
                             "only λ's path (θ first-order; λ's gradient exact for K = 1), or "
                             "first-order MAML (λ not learned by it)")
    learn_lambda: bool = _f(True, help="learn λ by its meta-gradient (false: none; λ stays at "
                                       "lambda_init, or with meta.target moves only as the "
                                       "budget's multiplier)")
    lambda_init: float | str = _f("auto", min=0.0, pattern="auto",
                                  pattern_help="a number >= 0, or auto",
                                  help="λ0: auto (the median over groups of ‖∇_g L‖/w_g at the "
                                       "start), a number, or 0 (meta-learning "
                                       "without sparsity)")
    lambda_lr: float = _f(0.05, min=0.0, help="Adam rate on ρ = log λ")
    lambda_hold: float = _f(0.0, min=0.0, max=1.0,
                            help="ρ's meta-gradient rate is 0 for this share of the meta-steps: "
                                 "λ stays at λ0, then learns (in budget mode with a per-layer "
                                 "λ the multiplier still moves; 0 = λ learns from the first "
                                 "step)")
    lambda_scope: str = _f("global", choices=["global", "layer"],
                           help="one λ for the backbone, or one per grouped conv")
    lambda_min: float = _f(1e-6, min=0.0, min_open=True, help="lower clamp of a learned λ (and of "
                                                                    "a budget's multiplier)")
    lambda_max: float = _f(10.0, min=0.0, min_open=True, help="upper clamp of a learned λ (and of "
                                                                    "a budget's multiplier)")
    min_subset_size: int = _f(1, min=1, help="smallest task subset drawn (1: every non-empty "
                                             "subset of the seen tasks; unused with "
                                             "meta.subsets)")
    subsets: list[list[str]] | None = _f(None, nonempty=True, unique=True,
                                         help="explicit list of task subsets")
    outer_penalty: bool = _f(False, help="add λ·Ω(φ_K) to the query objective")
    lambda_objective: str = _f("heldout", choices=["heldout", "query"],
                               help="λ's meta-gradient from a held-out λ-validation stream "
                                    "or from the query batches (the paper)")
    lambda_val_fraction: float = _f(0.15, min=0.0, max=0.5, min_open=True,
                                    help="share of the training ids in the λ-validation stream "
                                         "(lambda_objective=heldout; never updates θ)")
    lambda_through_prox: bool = _f(False,
                                   help="λ also gets the gradient through the outer step's prox, "
                                        "∂L_val(θ_{t+1})/∂λ on the λ-validation batches "
                                        "(a one-step look-ahead; needs "
                                        "lambda_objective=heldout and a learned λ)")
    target: float | None = _target_field(
        "budget mode: keep at most this fraction of the dense backbone's cost "
        "(meta.target_measure); λ becomes a Lagrange multiplier updated by dual ascent "
        "(null = off)")
    target_measure: str = _measure_field("meta.target")
    target_ramp: float = _ramp_field(
        0.0, "budget mode: the target falls from 1 (the dense cost) to meta.target over this "
        "share of the meta-steps, cubically (gradual pruning, Zhu & Gupta 2017), then holds; "
        "0 = the target from the first step")
    final_zero_window: int = _f(0, min=0,
                                help="the last outer step's prox zeroes as many groups as were "
                                     "zero on average over the N steps before it, at the multiple "
                                     "of λ that does (from either side, as budget mode's "
                                     "landing; 0 = off; budget mode lands on its target)")
    val_every: int = _f(100, min=1, help="validate and save a checkpoint every N outer steps "
                                         "(best = the newest validated one)")
    log_every: int = _f(1, min=1, help="write a meta record to metrics.jsonl every N outer "
                                       "steps")


@dataclass
class FinetuneConfig:
    steps: int = _f(300, min=1, help="fine-tuning steps")
    epochs: float | None = _f(None, min=0.0, min_open=True, help="overrides steps when set")
    lr: float = _f(1e-3, min=0.0, min_open=True, help="Adam learning rate (train.lr_schedule's schedule, no warm-up)")
    batch_size: int = _f(32, min=1, help="fine-tuning batch size")
    fraction: float = _f(1.0, min=0.0, max=1.0, min_open=True, help="share of training data (few-shot)")
    freeze_backbone: bool = _f(False, help="train the heads only: the backbone, its zeros and "
                                           "its cost stay as they are")
    lam: float | str = _f(0.0, min=0.0, pattern="source", pattern_help="a number >= 0, or source",
                          help="group-lasso λ while fine-tuning: 0 (no penalty), a number, or "
                               "source (the source run's final λ: meta-training's learned λ, "
                               "per layer if so, a fixed-λ run's λ, 0 for a dense run); the "
                               "prox (sparsity.prox_metric) may zero more groups; the source's zero "
                               "groups stay zero; from a budget-mode run λ stays its multiplier "
                               "and the budget holds; a frozen backbone takes no prox")
    lam_unseen: float | str | None = _f(
        None, min=0.0, pattern="source", pattern_help="null, a number >= 0, or source",
        help="λ while fine-tuning on data.unseen_tasks only: null = finetune.lam; 0 "
             "keeps the source's zero set and adds no penalty (meta-testing)")
    keep_zeros: str = _f("all", choices=["all", "removed", "none"],
                         help="the source's zero groups kept at zero: all, only those whose "
                              "channel pruning removes (removed: a zero group whose channel "
                              "another layer still reads stays in the pruned model, so it "
                              "trains again at no cost), or none (with finetune.lam > 0 the "
                              "prox alone decides, so a zero group revives when its gradient "
                              "outgrows the threshold; from a budget-mode source the "
                              "multiplier then holds the budget both ways; with lam 0 the "
                              "model trains dense)")
    val_every: int = _f(100, min=1, help="validate (and keep the best checkpoint) every N "
                                         "steps")


@dataclass
class CompareConfig:
    methods: list[str] = _f(
        factory=lambda: ["stl", "mtl", "fixed_lambda", "meta_dense", "meta_sparsity"],
        nonempty=True, unique=True, help="methods to run")
    lambda_grid: list[float] = _f(factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], min=0.0,
                                  min_open=True, unique=True, help="fixed λ values of the sweep")
    seeds: list[int] = _f(factory=lambda: [0], min=0, nonempty=True, unique=True,
                          help="seeds; every method runs once per seed")
    optuna_trials: int = _f(0, min=0, help="λ tuned by Optuna TPE (0 = off)")
    budget: int | None = _f(None, min=1, help="batch forward-backward passes per method "
                            "(null = train.max_steps); meta.steps is derived from it")


@dataclass
class Config:
    name: str = _f("run", pattern=r"(?!\.\.?$)[^/\\]+", pattern_help="a folder name (no / or \\, not . or ..)",
                   help="run name; the run directory defaults to runs/<name>")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def copy(self) -> Config:
        return copy.deepcopy(self)

    @property
    def train_tasks(self) -> list[str]:
        return list(self.train.tasks) if self.train.tasks else list(self.data.seen_tasks)
