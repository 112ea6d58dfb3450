"""What makes a training run resumable at any batch, not only at an epoch boundary.

A preempted pod gets SIGTERM and a grace period. ``Preemption`` turns the signal into a
request the training loop honours at the next batch boundary: the batch in flight is
finished, a checkpoint is written at that step, and the trainer exits with
``EXIT_PREEMPTED`` well within the grace period, so at most the batch in flight is
redone. For the resumed run to end with exactly the weights of an uninterrupted one,
nothing that shapes a batch may depend on how many batches ran in this process:

- ``EpochOrder`` is the epoch's sample order as a function of (seed, epoch, rank) that
  can start at any position (the data is skipped by index, never loaded);
- every sample carries its own seed (``SeededSamples`` seeds the augmentation with it,
  in whichever process or DataLoader worker loads it), and the training loop reseeds
  before each step (dropout), so no RNG state has to be saved or restored.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

log = logging.getLogger("visionline.training")

_MIX = 1_000_003


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return ((((seed * _MIX + epoch) * _MIX + rank) * _MIX) + position) % (2**63 - 1)


def step_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    # a different stream from the samples' (a negative position never occurs there)
    return sample_seed(seed, epoch, rank, -1 - step)


class EpochOrder(Sampler):
    """Shuffled (or in-order) indices of one epoch for one rank, from position ``start``,
    each paired with its sample seed. Ranks get equal shares (the order is padded by
    repeating its head, as ``DistributedSampler`` does)."""

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int,
        *,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch
        self.shuffle, self.rank, self.world_size, self.start = shuffle, rank, world_size, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.world_size > 1:
            total = -(-self.n // self.world_size) * self.world_size
            idx = (idx * (1 + total // max(len(idx), 1)))[:total]
            idx = idx[self.rank :: self.world_size]
        return idx

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        for pos in range(self.start, len(order)):
            yield order[pos], sample_seed(self.seed, self.epoch, self.rank, pos)

    def __len__(self) -> int:
        return max(len(self.order()) - self.start, 0)


class SeededSamples(Dataset):
    """``dataset[i]`` computed under the sample's own seed (augmentation draws from the
    global torch RNG of whichever process loads it)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        # The CPU generator alone: samples are made on the CPU, and torch.manual_seed
        # would also queue a seed (with a captured stack trace) for every other device
        # type, which cost a third of a small model's epoch on CPU.
        torch.default_generator.manual_seed(seed)
        return self.dataset[index]


class SetupInterrupted(BaseException):
    """SIGTERM before the training loop began: nothing to checkpoint, so the trainer
    stops at once (a BaseException, so no ``except Exception`` in the setup swallows it)."""


class Preemption:
    """SIGTERM -> ``requested``; the training loop stops at the next batch boundary.

    ``immediate`` (the trainer's entry installs it so, before its setup and data
    download): a SIGTERM raises ``SetupInterrupted`` instead, until the training loop
    takes over (``immediate = False``). The handler's being there at all matters: Python
    as a PID namespace's init would otherwise never even see the signal.

    Installed only in the main thread (where Python delivers signals); elsewhere it stays
    inert and SIGTERM keeps its default meaning. Entered again (the loop inside the
    entry's), it stays installed until the outermost exit. ``epoch``/``step`` (steps
    done) are kept current by the loop so the stop can say how far past the signal it went.
    """

    def __init__(self, immediate: bool = False) -> None:
        self.requested = False
        self.immediate = immediate
        self.during: tuple[int, int] | None = None  # (epoch, steps done) at the signal
        self.epoch = 0
        self.step = 0
        self._previous: Any = None
        self._depth = 0

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            self.during = (self.epoch, self.step)
            if self.immediate:
                raise SetupInterrupted()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            if self._depth == 0:
                self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._depth:
            self._depth -= 1
            if self._depth == 0:
                signal.signal(signal.SIGTERM, self._previous)

    def should_stop(self, ddp: Any = None, device: torch.device | None = None) -> bool:
        """True when this process (or, under DDP, any rank) was asked to stop: all ranks
        must stop at the same step, or their collectives would wait for each other."""
        if ddp is None or not ddp.enabled:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
