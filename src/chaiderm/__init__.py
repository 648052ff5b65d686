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

__version__ = "0.1.0"
