"""The command line: ``crossdistill train | eval | list``, and the commands other packages register
(:mod:`crossdistill.commands`): the lab's ``bench | reproduce | demo``.

Every user-caused problem ends in one line on stderr (``error: ...``) and a non-zero exit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .build import build_run, start_run
from .catalog import methods_lines, methods_table
from .commands import COMMANDS, load_command_packages
from .commands.evaluate import evaluate_checkpoint
from .commands.representation import evaluate_representation
from .config import RECIPES, list_configs, load_config
from .data import list_datasets
from .engine.distributed import distributed, world_info
from .engine.trainer import Trainer
from .errors import ConfigError, CrossDistillError, worker_error_line
from .models import create_model, list_models
from .sides import TOKEN_ALIASES
from .tasks import TASKS


def find_config(name: str) -> Path:
    """A YAML path, or a built-in recipe name such as ``quickstart/kd``."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    for cand in (RECIPES / name, RECIPES / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config '{name}' is neither a file nor a built-in recipe; `crossdistill list configs` shows them")


def cmd_train(args) -> int:
    cfg = load_config(find_config(args.config), args.overrides)
    with distributed():
        run = start_run(build_run(cfg, allow_imports=args.allow_imports), resume=args.resume)
        summary = Trainer(run).fit()
        rank, _ = world_info()
    best, last = summary["best"], summary["last"]
    m = summary["primary_metric"]
    if last and rank == 0:
        split = "" if summary.get("eval_split", "test") == "test" else f" on the {summary['eval_split']} split"
        print(f"done: {m}{split} last {last[m]:.4f} (epoch {last['epoch']}), best {best[m]:.4f} (epoch {best['epoch']}); "
              f"student saved to {summary['student']}")
    return 0


def cmd_eval(args) -> int:
    if args.protocol != "task":
        return cmd_eval_representation(args)

    with distributed():
        result = evaluate_checkpoint(args.checkpoint, args.overrides, precision=args.precision, device=args.device)
        rank, _ = world_info()
    if rank == 0:
        print(json.dumps(result, indent=2) if args.json else "  ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return 0


def cmd_eval_representation(args) -> int:
    result = evaluate_representation(args.checkpoint, args.protocol, args.overrides, ks=args.k, feature=args.feature)
    scores = {k: v for k, v in result.items() if isinstance(v, float)}
    print(json.dumps(result, indent=2) if args.json else "  ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return 0


def cmd_list(args) -> int:
    what = args.what
    if what == "methods":
        print(methods_table() if args.markdown else methods_lines(), end="\n" * (not args.markdown))
    elif what == "models":
        print("\n".join(list_models()))
    elif what == "datasets":
        print("\n".join(list_datasets()))
    elif what == "tasks":
        print("\n".join(TASKS.names()))
    elif what == "configs":
        print("\n".join(list_configs()))
    elif what == "layers":
        if not args.model:
            raise ConfigError("`crossdistill list layers MODEL` needs a model name")

        model = create_model(args.model, num_classes=10)
        tagged: dict = {}
        for tag, ps in (("stage", getattr(model, "feature_layers", ())), ("pooled", [getattr(model, "pooled_layer", None)]),
                        ("encoder", [getattr(model, "encoder_layer", None)]),
                        *((alias[1:], [getattr(model, attr, None)]) for alias, attr in TOKEN_ALIASES.items())):
            for p in ps:
                if isinstance(p, str):  # a layer may carry several aliases (a ViT's class token is @pooled and @cls)
                    tagged[p] = f"{tagged[p]} {tag}" if p in tagged else tag
        for p in getattr(model, "preact_layers", ()):  # the pre-activations AB reads (@preacts)
            base = p[: -len(":input")] if p.endswith(":input") else p
            tagged[base] = (tagged.get(base, "") + " preact" + (" (its input)" if base != p else "")).strip()
        for name, mod in model.named_modules():
            if name:
                print(f"{name:40s} {type(mod).__name__:22s} {tagged.get(name, '')}")
    return 0


EVAL_PROTOCOLS = """protocols:
  task    the student's output scored by its task's metric on the test split (accuracy, mIoU, ...)
  knn     k-NN on the frozen backbone's features: eval transform (no augmentation), the --feature
          output (default @pooled), L2-normalised, cosine similarity against the training split;
          majority vote of the k nearest (--k, default 1 and 20); ties go to the tied class whose
          best-ranked neighbour comes first (neighbours ranked by similarity, then lower index)
  linear  linear probe on the same features, computed once and cached in memory: L2-normalised,
          standardised with the training split's statistics, a linear classifier trained with SGD
          (lr 0.1, momentum 0.9, batch 256, 100 epochs, lr x0.1 at 60% and 80%); test top-1

knn and linear need a classification data set (training and test split with labels); both write
their result into eval.json next to the checkpoint. They work for teachers and students alike,
for every model of the registry."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error: ...`` line too (not usage text + message)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="crossdistill", description="Knowledge distillation for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a student (or a teacher: a config without teachers)")
    t.add_argument("config", help="YAML file or built-in recipe name (see `crossdistill list configs`)")
    t.add_argument("overrides", nargs="*", default=[], help="key=value, e.g. train.epochs=10 distill.terms.0.weight=2")
    t.add_argument("--resume", action="store_true", help="continue the run in output_dir from its checkpoint")
    t.add_argument("--allow-imports", action="store_true", help="trust import_path entries of this config")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint's student on its test set",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=EVAL_PROTOCOLS)
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*", default=[], help="data.key=value to evaluate on other data")
    e.add_argument("--json", action="store_true")
    e.add_argument("--precision", choices=["fp32", "auto", "bf16", "fp16"], default="fp32",
                   help="autocast precision (default fp32, as training evaluates unless train.eval_precision is set)")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--protocol", choices=["task", "knn", "linear"], default="task",
                   help="task: the task's own metric (default); knn / linear: the frozen backbone's features, "
                        "see below")
    e.add_argument("--k", type=int, nargs="+", default=[1, 20], help="k of the k-NN protocol (default: 1 20)")
    e.add_argument("--feature", default="@pooled", help="the layer whose output is the feature (default @pooled)")
    e.set_defaults(fn=cmd_eval)

    ls = sub.add_parser("list", help="list methods, models, datasets, tasks, configs, or a model's layers")
    ls.add_argument("what", choices=["methods", "models", "datasets", "tasks", "configs", "layers"])
    ls.add_argument("model", nargs="?")
    ls.add_argument("--markdown", action="store_true", help="methods: the markdown table of the README and docs/zoo.md")
    ls.set_defaults(fn=cmd_list)

    load_command_packages()  # the lab's bench / reproduce / demo, and any plugin's commands
    for _, add in COMMANDS.items():
        add(sub)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may also come after a flag
    (``crossdistill train CFG --resume train.epochs=10``), which plain argparse refuses."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and not any(x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return args.fn(args)
    except CrossDistillError as e:
        # an error raised in a DataLoader worker arrives wrapped in the worker's traceback: unwrap it
        print(f"{e.prefix}: {worker_error_line(e)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: nothing went wrong
        sys.stderr.close()
        return 0
    except OSError as e:  # the environment, not the input: disk full, permissions, a vanished folder
        where = f" ('{e.filename}')" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; check free disk space and permissions (a training run's last "
              "checkpoint is intact: resume it with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a training loop says itself what it kept (errors.Interrupted)
        print("interrupted before training started; nothing to resume" if args.command == "train" else
              "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
