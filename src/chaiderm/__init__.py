"""chaiderm: evidence-based melanoma classification (CHAI).

Pipeline: data -> models -> losses/training -> index -> evidence -> evaluation -> pipeline -> cli/web.
"""

__version__ = "0.1.0"
