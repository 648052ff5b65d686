"""`chaiderm evaluate`: a model and its archive measured on a labelled split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chaiderm.cli._common import TEST, _errors, _fail, checked_option, console, default_split


def evaluate(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    index: Annotated[Path, typer.Option(help="index folder (the archive that votes)")],
    data: Annotated[Path, typer.Option(help="labelled queries (ISIC 2017 folder or generic folder)")],
    split: Annotated[str | None, typer.Option(help="split of --data (ISIC default: test)")] = None,
    out: Annotated[Path | None, typer.Option(help="write every figure here as JSON")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
    vote: Annotated[
        str | None,
        typer.Option(
            help="uniform (each of the k neighbours one vote) or distance (weighed by 1 / squared distance); "
            "default: the model's own vote, as query and serve use it"
        ),
    ] = None,
) -> None:
    """Measure a model and its archive on a labelled split: kNN AUC@k per diagnosis with 95% intervals, the
    vote's balanced accuracy, REL@k where the data has groups. A query never votes for itself or its lesion."""
    from chaiderm._io import write_json
    from chaiderm.data.records import load_table
    from chaiderm.evaluation.evaluate import evaluate_index
    from chaiderm.pipeline import Predictor

    if not 10 <= n_boot <= 100_000:
        raise _fail(f"--n-boot must be between 10 and 100000, not {n_boot}")
    checked_option("vote", vote)
    with _errors():
        predictor = Predictor.load(model, index)
        vote = vote or predictor.vote
        table = load_table(data, default_split(data, split, TEST))
        try:
            res = evaluate_index(predictor, table, n_boot=n_boot, vote=vote)
        except ValueError as e:
            raise _fail(f"{data}: {e}") from None
    t = evaluation_table(res, len(table))
    console.print(t)
    if res["not_in_archive"]:
        console.print(f"note: diagnoses no archive case has (never predicted): {', '.join(res['not_in_archive'])}")
    if out is not None:
        write_json(out, {"model": str(model), "index": str(index), "data": str(data), "split": split, **res})
        console.print(f"written to {out}")


def evaluation_table(res: dict, n_queries: int) -> Table:
    """``evaluate``'s terminal table. Each AUC sits over its interval in one cell and long diagnosis names
    fold, so that seven diagnoses fit 80 columns without an ellipsis hiding a figure."""
    t = Table(title=f"{n_queries} queries against {res['n_archive']} archive cases")
    ks = list(res["balanced_accuracy"])
    t.add_column("AUC (95% interval)", overflow="fold")
    for k in ks:
        t.add_column(f"k={k}", justify="right", no_wrap=True)
    for c, row in res["auc"].items():
        t.add_row(c, *(f"{row[k]:.3f}\n{res['auc_ci'][c][k][0]:.2f}-{res['auc_ci'][c][k][1]:.2f}" for k in ks))
    t.add_section()
    t.add_row("balanced accuracy", *(f"{res['balanced_accuracy'][k]:.3f}" for k in ks))
    if "rel" in res:
        t.add_row("REL", *(f"{res['rel'][k]:.2f}" for k in ks))
    return t
