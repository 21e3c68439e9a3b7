"""The lab's subcommands: ``crossdistill bench | reproduce | demo``, registered with the command line."""
from __future__ import annotations

import argparse
from typing import List

from ..commands import register_command
from ..errors import ConfigError
from .bench import names as bench_names, run_bench
from .reproduce import REPRODUCTIONS, demo, reproduce
from .reproduce.grid import Selection


def cmd_bench(args) -> int:
    run_bench(args.what, args.overrides, quick=args.quick)
    return 0


def cmd_reproduce(args) -> int:
    select = None
    if args.select_weight is not None:
        held_out = {} if args.validation is None else {"validation": args.validation}
        select = Selection(factors=args.select_weight, seeds=args.select_seeds, **held_out)
    elif args.validation is not None or args.select_seeds is not None:
        flag = "--validation" if args.validation is not None else "--select-seeds"
        raise ConfigError(f"{flag} sets how --select-weight chooses; add --select-weight")
    reproduce(args.what, quick=args.quick, out=args.out, seeds=args.seeds, select=select, workers=args.workers)
    return 0


def cmd_demo(args) -> int:
    demo(out=args.out, quick=args.quick)
    return 0


def _factors(text: str):
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(not v > 0 or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of positive weight factors "
                                         "such as 0.01,0.1,1,10")
    return values


def _positive(text: str) -> int:
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")


def _validation(text: str):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value >= 1 and value == int(value):
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"'{text}' is neither a count (≥ 1) nor a fraction in (0, 1)")


@register_command("bench")
def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="speed/memory benchmarks, reported as ratios measured in one run")
    b.add_argument("what", choices=bench_names() + ["all"])
    b.add_argument("overrides", nargs="*", default=[], help="key=value, e.g. n=50000 k=16384")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(fn=cmd_bench)


@register_command("reproduce")
def add_reproduce(sub) -> None:
    r = sub.add_parser("reproduce", help="run an experiment grid over seeds and write tables and plots")
    r.add_argument("what", choices=list(REPRODUCTIONS))
    r.add_argument("--quick", action="store_true")
    r.add_argument("--seeds", type=int, default=None)
    r.add_argument("--out", default=None)
    r.add_argument("--select-weight", nargs="?", const="0.01,0.1,1,10", default=None, type=_factors,
                   metavar="FACTORS", help="choose each variant's loss weight on a validation split: every "
                   "term's weight times each factor (default 0.01,0.1,1,10); tables report the selected one")
    r.add_argument("--validation", type=_validation, default=None,
                   help="with --select-weight: held-out part of the training split, a count or a fraction (default 0.2)")
    r.add_argument("--select-seeds", type=_positive, default=None, metavar="N",
                   help="with --select-weight: only the first N seeds train every candidate; the other seeds "
                   "train the chosen weight alone (default: every seed trains every candidate)")
    r.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="runs trained side by side in one-thread processes, for the reproductions that "
                   "train so (default: one per core, at most 4)")
    r.set_defaults(fn=cmd_reproduce)


@register_command("demo")
def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the main job: a quick cross-task distillation demo on built-in data")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true")
    d.set_defaults(fn=cmd_demo)


__all__: List[str] = ["cmd_bench", "cmd_reproduce", "cmd_demo"]
