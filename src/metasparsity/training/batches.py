"""Batches for training and evaluation: an endless, resumable, shardable :class:`BatchStream`, an
in-order loader over a whole split, and the move of a batch to the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from metasparsity.training.interrupt import ignore_interrupts_in_worker
from metasparsity.utils.errors import UserError
from metasparsity.utils.rundir import release_inherited_locks


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    ignore_interrupts_in_worker()
    release_inherited_locks()


class _SeededItems(Dataset):
    """``dataset`` read by ``(index, seed)`` keys: a data set with random augmentation (a
    ``seeded_item(index, generator)`` method, as the real data sets have) draws it from a
    generator seeded with ``seed``, so that a sample's augmentation depends on the stream's state
    alone; any other data set is read as ``dataset[index]`` (a wrapper such as ``Subset`` hides
    the method: its augmentation would come from torch's global generator)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.seeded = callable(getattr(dataset, "seeded_item", None))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        if self.seeded:
            return self.dataset.seeded_item(index, torch.Generator().manual_seed(seed))
        return self.dataset[index]


def _sample_seed(stream_seed: int, epoch: int, index: int) -> int:
    return ((stream_seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


def _epoch_order(indices: list[int], seed: int, epoch: int, shuffle: bool) -> list[int]:
    """``indices`` in epoch ``epoch``'s order: a permutation drawn from ``(seed, epoch)``."""
    if not shuffle:
        return indices
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]


class _Endless:
    """The batch sampler of a :class:`BatchStream`'s loader: every batch from ``(epoch, pos)``
    on, across epochs, without end (those ``keep`` selects, this shard's part of each), as lists
    of ``(index, augmentation seed)``."""

    def __init__(self, indices: list[int], batch_size: int, seed: int, shuffle: bool,
                 shard: tuple[int, int], keep: Callable[[int], bool] | None, epoch: int,
                 pos: int) -> None:
        self.indices, self.batch_size, self.seed, self.shuffle = indices, batch_size, seed, shuffle
        self.shard, self.keep, self.epoch, self.pos = shard, keep, epoch, pos

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        bs, (r, w) = self.batch_size, self.shard
        n = len(self.indices) // bs
        epoch, pos = self.epoch, self.pos
        while True:
            order = _epoch_order(self.indices, self.seed, epoch, self.shuffle)
            for b in range(pos, n):
                if self.keep is None or self.keep(epoch * n + b):
                    batch = order[b * bs:(b + 1) * bs]
                    yield [(i, _sample_seed(self.seed, epoch, i))
                           for i in batch[r * len(batch) // w:(r + 1) * len(batch) // w]]
            epoch, pos = epoch + 1, 0


class BatchStream:
    """Endless batches over ``dataset``: every epoch a permutation drawn from ``(seed, epoch)``.

    Its whole state is ``(epoch, batch position)``, so a resumed run sees exactly the batches
    that the uninterrupted run would have seen (``state_dict`` / ``load_state_dict``).

    Several processes (:mod:`metasparsity.training.collectives`):

    * ``shard=(rank, world)``: ``batch_size`` is the *global* batch, drawn exactly as in one
      process, and this process loads only its slice (the ``rank``-th of ``world`` contiguous,
      near-equal parts).
    * :meth:`select` / :meth:`skip`: this process loads only the batches it is given, while its
      position still advances over every batch (so its state is the single-process state).

    Random augmentation (a data set with a ``seeded_item(index, generator)`` method, the real
    data sets) draws from a generator seeded by :meth:`sample_seed`: ``(seed, epoch, index)``, so a
    sample is augmented alike whatever ``num_workers``, the number of processes or a resume.
    One loader serves every epoch: its workers are started once (and again only after
    :meth:`select`, :meth:`skip` with no selection, or :meth:`load_state_dict`).

    ``rank`` only salts the seed of the loader's worker processes (rank 0: the single-process
    seed), for any other randomness a data set draws in its workers.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0,
                 shuffle: bool = True, indices: Sequence[int] | None = None,
                 pin_memory: bool = False, shard: tuple[int, int] = (0, 1),
                 rank: int | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        if not self.indices:
            raise UserError("the training split is empty")
        self.requested_batch_size = batch_size
        self.batch_size = min(batch_size, len(self.indices))
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.pin_memory = pin_memory
        self.shard = (int(shard[0]), int(shard[1]))
        if not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard=(rank, world) needs 0 <= rank < world, got {shard}")
        if self.batch_size < self.shard[1]:
            raise UserError(f"a global batch of {self.batch_size} samples cannot be split over "
                            f"{self.shard[1]} processes")
        self.rank = self.shard[0] if rank is None else int(rank)
        self.epoch = 0
        self.pos = 0
        self._it: Iterator | None = None
        self._keep: Callable[[int], bool] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.indices) // self.batch_size

    @property
    def count(self) -> int:
        """Running number of the next batch over all epochs: ``epoch · batches_per_epoch + pos``."""
        return self.epoch * self.batches_per_epoch + self.pos

    def select(self, keep: Callable[[int], bool] | None) -> None:
        """Load only the batches whose running number :attr:`count` satisfies ``keep``; the others
        must be passed over with :meth:`skip` (None: load every batch again).  ``keep`` must
        select batches without end (as a meta-batch's periodic filter does): the loader reads
        ahead, and after the last selected batch it would search on for the next."""
        self._keep = keep
        self._it = None

    def sample_seed(self, epoch: int, index: int) -> int:
        """The seed of sample ``index``'s random augmentation in ``epoch``: a function of the
        stream's seed, the epoch and the index alone (not of the worker, the rank, or where the
        run was resumed)."""
        return _sample_seed(self.seed, epoch, index)

    def _start(self) -> None:
        # One loader for the rest of the run: its workers live on across epochs (a loader per
        # epoch started them again every epoch, and its first batch came from one worker alone).
        # Its own generator (a function of the stream state) seeds the workers, so starting it
        # never draws from the global RNG that training uses.
        seed = (self.seed * 1_000_003 + self.epoch) * 100_003 + self.pos
        if self.rank:
            seed = hash((seed, self.rank)) % (2**63)
        g = torch.Generator()
        g.manual_seed(seed)
        # The batch sampler holds plain values, not the stream: a cycle through the stream
        # would leave the loader to the garbage collector, which stops its workers in no order
        # (seconds of waiting for each).
        keys = _Endless(self.indices, self.batch_size, self.seed, self.shuffle, self.shard,
                        self._keep, self.epoch, self.pos)
        loader = DataLoader(_SeededItems(self.dataset), batch_sampler=keys,
                            num_workers=self.num_workers,
                            worker_init_fn=_worker_init if self.num_workers else None,
                            pin_memory=self.pin_memory, generator=g)
        self._it = iter(loader)

    def _wrap(self) -> None:
        if self.pos >= self.batches_per_epoch:
            self.epoch += 1
            self.pos = 0

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        self._wrap()
        if self._keep is not None and not self._keep(self.count):
            raise RuntimeError(f"batch {self.count} of the stream is not selected; skip() it")
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except BaseException:
            # the loader may have used up this batch: start again from the stream's state
            self._it = None
            raise
        self.pos += 1
        return batch

    def skip(self) -> None:
        """Advance over one batch without loading it (a batch :meth:`select` left out)."""
        self._wrap()
        if self._keep is not None and self._keep(self.count):
            raise RuntimeError(f"batch {self.count} of the stream is selected; load it with next()")
        if self._keep is None:
            self._it = None  # the running loader would yield the skipped batch
        self.pos += 1

    def close(self) -> None:
        """Stop the loader's workers now (the next batch starts them again)."""
        self._it = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._it = None


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """In-order batches of a whole split; iterating it leaves the global RNG untouched."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      worker_init_fn=_worker_init if num_workers else None,
                      generator=torch.Generator().manual_seed(0))


def to_device(batch, device: torch.device):
    x, y = batch
    return x.to(device, non_blocking=True), {k: v.to(device, non_blocking=True) for k, v in y.items()}


def clamp_notice(stream: BatchStream, key: str) -> str | None:
    """One line saying that ``stream`` draws from fewer samples than the batch size ``key``
    asked for, so its batches are smaller (a few-shot split, a small ``data.train_size``), or
    None when they are the size asked for."""
    if stream.batch_size >= stream.requested_batch_size:
        return None
    return (f"{key}: a batch of {stream.requested_batch_size} is more than the "
            f"{len(stream.indices)} samples it draws from; its batches hold {stream.batch_size}")
