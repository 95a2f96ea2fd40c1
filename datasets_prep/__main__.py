"""Command line: `python -m datasets_prep {build,info,verify,bench}` (installed as `triangle-datasets`).

Exit codes: 0 success, 1 `verify` found problems, 2 bad usage or input (one `error: ...` line on
stderr), 130 interrupted (what was committed stays valid; rerun `build` with --resume).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from datasets_prep.build import BuildError, BuildInterrupted, BuildOptions, build_dataset, default_workers
from datasets_prep.check import describe, verify
from datasets_prep.images import CROPS, FILTERS, ImageSettings
from datasets_prep.lmdb_format import IMAGE_FORMATS, DatasetFormatError, is_power_of_two, read_metadata
from datasets_prep.sources import SourceError, open_source

EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Arguments that parse but make no sense together."""


def _add_build_parser(commands) -> None:
    build = commands.add_parser("build", help="build a multi-resolution LMDB from images, synthetic shapes or emoji")
    build.add_argument(
        "src",
        help="folder, .zip, cifar-10-python.tar.gz, synthetic:shapes?n=1000&seed=0, emoji:noto?bg=white or "
        "fashion-mnist:DIR",
    )
    build.add_argument("out", type=Path, help="output LMDB directory (data.mdb, lock.mdb, report.txt)")
    build.add_argument("--max-res", type=int, required=True, help="largest resolution, a power of two")
    build.add_argument("--min-res", type=int, default=4, help="smallest resolution, a power of two (default 4)")
    build.add_argument("--crop", choices=CROPS, default="center", help="center: centred square; none: stretch")
    build.add_argument("--filter", choices=FILTERS, default="box", help="box: 2x2 chain; lanczos: from the source")
    build.add_argument("--format", choices=IMAGE_FORMATS, default="png", help="stored encoding (default png)")
    build.add_argument("--workers", type=int, default=default_workers(), help="worker processes (default: all cores)")
    build.add_argument("--limit", type=int, help="use only the first N images (of each predefined split)")
    build.add_argument("--holdout", type=int, default=0, help="store the first N readable images as the holdout split")
    build.add_argument("--upscale", action="store_true", help="enlarge images below --max-res instead of skipping")
    build.add_argument("--resume", action="store_true", help="continue an interrupted build at OUT")
    build.add_argument("--overwrite", action="store_true", help="replace an existing build at OUT")
    build.add_argument("--commit-every", type=int, default=256, help="most images per write transaction")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(handler=run_build)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(prog="triangle-datasets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_build_parser(commands)

    info = commands.add_parser("info", help="print an LMDB's metadata")
    info.add_argument("out", type=Path)
    info.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    info.set_defaults(handler=run_info)

    check = commands.add_parser("verify", help="check that every image exists and has the right shape")
    check.add_argument("out", type=Path)
    check.add_argument("--full", action="store_true", help="decode every image and recompute the fingerprint")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(handler=run_verify)

    bench = commands.add_parser("bench", help="measure build and read throughput on a synthetic source")
    bench.add_argument("--workers", type=int, default=default_workers(), help="build and DataLoader workers")
    bench.add_argument("--count", type=int, default=1000, help="synthetic images to build and read")
    bench.add_argument("--max-res", type=int, default=128, help="largest resolution built")
    bench.add_argument("--format", choices=IMAGE_FORMATS, default="png", help="stored encoding")
    bench.set_defaults(handler=run_bench)
    return parser


def _settings_from(args: argparse.Namespace) -> ImageSettings:
    for flag, value in (("--max-res", args.max_res), ("--min-res", args.min_res)):
        if not is_power_of_two(value):
            raise UsageError(f"{flag} must be a power of two, got {value}")
    if args.min_res > args.max_res:
        raise UsageError(f"--min-res {args.min_res} is above --max-res {args.max_res}")
    for flag, value, least in (("--workers", args.workers, 1), ("--holdout", args.holdout, 0)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    if (args.limit is not None and args.limit < 1) or args.commit_every < 1:
        raise UsageError("--limit and --commit-every must be positive")
    return ImageSettings(args.max_res, args.min_res, args.crop, args.filter, args.format, args.upscale)


def _raise_interrupt(signum: int, frame) -> None:
    # `kill` (SIGTERM) then stops a build exactly like Ctrl-C: committed work kept, report written.
    raise KeyboardInterrupt


def run_build(args: argparse.Namespace) -> int:
    """The `build` subcommand."""
    settings = _settings_from(args)
    source = open_source(args.src, settings.max_res).limited(args.limit)
    if args.holdout and source.has_splits:
        raise UsageError(
            "this source comes with its own held-out split (CIFAR-10's test batch, Fashion-MNIST's t10k files); "
            "drop --holdout"
        )
    if args.holdout >= len(source):
        raise UsageError(f"--holdout {args.holdout} leaves no training image: the source has {len(source)} items")
    options = BuildOptions(
        workers=args.workers,
        holdout=args.holdout,
        commit_every=args.commit_every,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = build_dataset(source, args.out, settings, options)
    except BuildInterrupted as interrupted:
        done = interrupted.summary
        print(
            f"interrupted: {done.metadata['build']['next_item']} of {len(source)} items done and kept in {args.out}; "
            "rerun the same command with --resume to finish",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:  # a caller in the same process (the tests, a notebook) keeps its own SIGTERM behaviour afterwards
        signal.signal(signal.SIGTERM, previous)
    count = summary.metadata["count"]
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"wrote {sum(count.values())} images (train {count['train']}, holdout {count['holdout']}) "
        f"at {settings.min_res}..{settings.max_res} to {args.out}; skipped {summary.skipped} "
        f"(see {summary.report_path}); {summary.processed} items in {summary.seconds:.1f}s ({rate:.0f} images/s); "
        f"fingerprint {summary.metadata['fingerprint']}"
    )
    if sum(count.values()) == 0:
        raise UsageError(f"no usable image in {args.src}; reasons in {summary.report_path}")
    if count["train"] == 0:
        raise UsageError(f"every usable image went to the holdout split; lower --holdout (reasons for skips in "
                         f"{summary.report_path})")  # fmt: skip
    return 0


def run_info(args: argparse.Namespace) -> int:
    """The `info` subcommand."""
    metadata = read_metadata(args.out)
    print(json.dumps(metadata, indent=2, sort_keys=True) if args.json else "\n".join(describe(args.out, metadata)))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """The `verify` subcommand."""
    problems = verify(args.out, full=args.full, progress=not args.no_progress)
    shown = 20  # enough to see the pattern without flooding the terminal
    for problem in problems[:shown]:
        print(f"problem: {problem}")
    if len(problems) > shown:
        print(f"... and {len(problems) - shown} more")
    print(f"{args.out}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return EXIT_PROBLEMS if problems else 0


def run_bench(args: argparse.Namespace) -> int:
    """The `bench` subcommand (imports torch, so only when asked)."""
    from datasets_prep.bench import run_benchmark

    if not is_power_of_two(args.max_res) or args.max_res < 4:
        raise UsageError(f"--max-res must be a power of two of at least 4, got {args.max_res}")
    for flag, value in (("--workers", args.workers), ("--count", args.count)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    for line in run_benchmark(workers=args.workers, count=args.count, max_res=args.max_res, image_format=args.format):
        print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m datasets_prep` and `triangle-datasets`."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, SourceError, BuildError, DatasetFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
