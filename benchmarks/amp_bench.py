"""The same as ``crossdistill bench amp [key=value ...] [--quick]``: see src/crossdistill/bench/amp.py."""
import sys

from crossdistill.bench import run_bench

if __name__ == "__main__":
    args = sys.argv[1:]
    run_bench("amp", [a for a in args if a != "--quick"], quick="--quick" in args)
