"""Feeding real images to the trainer: a data order that is a pure function of images shown.

The global stream of sample indices is the concatenation of one seeded permutation per epoch.
Iteration k consumes stream[images_shown : images_shown + global_batch], and rank r of W takes its
contiguous slice of that. So the data seen depends only on (seed, images_shown, global batch):
resuming needs only the counter, each rank reads a disjoint shard, and W processes see exactly the
images one process would see with the same global batch.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datasets_prep.pixels import pixels_to_signed
from datasets_prep.synthetic import render_shape_image

# Ctrl-C, pre-emption (SLURM sends SIGTERM, or SIGUSR1 with --signal=USR1@SECONDS): checkpoint, then stop.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class StreamBatchSampler(Sampler[list[int]]):
    """Infinite batch sampler over the seeded global index stream, from position `start` on."""

    def __init__(
        self,
        dataset_size: int,  # number of images to draw from
        global_batch: int,  # images per iteration over all processes
        start: int = 0,  # position in the stream (= real images shown so far)
        seed: int = 0,  # seeds each epoch's permutation
        rank: int = 0,  # this process's index
        world_size: int = 1,  # number of processes
    ):
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        if global_batch % world_size != 0:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world_size} processes")
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.start = start
        self.seed = seed
        self.rank = rank

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        return torch.randperm(self.dataset_size, generator=generator)

    def indices(self, position: int, count: int) -> list[int]:
        """stream[position : position + count]."""
        out: list[int] = []
        while count > 0:
            epoch, offset = divmod(position, self.dataset_size)
            take = min(count, self.dataset_size - offset)
            out += self._permutation(epoch)[offset : offset + take].tolist()
            position += take
            count -= take
        return out

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            yield self.indices(position + self.rank * self.local_batch, self.local_batch)
            position += self.global_batch


def make_loader(dataset: Dataset, sampler: StreamBatchSampler, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over `sampler`'s batches; the trainer rebuilds it when the batch size or resolution changes."""
    if workers > 0:
        # Registered (once) after multiprocessing's own exit hook, so it runs first: see kill_workers_at_exit.
        atexit.unregister(kill_workers_at_exit)
        atexit.register(kill_workers_at_exit)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )


class WorkerLost(RuntimeError):
    """A DataLoader worker died (killed, out of memory): its batches are gone; the last checkpoint is intact."""


def loader_batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    """The batches of `loader`, reporting a dead worker as `WorkerLost`, at the `next()` that misses its batch.

    PyTorch learns of a dead worker two ways: a SIGCHLD handler that raises its RuntimeError asynchronously,
    wherever the main thread happens to be (even inside the code that reports the first failure), and a
    liveness check at `next()` while it waits for a batch (every few seconds). Only the second is kept: the
    handler goes back to the default once the iterator exists (torch installs it, once per process, when
    the first iterator with workers starts), so a worker's death is one exception, raised here.
    """
    iterator = iter(loader)
    if loader.num_workers > 0 and hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            batch = next(iterator)
        except (ConnectionError, EOFError) as error:  # the worker died while handing over a batch
            raise WorkerLost(f"lost the connection to a DataLoader worker ({error})") from error
        except RuntimeError as error:  # torch's "DataLoader worker (pid(s) ...) exited unexpectedly"
            # The iterator's worker processes (a private attribute of torch's iterator, the only place they are
            # listed): a RuntimeError while one of them is dead is that death; any other is not ours to rename.
            dead = [worker.pid for worker in getattr(iterator, "_workers", []) if not worker.is_alive()]
            if not dead:
                raise
            message = (str(error).strip().splitlines() or [""])[-1].rstrip(". ")
            raise WorkerLost(message or f"DataLoader worker(s) {dead} exited unexpectedly") from error
        yield batch


def ignore_stop_signals(worker_id: int) -> None:
    """Let a DataLoader worker outlive Ctrl-C and pre-emption signals sent to the whole process group.

    The training process stops gracefully on them (a checkpoint first) and still needs its batches;
    the workers end with it as usual (they exit when their parent is gone).
    """
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def kill_workers_at_exit() -> None:
    """End the DataLoader workers still alive when the training process exits, with SIGKILL.

    Python's exit ends daemonic children with SIGTERM and then waits for them; the workers ignore
    SIGTERM (above), so after an exception that leaves a DataLoader iterator alive (a damaged image,
    a failed checkpoint write, a killed worker) that wait would never end. A clean exit has shut its
    workers down already and finds none here.
    """
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if workers and hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report these kills as failures
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)


class SyntheticShapesDataset(Dataset):
    """`count` procedurally rendered shapes (datasets_prep/synthetic.py) at any power-of-two resolution."""

    def __init__(self, count: int, resolution: int, seed: int = 0):
        self.count = count
        self.seed = seed
        self.resolutions = [2**k for k in range(2, 11)]
        self.max_resolution = self.resolutions[-1]
        self.fingerprint = f"synthetic:shapes?n={count}&seed={seed}"
        self.channels = 3  # colour shapes (LMDBImageDataset.channels: the LMDB's mode)
        self.set_resolution(resolution)

    def set_resolution(self, resolution: int) -> None:
        if resolution not in self.resolutions:
            raise ValueError(f"synthetic shapes come in resolutions {self.resolutions}, not {resolution}")
        self.resolution = resolution

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(render_shape_image(index, self.resolution, self.seed))
        return pixels_to_signed(image.permute(2, 0, 1))
