"""Export a latent interpolation video from a checkpoint: `triangle-export-video CHECKPOINT --out loop.mp4`.

Without --from/--to: a seamless loop through seeded random latents, one image or a grid (--grid 3x2), drawn by
the averaged generator. With --from A.png --to B.png: the path between the two images' encodings mu(x),
drawn by the generator trained with the inference model (--there-and-back: and back again, as a loop).
--strip also writes a PNG of evenly spaced frames.

MP4 is H.264 (needs `pip install 'divergence-triangle[video]'`); .gif works with imageio alone. Frames are
rendered in batches on the GPU when there is one and streamed to the encoder. A grayscale run's videos are RGB
frames with three equal channels (what players expect); its --strip PNG is single-channel (mode L), and --from/--to
images are converted to gray before they are encoded.
Exit codes: 0 done, 2 bad input (nothing written, earlier files kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from progressive.cli.checks import BadInput, check_output_suffix, check_writable_folder
from progressive.cli.common import (
    load_run,
    positive,
    run_main,
    save_png,
)
from progressive.eval.report import choose_generator
from progressive.eval.sources import read_image
from progressive.eval.video import (
    EASINGS,
    INTERPOLATIONS,
    VideoUnavailable,
    choose_target,
    frame_strip,
    parse_grid,
    render_frames,
    seeded_loop,
    segment,
    write_video,
)
from progressive.pretrained import pick_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triangle-export-video", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint file, run directory, or root of runs (the newest checkpoint)")
    parser.add_argument("--out", help="video file, .mp4 or .gif (default: RUN_DIR/interpolation-IMAGES.mp4)")
    parser.add_argument("--grid", default="1x1", help="COLUMNSxROWS of independent loops (default: %(default)s)")
    parser.add_argument("--seconds", type=positive(float, "--seconds"), default=10.0, help="length (default: 10)")
    parser.add_argument("--fps", type=positive(int, "--fps"), default=30, help="frames per second (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random keyframes (default: 0)")
    parser.add_argument("--keyframes", type=positive(int, "--keyframes"), help="latents per loop (default: 1 per 2 s)")
    parser.add_argument("--interp", choices=INTERPOLATIONS, default="slerp", help="between keyframes (default: slerp)")
    parser.add_argument("--ease", choices=EASINGS, default=None, help="default: cosine for loops, linear for --from")
    parser.add_argument("--size", type=positive(int, "--size"), help="side of each image in pixels (<= resolution)")
    parser.add_argument("--from", dest="from_image", help="image whose encoding starts the path (with --to)")
    parser.add_argument("--to", dest="to_image", help="image whose encoding ends the path (with --from)")
    parser.add_argument(
        "--there-and-back",
        action="store_true",
        help="with --from/--to: return to the first image, a seamless loop (--seconds covers both ways)",
    )
    parser.add_argument("--strip", help="also write a PNG strip of evenly spaced frames of the same path")
    parser.add_argument("--strip-frames", type=positive(int, "--strip-frames"), default=8, help="frames in --strip")
    parser.add_argument(
        "--generator",
        choices=("auto", "ema", "trained"),
        default="auto",
        help="auto: ema for loops, trained for --from",
    )
    parser.add_argument("--batch", type=positive(int, "--batch"), default=8, help="frames per forward (default: 8)")
    parser.add_argument("--quality", type=float, default=8.0, help="H.264 quality 0..10 (default: 8)")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: export_video(args))


def export_video(args: argparse.Namespace) -> int:
    try:
        columns, rows = parse_grid(args.grid)
        if args.out is not None:
            choose_target(args.out)  # checked before the checkpoint is read; chosen for real below
            check_writable_folder(Path(args.out).parent, "--out", args.out)
    except (ValueError, VideoUnavailable) as error:
        raise BadInput(str(error)) from error
    if (args.from_image is None) != (args.to_image is None):
        raise BadInput("--from and --to go together")
    if args.from_image is not None and (columns, rows) != (1, 1):
        raise BadInput("--grid applies to random loops; --from/--to draw one path")
    if args.there_and_back and args.from_image is None:
        raise BadInput("--there-and-back applies to --from/--to (random loops always loop)")
    frames = int(round(args.seconds * args.fps))
    if frames < 2:
        raise BadInput(f"--seconds {args.seconds} at --fps {args.fps} gives {frames} frame(s); need at least 2")
    strip_path = check_output_suffix(args.strip, (".png",), "--strip") if args.strip else None
    if not 0 <= args.quality <= 10:
        raise BadInput(f"--quality must lie in [0, 10], got {args.quality}")

    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    try:
        target = choose_target(args.out or run.run_directory / f"interpolation-{run.images_shown:09d}.mp4")
    except VideoUnavailable as error:
        raise BadInput(str(error)) from error
    size = args.size or run.resolution
    if size > run.resolution or size < 2:
        raise BadInput(f"--size must lie in [2, {run.resolution}] (the checkpoint's resolution), got {size}")
    latent_dim = run.models.latent_dim
    if args.from_image is not None:
        which = "trained" if args.generator == "auto" else args.generator
        channels = run.models.image_channels
        endpoints = torch.stack([read_image(p, run.resolution, channels) for p in (args.from_image, args.to_image)])
        with torch.no_grad():
            mu, _ = run.models.inference(endpoints.to(device))
        path = segment(
            mu[0].cpu(),
            mu[1].cpu(),
            interpolation=args.interp,
            easing=args.ease or ("cosine" if args.there_and_back else "linear"),
            there_and_back=args.there_and_back,
        )
    else:
        which = "ema" if args.generator == "auto" else args.generator
        keyframes = args.keyframes or max(2, round(args.seconds / 2))
        if keyframes < 2:
            raise BadInput(f"--keyframes must be at least 2, got {keyframes}")
        path = seeded_loop(args.seed, keyframes, columns * rows, latent_dim, args.interp, args.ease or "cosine")
    generator = choose_generator(run, which)

    if target.note:
        print(f"note: {target.note}", file=sys.stderr)
    positions = path.positions(frames)
    rendered = render_frames(generator, path, positions, columns, rows, size, batch_frames=args.batch)
    written = write_video(rendered, target, fps=args.fps, quality=args.quality)
    height, width = rows * size + (rows * size) % 2, columns * size + (columns * size) % 2
    print(
        f"wrote {target.path}: {written} frames {width}x{height} at {args.fps} fps, {target.format}, "
        f"{which} generator, {run.resolution}x{run.resolution} checkpoint at {run.images_shown / 1000:.1f} kimg"
    )
    if strip_path is not None:
        strip_frames = min(args.strip_frames, frames)
        chosen = torch.linspace(0, frames - 1, strip_frames).round().long()
        strip = render_frames(generator, path, positions[chosen], columns, rows, size, batch_frames=args.batch)
        save_png(frame_strip(strip), strip_path, run.models.image_channels)
        print(f"wrote {strip_path}: {strip_frames} frames of the same path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
