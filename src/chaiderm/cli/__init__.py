"""The ``chaiderm`` command: thin adapters from arguments to the layers below.

One module per command group; this one registers every command on ``app``, in the order ``chaiderm --help``
lists them.
"""

from __future__ import annotations

import sys

from chaiderm.cli import admin, archive, data, demo, evaluate, index, query, reproduce, serve, train
from chaiderm.cli._common import app, console, show_removed_settings_in_one_line
from chaiderm.cli.demo import demo_table
from chaiderm.cli.evaluate import evaluation_table

app.command()(train.ensemble)
app.command()(data.synth)
app.command("train")(train.train_cmd)
app.command("index")(index.index_cmd)
app.command()(query.query)
app.command("duplicates")(data.duplicates_cmd)
app.command()(serve.serve)
app.command()(evaluate.evaluate)
app.command()(admin.audit)
app.command()(admin.purge)
app.command()(data.annotate)
app.command()(reproduce.reproduce)
app.command()(demo.demo)
app.add_typer(data.groups_app, name="groups")
app.add_typer(archive.archive_app, name="archive")
app.add_typer(admin.users_app, name="users")

__all__ = ["app", "console", "demo_table", "evaluation_table", "main"]


def main() -> None:
    show_removed_settings_in_one_line()
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
