"""Training throughput per resolution: images/s, sec/kimg and peak memory of the full triangle iteration.

    accelerate launch --mixed_precision bf16 launch/benchmark_train.py --preset celebahq --res 1024
    python launch/benchmark_train.py --preset demo --res 32 --iterations 10      # CPU
    python launch/benchmark_train.py --preset celebahq --res 32 --batch 4 --count-ops   # launch-count proxy

Each resolution runs mid-fade (alpha 0.5, both paths active: the costlier case) at the preset's
schedule batch size as `train.py --batch auto` fits it to the GPU (or --batch), on random images already
on the device, so the figures measure the models, the objective and the optimisers, not the data pipeline
(see `python -m datasets_prep bench`).

`--count-ops` adds the number of ATen operator calls in one iteration (forward, backward and the three
updates). Each is a dispatch, and most a kernel launch, on a GPU; where the GPU waits on launches (the
low resolutions) this count, measurable on any machine, tracks the time of an iteration. The `launching`
column leaves out the views and aliases, which launch nothing.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils._python_dispatch import TorchDispatchMode

from progressive.nets.layers import resolutions
from progressive.objective import triangle_step
from progressive.presets import PRESETS
from progressive.train.batches import fit_schedule, smallest_gpu_memory_gib
from progressive.train.compile import COMPILE_MODES, recompilation_budget
from progressive.train.config import preset_config
from progressive.train.prepare import prepare_training
from progressive.train.report import peak_memory_gib


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operator calls made while it is active, by operator name.

    `launching` leaves out the calls that launch no kernel on a GPU: views and aliases (detach, view, t,
    expand, slice: new metadata over the same memory) and the profiler's record-function markers.
    """

    NO_KERNEL = frozenset({"_record_function_enter_new", "_record_function_exit"})

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()
        self.launching = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        if not func.is_view and name not in self.NO_KERNEL:
            self.launching += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="celebahq", choices=sorted(PRESETS), help="model preset")
    parser.add_argument("--res", type=int, default=None, help="largest resolution to measure (default: preset's)")
    parser.add_argument("--min-res", type=int, default=None, help="smallest resolution to measure")
    parser.add_argument(
        "--batch", type=int, default=None, help="global batch at every resolution (default: the schedule's, fitted)"
    )
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per resolution")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per resolution")
    parser.add_argument("--count-ops", action="store_true", help="also count ATen operator calls per iteration")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for networks and images")
    parser.add_argument("--channel-base", type=int, help="progressive presets: channel rule's base (train.py's flag)")
    parser.add_argument("--channel-max", type=int, help="progressive presets: most channels (train.py's flag)")
    parser.add_argument("--latent-dim", type=int, help="progressive presets: dimension of z (train.py's flag)")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="no",
        help="torch.compile the networks (the first iterations of each resolution compile: raise --warmup)",
    )
    parser.add_argument("--json", help="also write the images/s per resolution here (for train.py --throughput)")
    args = parser.parse_args()
    if args.count_ops and args.compile != "no":
        parser.error("--count-ops counts the calls of eager execution; compiled kernels are not ATen calls")

    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    config = preset_config(args.preset)
    top = args.res or config.resolution
    bottom = args.min_res or config.schedule.min_resolution
    if bottom > top:
        parser.error(f"--min-res {bottom} is above the largest resolution {top}")
    try:
        prepared = prepare_training(
            args.preset,
            config.optimizer,
            accelerator,
            seed=0,
            channels_last=args.channels_last,
            compile_mode=args.compile,
            channel_base=args.channel_base,
            channel_max=args.channel_max,
            latent_dim=args.latent_dim,
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        schedule = dataclasses.replace(config.schedule, max_resolution=top)
        batch_line = f"--batch {args.batch}"
        if not args.batch:  # the batch sizes train.py --batch auto would use, for the smallest GPU of the processes
            schedule, batch_line = fit_schedule(
                schedule,
                args.preset,
                smallest_gpu_memory_gib(accelerator),
                accelerator.num_processes,
                accelerator.mixed_precision,
            )
    except ValueError as error:
        parser.error(str(error))
    wrapped, optimizers, update = prepared.models, prepared.optimizers, prepared.update
    memory_format = prepared.memory_format
    cuda = accelerator.device.type == "cuda"

    if accelerator.is_main_process:
        print(
            f"preset {args.preset}, {accelerator.num_processes} process(es), device {accelerator.device}, "
            f"mixed precision {accelerator.mixed_precision}; {batch_line}"
        )
        ops_column = f" {'ATen ops':>9} {'launching':>9}" if args.count_ops else ""
        print(f"{'res':>5} {'alpha':>5} {'batch':>6} {'img/s':>9} {'sec/kimg':>9} {'peak GiB':>9}{ops_column}")
    measured: dict[str, float] = {}
    batches: dict[str, int] = {}
    budget = recompilation_budget(len(resolutions(bottom, top))) if args.compile != "no" else nullcontext()
    with budget:  # each resolution measured is a phase of compilation
        for resolution in resolutions(bottom, top):
            alpha = 1.0 if resolution == wrapped.min_resolution else 0.5
            wrapped.set_stage(resolution, alpha)
            batch = args.batch or schedule.batch_size_at(resolution)
            batches[str(resolution)] = batch
            local = batch // accelerator.num_processes
            x = (torch.rand(local, 3, resolution, resolution, device=accelerator.device) * 2 - 1).contiguous(
                memory_format=memory_format
            )
            if cuda:
                torch.cuda.reset_peak_memory_stats(accelerator.device)
            for iteration in range(args.warmup + args.iterations):
                if iteration == args.warmup:
                    if cuda:
                        torch.cuda.synchronize(accelerator.device)
                    accelerator.wait_for_everyone()
                    start = time.perf_counter()
                triangle_step(wrapped, optimizers, x, config=config.objective, update=update, check_range=False)
            if cuda:
                torch.cuda.synchronize(accelerator.device)
            accelerator.wait_for_everyone()
            images_per_second = batch * args.iterations / (time.perf_counter() - start)
            measured[str(resolution)] = images_per_second
            ops_column = ""
            if args.count_ops:  # after the timing: the counting mode slows every call down
                with OperatorCount() as count:
                    triangle_step(wrapped, optimizers, x, config=config.objective, update=update, check_range=False)
                ops_column = f" {sum(count.calls.values()):9d} {count.launching:9d}"
            if accelerator.is_main_process:
                print(
                    f"{resolution:5d} {alpha:5.1f} {batch:6d} {images_per_second:9.1f} {1000 / images_per_second:9.2f} "
                    f"{peak_memory_gib(accelerator.device):9.2f}{ops_column}",
                    flush=True,
                )

    if args.json and accelerator.is_main_process:
        Path(args.json).write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "device": torch.cuda.get_device_name() if cuda else str(accelerator.device),
                    "processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision,
                    "channels_last": args.channels_last,
                    "compile": args.compile,
                    "images_per_second": measured,
                    "batch_sizes": batches,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
