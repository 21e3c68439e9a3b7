"""The same as ``crossdistill bench amp [key=value ...] [--quick]``: see src/crossdistill/lab/bench/amp.py."""
import sys

from crossdistill.lab.bench import run_bench

if __name__ == "__main__":
    args = sys.argv[1:]
    run_bench("amp", [a for a in args if a != "--quick"], quick="--quick" in args)
