"""chaiderm's research record: the studies that chose the product's settings, their code and their results.

Not part of the installed package. Run a study from the repository root as a module, e.g.
``python -m research.cross_validation.cv_select --help``; see research/README.md.
"""
