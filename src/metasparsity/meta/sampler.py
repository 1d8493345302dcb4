"""What a meta-step samples (DESIGN §2.4): task subsets ``S ⊆ T`` for each outer step, and the
disjoint training ids that feed the support, query and λ-validation streams."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from metasparsity.utils.errors import UserError


class TaskSubsetSampler:
    """Uniform sampler over task subsets, deterministic given ``seed`` and resumable.

    Args:
        tasks: the seen tasks ``T``, a sequence of names, not one string (order fixes the order
            inside every subset tuple).
        min_size: smallest subset size (default 1: all ``2^|T| − 1`` non-empty subsets).
        subsets: an explicit list of subsets instead (``min_size`` is then not applied), each a
            list of task names (not a string); each is stored as a tuple in the order of
            ``tasks``, duplicates removed.
        seed: seed of the sampler's own NumPy generator.

    ``sample(M)`` draws ``M`` subsets uniformly without replacement when ``M`` is at most the
    number of subsets; for a larger ``M`` it concatenates random permutations of all subsets, so
    every subset appears ``⌊M/n⌋`` or ``⌈M/n⌉`` times.
    """

    def __init__(self, tasks: Sequence[str], min_size: int = 1,
                 subsets: Iterable[Iterable[str]] | None = None, seed: int = 0) -> None:
        if isinstance(tasks, str):
            raise UserError(f"the seen tasks must be a list of task names, got the string "
                            f"{tasks!r} (write [{tasks!r}])")
        self.tasks = tuple(tasks)
        if not self.tasks:
            raise UserError("meta-training needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise UserError(f"duplicate task names in {list(self.tasks)}")
        order = {t: i for i, t in enumerate(self.tasks)}
        if subsets is None:
            if not 1 <= min_size <= len(self.tasks):
                raise UserError(f"meta.min_subset_size={min_size} must be between 1 and the number "
                                f"of tasks ({len(self.tasks)})")
            self.subsets = [c for k in range(min_size, len(self.tasks) + 1)
                            for c in itertools.combinations(self.tasks, k)]
        else:
            seen: list[tuple[str, ...]] = []
            if isinstance(subsets, str):
                raise UserError(f"meta.subsets must be a list of subsets, got the string "
                                f"{subsets!r}")
            for s in subsets:
                if isinstance(s, str):
                    raise UserError(f"meta.subsets: each subset is a list of task names, got "
                                    f"the string {s!r} (write [{s!r}] for that one task)")
                s = list(s)
                unknown = [t for t in s if t not in order]
                if unknown:
                    raise UserError(f"meta.subsets: unknown task(s) {unknown}; "
                                    f"tasks are {list(self.tasks)}")
                if not s:
                    raise UserError("meta.subsets: a subset must not be empty")
                t = tuple(sorted(set(s), key=order.__getitem__))
                if t not in seen:
                    seen.append(t)
            if not seen:
                raise UserError("meta.subsets: the list of subsets is empty")
            self.subsets = seen
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return len(self.subsets)

    def sample(self, m: int) -> list[tuple[str, ...]]:
        """``m`` subsets (see the class docstring for ``m`` larger than the number of subsets)."""
        if m < 1:
            raise ValueError(f"meta-batch size must be >= 1, got {m}")
        n = len(self.subsets)
        idx: list[int] = []
        while len(idx) < m:
            take = min(n, m - len(idx))
            idx.extend(self._rng.permutation(n)[:take].tolist())
        return [self.subsets[i] for i in idx]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "subsets": [list(s) for s in self.subsets],
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        subsets = [tuple(s) for s in state["subsets"]]
        if subsets != self.subsets:
            raise UserError("cannot resume the task sampler: the task subsets differ from the "
                            "checkpoint's")
        self.seed = int(state["seed"])
        self._rng.bit_generator.state = state["rng"]


def support_query_split(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint halves of the training indices: support draws from one, query from the other."""
    g = torch.Generator().manual_seed(20_011 + seed)
    perm = torch.randperm(n, generator=g).tolist()
    half = n // 2
    return sorted(perm[:half]), sorted(perm[half:])


def meta_stream_split(n: int, seed: int,
                      lambda_val_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """Three disjoint sets of training indices: support, query and λ-validation (DESIGN §2.4).

    The λ-validation share (``round(fraction·n)``, at least 1) is drawn first; support and query
    split the rest in halves.  Raises ``UserError`` when some set would be empty.
    """
    k = max(1, round(lambda_val_fraction * n))
    if n - k < 2:
        raise UserError(f"data.train_size: {n} training samples cannot feed disjoint support, "
                        f"query and λ-validation streams ({k} held out for λ); use more data "
                        "or meta.lambda_objective=query")
    g = torch.Generator().manual_seed(30_011 + seed)
    perm = torch.randperm(n, generator=g).tolist()
    held, rest = perm[:k], perm[k:]
    sup, qry = support_query_split(len(rest), seed)
    return sorted(rest[i] for i in sup), sorted(rest[i] for i in qry), sorted(held)
