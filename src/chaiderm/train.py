"""``torchrun --nproc-per-node N -m chaiderm.train [chaiderm train options]``: data-parallel training.

Each process runs ``chaiderm train`` with the same options; ``training.distributed`` splits every batch
between them and only the first process writes the run folder or prints progress.
"""

from __future__ import annotations

import os
import sys


def relaunch(nproc: int, args: list[str]) -> int:
    """``chaiderm train --nproc N ARGS`` as ``torchrun --nproc-per-node N -m chaiderm.train ARGS``; ``args``
    are ``chaiderm train``'s options as typed (``--nproc`` is dropped). Returns torchrun's exit status."""
    import subprocess

    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            kept.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "chaiderm.train"]
    return subprocess.call([*cmd, *kept])


def main() -> None:
    from chaiderm import cli

    if int(os.environ.get("RANK", "0")) != 0:
        cli.console.quiet = True  # one process reports; errors still reach stderr
    cli.app(args=["train", *sys.argv[1:]], prog_name="chaiderm train")


if __name__ == "__main__":
    main()
