"""``python -m chaiderm.cli ...``: the ``chaiderm`` command."""

from chaiderm.cli import main

main()
