"""BatchStream: its order, one loader for every epoch, and augmentation seeded by the stream's state."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from metasparsity.training import batches as batches_mod
from metasparsity.training.batches import BatchStream


class _Range(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.tensor([i]), {"y": torch.tensor(float(i))}


class _Augmented(_Range):
    """A data set with random augmentation: ``seeded_item`` draws one number from ``generator``."""

    def seeded_item(self, i: int, generator: torch.Generator | None = None):
        return torch.tensor([i]), {"r": torch.rand((), generator=generator)}

    def __getitem__(self, i: int):
        return self.seeded_item(i)


def _draw(stream: BatchStream, n: int) -> list[tuple[list[int], list[float]]]:
    out = []
    for _ in range(n):
        x, y = next(stream)
        out.append((x[:, 0].tolist(), y["r"].tolist() if "r" in y else []))
    return out


def test_batches_follow_each_epochs_permutation_of_seed_and_epoch():
    s = BatchStream(_Range(), 3, seed=7)  # 3 batches per epoch; sample 9 is left out each epoch
    got = [next(s)[0][:, 0].tolist() for _ in range(9)]
    want = []
    for epoch in range(3):
        g = torch.Generator().manual_seed(7 * 1_000_003 + epoch)
        perm = torch.randperm(10, generator=g).tolist()
        want += [perm[b * 3:(b + 1) * 3] for b in range(3)]
    assert got == want


@pytest.mark.parametrize("workers", [0, 2])
def test_one_loader_serves_every_epoch(monkeypatch, workers):
    made = []

    class Counting(batches_mod.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(batches_mod, "DataLoader", Counting)
    s = BatchStream(_Range(), 4, seed=1, num_workers=workers)  # 2 batches per epoch
    _draw(s, 9)  # into the fifth epoch
    assert len(made) == 1
    s.load_state_dict({"epoch": 1, "pos": 1})  # a resume starts the one loader again
    _draw(s, 3)
    assert len(made) == 2


def test_augmentation_depends_on_seed_epoch_and_index_alone():
    before = torch.get_rng_state()
    ref = _draw(BatchStream(_Augmented(), 3, seed=3), 7)  # crosses two epoch ends
    assert torch.equal(torch.get_rng_state(), before)  # augmentation left the global RNG alone
    assert _draw(BatchStream(_Augmented(), 3, seed=3, num_workers=2), 7) == ref
    resumed = BatchStream(_Augmented(), 3, seed=3, num_workers=2)
    resumed.load_state_dict({"epoch": 1, "pos": 1})
    assert _draw(resumed, 3) == ref[4:]
    # each draw is the generator seeded by (seed, epoch, index): recomputed independently
    for n, (idx, rs) in enumerate(ref):
        epoch = n // 3
        for i, r in zip(idx, rs):
            g = torch.Generator().manual_seed(((3 * 1_000_003 + epoch) * 1_000_033 + i) % 2**63)
            assert r == torch.rand((), generator=g).item()
    # the same sample in another epoch is augmented otherwise
    first = {i: r for idx, rs in ref[:3] for i, r in zip(idx, rs)}
    second = {i: r for idx, rs in ref[3:6] for i, r in zip(idx, rs)}
    assert all(first[i] != second[i] for i in set(first) & set(second))


def test_a_selection_loads_the_chosen_batches_of_the_unselected_stream():
    ref = _draw(BatchStream(_Augmented(), 3, seed=2), 9)
    s = BatchStream(_Augmented(), 3, seed=2, num_workers=2)
    s.select(lambda n: n % 2 == 1)
    got = []
    for n in range(9):
        if n % 2 == 1:
            got.append(_draw(s, 1)[0])
        else:
            s.skip()
    assert got == [ref[n] for n in range(9) if n % 2 == 1]


def test_a_recipes_streams_are_closed_when_it_ends_even_on_an_error():
    from metasparsity.recipes import run_recipe

    class Recipe:
        def setup(self):
            self.stream = BatchStream(_Range(), 4, seed=0, num_workers=1)
            next(self.stream)

        def train(self):
            assert self.stream._it is not None  # its loader's worker is running
            raise RuntimeError("stop")

        def cleanup(self):
            pass

    r = Recipe()
    with pytest.raises(RuntimeError, match="stop"):
        run_recipe(r)
    assert r.stream._it is None
    assert next(r.stream)[0].shape == (4, 1)  # a closed stream starts its loader again
    workers = list(r.stream._it._workers)
    assert workers and all(w.is_alive() for w in workers)
    r.stream.close()
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)  # close() stopped them, not a timeout


def test_shards_together_are_the_single_process_batches_augmentation_included():
    ref = _draw(BatchStream(_Augmented(), 4, seed=6), 5)
    parts = [_draw(BatchStream(_Augmented(), 4, seed=6, shard=(r, 2), rank=r, num_workers=w), 5)
             for r, w in ((0, 0), (1, 2))]
    joined = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(*parts)]
    assert joined == ref


def test_a_selection_resumed_mid_epoch_loads_what_the_uninterrupted_one_loads():
    def run(stream, numbers):
        got = []
        for n in numbers:
            if n % 3 == 0:
                got.append(_draw(stream, 1)[0])
            else:
                stream.skip()
        return got

    ref = BatchStream(_Augmented(), 3, seed=9, num_workers=2)
    ref.select(lambda n: n % 3 == 0)
    whole = run(ref, range(10))
    s = BatchStream(_Augmented(), 3, seed=9, num_workers=2)
    s.select(lambda n: n % 3 == 0)
    run(s, range(4))
    state = s.state_dict()
    resumed = BatchStream(_Augmented(), 3, seed=9, num_workers=2)
    resumed.load_state_dict(state)
    resumed.select(lambda n: n % 3 == 0)
    assert run(resumed, range(4, 10)) == whole[2:]


def test_a_failed_batch_leaves_the_position_where_it_was():
    class Failing(_Range):
        calls = 0

        def __getitem__(self, i):
            Failing.calls += 1
            if Failing.calls == 5:  # inside the second batch
                raise OSError("unreadable file")
            return super().__getitem__(i)

    s = BatchStream(Failing(), 4, seed=0)
    assert next(s)[0][:, 0].tolist() == next(BatchStream(_Range(), 4, seed=0))[0][:, 0].tolist()
    with pytest.raises(OSError):
        next(s)
    assert s.state_dict() == {"epoch": 0, "pos": 1}
    again = BatchStream(_Range(), 4, seed=0)
    next(again)
    assert next(s)[0][:, 0].tolist() == next(again)[0][:, 0].tolist()


def test_a_batch_larger_than_its_split_is_clamped_and_said():
    from metasparsity.training.batches import clamp_notice

    full = BatchStream(_Range(), 4, seed=0, indices=[0, 1, 2, 3])
    assert full.batch_size == 4 and clamp_notice(full, "train.batch_size") is None
    small = BatchStream(_Range(), 8, seed=0, indices=[0, 1, 2])
    assert small.batch_size == 3
    assert clamp_notice(small, "train.batch_size") == (
        "train.batch_size: a batch of 8 is more than the 3 samples it draws from; its batches "
        "hold 3")


def test_train_and_meta_train_say_when_the_training_split_is_smaller_than_the_batch(tmp_path,
                                                                                   capsys):
    from tests.recipes.micro import MICRO, cli

    assert cli("train", "--out", tmp_path / "t", *MICRO, "data.train_size=6",
               "train.max_steps=1", "train.val_every=1") == 0
    out = capsys.readouterr().out
    assert "train.batch_size: a batch of 8 is more than the 6 samples it draws from" in out
    assert cli("meta-train", "--out", tmp_path / "m", *MICRO, "data.train_size=6",
               "meta.steps=1", "meta.val_every=1", "meta.lambda_objective=query") == 0
    out = capsys.readouterr().out
    assert "meta.batch_size (support): a batch of 4 is more than the 3 samples" in out
    assert "train.batch_size (BatchNorm statistics): a batch of 8 is more than the 6" in out
    assert cli("train", "--out", tmp_path / "u", *MICRO, "train.max_steps=1",
               "train.val_every=1") == 0
    assert "is more than the" not in capsys.readouterr().out
