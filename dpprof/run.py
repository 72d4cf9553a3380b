"""``python -m dpprof.run [options] SCRIPT [args]``: the same as ``dpprof run``, in the form torchrun can
start on every rank: ``torchrun --nproc-per-node 2 -m dpprof.run train.py --epochs 1``."""

import sys

from dpprof.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
