"""`chaiderm demo`: synthetic data to an evidence report, end to end, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from chaiderm.cli._common import _errors, _progress


def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("chaiderm-demo"),
    backbone: str = "efficientnet_lite0",
    n_train: int = 600,
    n_test: int = 150,
    size: int = 128,
    image_size: int = 112,
    epochs: Annotated[int, typer.Option(help="the Disease embedding's (the Hierarchical fine-tunes it 2 more)")] = 3,
    queries: int = 4,
    difficulty: str = "standard",
    seed: int = 0,
) -> None:
    """Synthetic data -> Disease and Hierarchical embeddings -> index -> evidence report, end to end."""
    from chaiderm.demo import DemoSettings, run_demo

    settings = DemoSettings(
        backbone=backbone,
        n_train=n_train,
        n_test=n_test,
        size=size,
        image_size=image_size,
        epochs=epochs,
        queries=queries,
        difficulty=difficulty,
        seed=seed,
    )
    with _errors(), _progress() as p:
        tasks: dict[tuple[str, int], int] = {}

        def on_step(name: str, epoch: int, step: int, n: int, loss: float) -> None:
            if (name, epoch) not in tasks:
                tasks[name, epoch] = p.add_task(f"{name} epoch {epoch + 1}/{epochs}", total=n, info="")
            p.update(tasks[name, epoch], completed=step, info=f"loss {loss:.4f}")

        summary = run_demo(out, settings, log=lambda msg: p.console.print(msg, markup=False), on_step=on_step)
    Console(markup=False, highlight=False).print(demo_table(summary))
    typer.echo(f"report: {Path(out) / 'report.html'}   figures: {Path(out) / 'demo.json'}")
    typer.echo(f"\nopen the evidence viewer on this model and archive:\n  {summary['serve']}")


def demo_table(summary: dict) -> Table:
    """The demo's last screen: one row per embedding, the figures a newcomer compares (all in demo.json)."""
    table = Table(title="synthetic images, not patients", title_justify="left")
    for col in ("embedding", "melanoma AUC@10", "REL@10", "trained in"):
        table.add_column(col, justify="left" if col == "embedding" else "right")
    for name, m in summary["metrics"].items():
        auc, rel = (m.get("auc") or {}).get("10"), (m.get("rel") or {}).get("10")
        took = summary["seconds"].get(f"train_{name.lower()}")
        table.add_row(
            name if took is not None else f"{name} (ImageNet, not trained)",
            "-" if auc is None else f"{auc:.3f}",
            "-" if rel is None else f"{rel:.2f}",
            "-" if took is None else f"{took:.0f} s",
        )
    table.caption = (
        "AUC@10: melanoma against the rest by a vote of the 10 nearest archive cases; REL@10: how many of "
        f"them share the query's similarity group. All in {summary['seconds']['total']:.0f} s."
    )
    table.caption_justify = "left"
    return table
