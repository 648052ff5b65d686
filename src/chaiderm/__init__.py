"""chaiderm: evidence-based melanoma classification (CHAI).

Pipeline: data -> models -> losses/training -> index -> evidence -> evaluation -> pipeline -> cli/web.
"""

import os

# torch's OpenMP threads busy-wait ~300k spins at every barrier by default. On a 2-core machine that
# shares its cores with one other job, each process then burns its slices spinning for a thread that is
# descheduled: measured 5x wall time for a training step beside another torch job. A short spin keeps
# ~85% of the solo speed and ~1.8x (not 5x) beside a competitor (bench/contention.py). libgomp reads
# this when torch loads it, so it must be set before the first `import torch`; a user's value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# numpy's OpenBLAS threads spin ~2^28 cycles (~0.1 s) after every BLAS call, on the cores the next forward
# pass needs: measured, a query after one numpy einsum took twice as long. 2^4 cycles: they sleep at once.
# Read when numpy loads OpenBLAS, so, like the above, it only works set before the first `import numpy`.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
