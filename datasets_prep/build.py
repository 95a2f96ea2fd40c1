"""Building a multi-resolution LMDB from a source: parallel processing, batched ordered commits, resume.

Items are processed by a pool of worker processes in windows of consecutive items; the main process
commits each window in one write transaction together with the updated metadata, whose
`build.next_item` says how far the source has been consumed. A killed build therefore leaves a
consistent prefix, and `resume=True` continues from `next_item` without duplicates.

A labelled source's labels go into the same transactions, one `{split}/label/{index}` key beside each
image, so they survive interruptions exactly as the images do. Whether every image written so far is
gray is carried in `build.all_gray` the same way; the finished build records `"channels": 1` for a set
of gray images (or a source that declares itself grayscale), else 3.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from multiprocessing.pool import Pool as WorkerPool
from pathlib import Path

import lmdb
from tqdm import tqdm

from datasets_prep.images import Encoded, ImageSettings, process_item, use_build_pixel_limit
from datasets_prep.lmdb_format import (
    FORMAT_VERSION,
    META_KEY,
    READERS,
    SKIPPED_PREFIX,
    DatasetFormatError,
    accumulate_fingerprint,
    finish_fingerprint,
    image_key,
    label_key,
    read_metadata,
    skipped_key,
    with_defaults,
)
from datasets_prep.locking import LOCK_NAME, DirectoryBusy, DirectoryLock
from datasets_prep.sources import Source, item_label

REPORT_NAME = "report.txt"
LMDB_FILES = ("data.mdb", "lock.mdb")
# The map grows by doubling whenever a transaction does not fit, so it can start small.
INITIAL_MAP_SIZE = 64 * 2**20
# Results of one window wait in memory before their commit; two windows are in flight at a time.
WINDOW_BYTES = 256 * 2**20
# Metadata fields that must match for --resume to continue an existing build.
RESUME_FIELDS = ("source", "resolutions", "image_format", "filter", "crop", "upscale", "class_names")
RESUME_BUILD_FIELDS = ("source_items", "source_listing", "holdout_requested")


class BuildError(ValueError):
    """The build cannot start: bad output path, or a --resume that does not match the existing build."""


@dataclass(frozen=True)
class BuildOptions:
    """How a build runs (as opposed to what it produces, which ImageSettings describes)."""

    workers: int  # worker processes decoding and encoding images
    holdout: int  # images (the first readable ones) stored in the holdout split instead of train
    commit_every: int  # most images per write transaction
    resume: bool  # continue an interrupted build at OUT
    overwrite: bool  # replace an existing build at OUT
    progress: bool  # show a progress bar (on terminals only)


@dataclass(frozen=True)
class BuildSummary:
    """What a build (or the part of it that ran before an interrupt) produced."""

    out: Path
    metadata: dict
    skipped: int
    seconds: float  # time spent by this run
    processed: int  # source items consumed by this run

    @property
    def report_path(self) -> Path:
        return self.out / REPORT_NAME


class BuildInterrupted(Exception):
    """Raised after a Ctrl-C or SIGTERM once the committed part is safe and the report written."""

    def __init__(self, summary: BuildSummary):
        super().__init__("build interrupted")
        self.summary = summary


def new_metadata(source: Source, settings: ImageSettings, options: BuildOptions) -> dict:
    """Metadata of a build that has not written anything yet."""
    return {
        "format_version": FORMAT_VERSION,
        "layout": "multires",
        "resolutions": settings.resolutions,
        "count": {"train": 0, "holdout": 0},
        "image_format": settings.image_format,
        "source": source.description,
        "class_names": list(source.class_names) if source.class_names is not None else None,
        "channels": 1 if source.grayscale else 3,  # 3 until a finished build has found every image gray
        "filter": settings.filter,
        "crop": settings.crop,
        "upscale": settings.upscale,
        "fingerprint": None,
        "complete": False,
        "skipped": 0,
        "bytes_per_resolution": {str(r): 0 for r in settings.resolutions},
        "build": {
            "source_items": len(source),
            "source_listing": source.listing_digest(),
            "holdout_requested": options.holdout,
            "next_item": 0,
            "fingerprint_sum": f"{0:064x}",
            "all_gray": True,  # every image written so far has three equal channels
        },
    }


def _prepare_output(out: Path, options: BuildOptions) -> None:
    """Check what is at `out` (locked by this build) and clear it when it is to be replaced."""
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return
    if not (out / "data.mdb").exists():
        raise BuildError(f"{out} exists and is not an LMDB directory; choose another output path")
    if options.overwrite or (not options.resume and _holds_no_image(out)):  # a failed build is replaced
        others = sorted(p.name for p in out.iterdir() if p.name not in (*LMDB_FILES, REPORT_NAME, LOCK_NAME))
        if others:
            raise BuildError(f"refusing to overwrite {out}: it also holds {others[:3]}")
        for name in (*LMDB_FILES, REPORT_NAME):
            (out / name).unlink(missing_ok=True)
    elif not options.resume:
        raise BuildError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")


def _holds_no_image(out: Path) -> bool:
    """True for an LMDB of this package whose build committed no image (nothing would be lost replacing it)."""
    try:
        metadata = read_metadata(out)
    except DatasetFormatError:
        return False
    return metadata["layout"] == "multires" and sum(metadata["count"].values()) == 0


def _resumed_metadata(env: lmdb.Environment, expected: dict, out: Path) -> dict:
    with env.begin() as txn:
        raw = txn.get(META_KEY)
    if raw is None:
        return expected
    existing = with_defaults(json.loads(raw))  # a build started before labels existed has no class_names
    differing = [f for f in RESUME_FIELDS if existing.get(f) != expected[f]]
    differing += [f"build.{f}" for f in RESUME_BUILD_FIELDS if existing["build"].get(f) != expected["build"][f]]
    if existing.get("format_version") != FORMAT_VERSION or differing:
        raise BuildError(f"cannot resume {out}: {', '.join(differing) or 'format_version'} differ from this command")
    return existing


def _commit(env: lmdb.Environment, puts: list[tuple[bytes, bytes]]) -> None:
    """Write all pairs in one transaction, doubling the map size until they fit."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in puts:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _record_window(metadata: dict, window: list, outcomes: list, puts: list) -> None:
    """Assign indices to one window's outcomes and append their key/value pairs to `puts`."""
    build = metadata["build"]
    accumulator = int(build["fingerprint_sum"], 16)
    for (position, item), outcome in zip(window, outcomes, strict=True):
        if not isinstance(outcome, Encoded):
            puts.append((skipped_key(position), f"{item.name}\t{outcome.reason}".encode()))
            metadata["skipped"] += 1
            continue
        split = item.split or ("holdout" if metadata["count"]["holdout"] < build["holdout_requested"] else "train")
        index = metadata["count"][split]
        for resolution, value in zip(metadata["resolutions"], outcome.values, strict=True):
            puts.append((image_key(split, resolution, index), value))
            metadata["bytes_per_resolution"][str(resolution)] += len(value)
        label = _checked_label(item, metadata["class_names"])
        if label is not None:
            puts.append((label_key(split, index), str(label).encode()))
        accumulator = accumulate_fingerprint(accumulator, split, index, outcome.digest, label)
        # A build resumed from before this field existed cannot know its first images: assume colour.
        build["all_gray"] = build.get("all_gray", False) and outcome.gray
        metadata["count"][split] = index + 1
    build["fingerprint_sum"] = f"{accumulator:064x}"
    build["next_item"] = window[-1][0] + 1


def _checked_label(item, class_names: list[str] | None) -> int | None:
    """The item's label when its source names classes (then every item must carry one in range), else None."""
    if class_names is None:
        return None
    label = item_label(item)
    if not isinstance(label, int) or not 0 <= label < len(class_names):
        raise BuildError(f"source item {item.name} has label {label!r}, not a class index below {len(class_names)}")
    return label


def _channels(metadata: dict) -> int:
    """1 when the source declared itself grayscale or every image written is gray, else 3."""
    written = sum(metadata["count"].values())
    return 1 if metadata["channels"] == 1 or (written and metadata["build"].get("all_gray", False)) else 3


# Blocked while the pool forks its workers, so none of them can take a stop signal with the main process's handler
# (which raises KeyboardInterrupt) before _start_worker has set its own: Pool's exit terminates its workers with
# SIGTERM at once, and a worker interrupted while starting can hold a queue lock both sides then wait on for ever.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _start_worker() -> None:
    # Ctrl-C reaches the whole process group; only the main process reacts (keeps what is committed, reports).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # inherited blocked from the main process
    use_build_pixel_limit()


# How long a stopping build lets the workers finish the window already queued before it kills them.
DRAIN_SECONDS = 10.0


def _drain(pool: WorkerPool, seconds: float) -> None:
    """Let the workers finish their queued items and exit, for at most `seconds`. Pool.terminate kills workers at
    once, and one killed while it writes a result holds the result queue's lock, which the pool's own task thread
    then waits on for ever (the build hung on Ctrl-C during a commit); workers that exited hold nothing."""
    pool.close()
    joiner = threading.Thread(target=pool.join, daemon=True)
    joiner.start()
    joiner.join(seconds)


@contextmanager
def _worker_pool(workers: int) -> Iterator[WorkerPool]:
    """A Pool whose workers start with the stop signals blocked until their own handlers are set (above), and
    which, when the build stops on an error or an interrupt, lets them drain (`_drain`) before it terminates them."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pool = Pool(workers, initializer=_start_worker)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal that arrived meanwhile is delivered here
    with pool:
        try:
            yield pool
        except BaseException:
            _drain(pool, DRAIN_SECONDS)
            raise


def write_report(env: lmdb.Environment, out: Path, source: Source, metadata: dict) -> Path:
    """Rewrite OUT/report.txt from the skipped records committed so far (so it never disagrees with the LMDB)."""
    lines = []
    with env.begin() as txn:
        cursor = txn.cursor()
        if cursor.set_range(SKIPPED_PREFIX):
            for key, value in cursor:
                if not key.startswith(SKIPPED_PREFIX):
                    break
                lines.append(value.decode())
    path = out / REPORT_NAME
    with path.open("w") as report:
        report.write(f"# source: {metadata['source']}\n")
        report.write(f"# written: {metadata['count']}; skipped: {len(lines)} (name<TAB>reason below)\n")
        report.writelines(line + "\n" for line in lines)
        if source.ignored:
            report.write(f"# ignored {len(source.ignored)} files without an image extension:\n")
            report.writelines(f"{name}\tignored: not an image extension\n" for name in source.ignored)
    return path


def build_dataset(source: Source, out: Path, settings: ImageSettings, options: BuildOptions) -> BuildSummary:
    """Build (or resume) the LMDB at `out`; BuildInterrupted on Ctrl-C/SIGTERM after saving what was committed."""
    out = Path(out)
    if options.resume and options.overwrite:
        raise BuildError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} exists and is not an LMDB directory; choose another output path")
    READERS.release(out)  # a reader's handle in this process would stop the writer from opening the files
    try:
        out.mkdir(parents=True, exist_ok=True)  # `build SRC data/new.lmdb` on a fresh checkout
        lock = DirectoryLock(out)
        lock.acquire()
    except DirectoryBusy as busy:
        raise BuildError(f"{out} is being built by {busy.holder}; wait for that build or choose another path") from None
    except OSError as error:
        raise BuildError(f"cannot create {out} ({error.strerror})") from error
    try:
        _prepare_output(out, options)
        return _build_locked(source, out, settings, options)
    except (lmdb.Error, OSError) as error:  # a full disk, a lost file system: committed transactions stay valid
        raise BuildError(
            f"building {out} failed ({error}); the images committed so far are kept: fix the cause (a full disk: "
            "make room), then rerun the same command with --resume"
        ) from error
    finally:
        lock.release()


def _build_locked(source: Source, out: Path, settings: ImageSettings, options: BuildOptions) -> BuildSummary:
    started = time.perf_counter()
    env = lmdb.open(str(out), map_size=INITIAL_MAP_SIZE, subdir=True, meminit=False)
    try:
        metadata = _resumed_metadata(env, new_metadata(source, settings, options), out)
        first = metadata["build"]["next_item"]
        try:
            _run_windows(env, source, settings, options, metadata)
        except KeyboardInterrupt:
            with env.begin() as txn:
                committed = json.loads(txn.get(META_KEY) or json.dumps(metadata))
            write_report(env, out, source, committed)
            processed = committed["build"]["next_item"] - first
            raise BuildInterrupted(
                BuildSummary(out, committed, committed["skipped"], time.perf_counter() - started, processed)
            ) from None
        metadata["complete"] = True
        metadata["channels"] = _channels(metadata)
        metadata["fingerprint"] = finish_fingerprint(
            int(metadata["build"]["fingerprint_sum"], 16),
            metadata["resolutions"],
            metadata["image_format"],
            metadata["count"],
        )
        _commit(env, [(META_KEY, json.dumps(metadata, sort_keys=True).encode())])
        write_report(env, out, source, metadata)
    finally:
        env.close()
    processed = metadata["build"]["next_item"] - first
    return BuildSummary(out, metadata, metadata["skipped"], time.perf_counter() - started, processed)


def _window_size(settings: ImageSettings, options: BuildOptions) -> int:
    # A pyramid's raw pixels take about 4 * R * R bytes (3 channels, plus a third for the lower levels).
    by_memory = WINDOW_BYTES // (4 * settings.max_res * settings.max_res)
    return max(2 * options.workers, min(options.commit_every, by_memory), 1)


def _run_windows(
    env: lmdb.Environment, source: Source, settings: ImageSettings, options: BuildOptions, metadata: dict
) -> None:
    first = metadata["build"]["next_item"]
    size = _window_size(settings, options)
    windows = [list(range(start, min(start + size, len(source)))) for start in range(first, len(source), size)]
    if not windows:  # a complete build resumed: nothing to do, no workers to start and stop
        return
    work = partial(process_item, settings=settings)
    progress = tqdm(
        total=len(source),
        initial=first,
        unit="img",
        desc="build",
        disable=None if options.progress else True,  # None: shown on terminals, hidden in logs and pipes
        smoothing=0.1,
    )
    with _worker_pool(options.workers) as pool, progress:

        def submit(positions: list[int]):
            items = source.for_worker([source.items[p] for p in positions])
            return pool.map_async(work, items, chunksize=max(1, len(items) // (4 * options.workers)))

        # Keep the next window queued while this one is committed, so workers never wait for the writer.
        pending = submit(windows[0])
        for number, window in enumerate(windows):
            following = submit(windows[number + 1]) if number + 1 < len(windows) else None
            outcomes = pending.get()
            puts: list[tuple[bytes, bytes]] = []
            _record_window(metadata, [(p, source.items[p]) for p in window], outcomes, puts)
            puts.append((META_KEY, json.dumps(metadata, sort_keys=True).encode()))
            _commit(env, puts)
            progress.update(len(window))
            pending = following


def default_workers() -> int:
    """CPU cores this process may use (respects affinity masks and container CPU sets)."""
    return len(os.sched_getaffinity(0))
