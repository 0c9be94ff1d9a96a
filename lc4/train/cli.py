"""``lc4 train CONFIG``: one stage of L-C4 training (seed Sec. 3.5).

CONFIG is a YAML or TOML file (see ``lc4.train.config`` for every key and its default, the
paper's settings). On several GPUs or machines run the same command through accelerate:
``accelerate launch -m lc4.train CONFIG``. ``--resume latest`` continues from the newest
checkpoint in OUTPUT/checkpoints (and starts afresh when there is none).
``--plan-memory`` prints the estimated peak memory of one training step and trains nothing.
"""
from __future__ import annotations

import argparse
import sys

from ..cli_logging import setup_cli_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="training configuration (.yaml or .toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optimizer.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", metavar="latest|PATH", default=None,
                        help="resume from the newest checkpoint ('latest') or a checkpoint folder")
    plan = parser.add_argument_group("memory planning")
    plan.add_argument("--plan-memory", action="store_true",
                      help="estimate the peak memory of one training step and exit")
    plan.add_argument("--resolution", type=int, default=None, help="(plan) frame side; default: the config's")
    plan.add_argument("--frames", type=int, default=None, help="(plan) frames per clip; default: the config's")
    plan.add_argument("--batch-size", type=int, default=None, help="(plan) clips per step; default: the config's")
    plan.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                      help="(plan) mixed precision; default: the config's (fp32 for 'no')")
    plan.add_argument("--num-gpus", type=int, default=1, metavar="N",
                      help="(plan) per-GPU memory when training on N GPUs (distributed.sharding decides "
                           "whether they share the model: fsdp, or each holds all of it: none)")
    plan.add_argument("--measure", action="store_true",
                      help="(plan) also run one real step on the GPU and report its measured peak")


def run(args: argparse.Namespace) -> int:
    from .config import load_config

    setup_cli_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, args.overrides)
    if args.plan_memory:
        from .memory import plan_memory, format_plan

        plan = plan_memory(config, resolution=args.resolution, frames=args.frames, batch_size=args.batch_size,
                           dtype=args.dtype, measure=args.measure, num_gpus=args.num_gpus)
        print(format_plan(plan))
        return 0
    from .loop import train

    result = train(config, resume=args.resume)
    if result.model_dir is not None:
        print(f"trained {result.step} steps; model written to {result.model_dir}")
    else:
        print(f"stopped at step {result.step}; checkpoints in {result.output_dir / 'checkpoints'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train L-C4 (stage 1: UNet with TDA; stage 2: CMPF)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(handler=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lc4.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"lc4 train: error: {error}", file=sys.stderr)
        return 2
