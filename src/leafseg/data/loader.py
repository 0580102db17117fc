"""Training batches streamed from a :class:`~leafseg.data.store.SampleStore`: a map-style dataset over the samples,
a sampler of whole steps, and a torch ``DataLoader`` whose workers read, flip and augment the next batches while
the current step runs.

Everything random about a batch depends only on (seed, step, rank): which samples (an epoch-wise seeded
permutation, the global batch split across ranks), their flips (drawn from the step's generator, which the training
method then goes on drawing t and noise from), and the augmentation (its own seed per step). Workers, prefetching
and resuming therefore change nothing in what a step sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import SampleAugmentation
from .io import flip
from .store import RowFile, SampleStore


def seeded(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (seed, step, rank, ...), independent across tuples."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def batch_indices(n: int, batch_size: int, world: int, rank: int, step: int, seed: int,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's sample indices at ``step``: epoch-wise seeded permutations, global batch split across ranks.
    ``weights`` (one per sample): drawn with replacement in proportion to them instead, seeded per step (e.g. each
    dataset equally often, whatever its size: :func:`dataset_weights`)."""
    per_step = batch_size * world
    if weights is not None:
        chunk = torch.multinomial(weights, per_step, replacement=True, generator=seeded(seed, 4, step))
        return chunk[rank * batch_size:(rank + 1) * batch_size]
    steps_per_epoch = max(1, n // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=seeded(seed, 1, epoch))
    while len(perm) < per_step:  # fewer images than one global batch: wrap around
        perm = torch.cat([perm, perm])
    chunk = perm[k * per_step:(k + 1) * per_step]
    return chunk[rank * batch_size:(rank + 1) * batch_size]


def dataset_weights(counts: list[int]) -> torch.Tensor:
    """Per-sample weights under which each dataset (``counts[i]`` consecutive samples) is drawn equally often."""
    if not counts or min(counts) < 1:
        raise ValueError(f"every dataset needs a training sample to be drawn equally often, got counts {counts}")
    return torch.cat([torch.full((c,), 1.0 / c, dtype=torch.float64) for c in counts])


def step_generator(seed: int, step: int, rank: int, batch: int, n_codes: int) -> tuple[torch.Generator, torch.Tensor]:
    """The step's generator and the flip codes drawn first from it; the training method draws the rest (t, noise,
    colour jitter) from the same generator, in a fixed order."""
    g = seeded(seed, 2, step, rank)
    return g, torch.randint(n_codes, (batch,), generator=g)


def augmentation_seed(seed: int, step: int, rank: int) -> int:
    return int(torch.randint(2**62, (1,), generator=seeded(seed, 3, step, rank)))


class StepSampler(Sampler):
    """Yields, from ``start_step`` on (without end), one list per step of this rank's ``(sample, flip code, step)``
    keys (:func:`batch_indices`, :func:`step_generator`)."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, n_codes: int, start_step: int = 0,
                 weights: torch.Tensor | None = None):
        self.n, self.batch_size, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.n_codes, self.start_step, self.weights = n_codes, start_step, weights

    def keys(self, step: int) -> list[tuple[int, int, int]]:
        idx = batch_indices(self.n, self.batch_size, self.world, self.rank, step, self.seed, self.weights)
        _, codes = step_generator(self.seed, step, self.rank, len(idx), self.n_codes)
        return [(int(i), int(c), step) for i, c in zip(idx, codes)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1


@dataclass
class TrainBatch:
    """One step's samples of this rank, as read, flipped and augmented: ``view`` is the image after the flips and
    the geometric transforms (the alignment teacher's input), ``images`` after the intensity transforms too;
    ``z0`` and ``tokens`` are the cached frozen targets' rows of the flipped samples (None without a cache), right
    for every sample that ``changed`` (geometric augmentation, negative crop) does not flag."""

    step: int
    indices: torch.Tensor
    codes: torch.Tensor
    view: torch.Tensor          # (B, 3, R, R) uint8
    images: torch.Tensor        # (B, 3, R, R) uint8
    masks: torch.Tensor         # (B, R, R) bool, or uint8 class indices of label maps
    changed: torch.Tensor       # (B,) bool
    z0: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


class TrainSamples(Dataset):
    """Map-style dataset over a store's samples. An item is one key ``(sample, flip code, step)``; the DataLoader
    asks for a step's keys together (``__getitems__``), which reads them, flips them and augments them as one batch
    (kornia's cost is per call more than per image)."""

    def __init__(self, store: SampleStore, codes: list[tuple[bool, bool]], augmentation: SampleAugmentation,
                 seed: int, rank: int, latents: RowFile | None = None, tokens: RowFile | None = None):
        self.store, self.codes, self.augmentation, self.seed, self.rank = store, codes, augmentation, seed, rank
        self.latents, self.tokens = latents, tokens

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key) -> TrainBatch:
        return self.__getitems__([key])

    def __getitems__(self, keys) -> TrainBatch:
        idx = [k[0] for k in keys]
        codes = [k[1] for k in keys]
        step = keys[0][2]
        images, masks = self.store.read(idx)
        images, masks = torch.from_numpy(images), torch.from_numpy(masks)
        images = torch.stack([flip(x, *self.codes[c]) for x, c in zip(images, codes)])
        masks = torch.stack([flip(x, *self.codes[c]) for x, c in zip(masks, codes)])
        seed = augmentation_seed(self.seed, step, self.rank)
        view, augmented, masks, changed = self.augmentation(images, masks, seed)
        batch = TrainBatch(step, torch.tensor(idx), torch.tensor(codes), view, augmented, masks, changed)
        pick = (np.arange(len(idx)), np.asarray(codes))  # the cached targets of the flipped samples
        if self.latents is not None:
            batch.z0 = torch.from_numpy(self.latents.read(idx)[pick])
        if self.tokens is not None:
            batch.tokens = torch.from_numpy(self.tokens.read(idx)[pick])
        return batch


def _first(batch):
    return batch  # __getitems__ already made the batch


def _worker_init(_):
    torch.set_num_threads(1)  # the training step has the cores; a worker reads and augments


def train_loader(dataset: TrainSamples, sampler: StepSampler, num_workers: int) -> DataLoader:
    """The step-by-step loader: workers (``data.num_workers``; 0 reads in the training process) keep two batches
    each in flight, in order."""
    # generator: the loader's own base seed (unused: workers draw nothing) must not come from the global generator,
    # which dropout draws from; a draw there would change the training numbers.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_first,
                      generator=torch.Generator().manual_seed(0), worker_init_fn=_worker_init if num_workers else None,
                      prefetch_factor=2 if num_workers else None, persistent_workers=False)
