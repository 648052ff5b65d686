"""Data commands: `chaiderm synth`, `duplicates`, `annotate` and `groups enhance/proxy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import _errors, _progress, console, default_split

groups_app = typer.Typer(no_args_is_help=True, help="Make similarity-group CSVs for training.")


def synth(
    out: Annotated[Path, typer.Option(help="output folder (train/val/test sub-folders)")] = Path("synthetic"),
    n_train: int = 300,
    n_val: int = 90,
    n_test: int = 120,
    size: int = 128,
    seed: int = 0,
    difficulty: Annotated[str, typer.Option(help="standard or easy")] = "standard",
) -> None:
    """Write the seeded synthetic dermoscopy set (images, exact masks, labels, groups)."""
    from chaiderm.data.synthetic import write_dataset

    total = n_train + n_val + n_test
    with _errors(), _progress() as p:
        task = p.add_task("generating", total=total, info="")
        write_dataset(
            out,
            splits={"train": n_train, "val": n_val, "test": n_test},
            size=size,
            seed=seed,
            difficulty=difficulty,
            progress=lambda: p.advance(task),
        )
    console.print(f"wrote {total} synthetic cases to {out}")


def duplicates_cmd(
    data: Annotated[Path, typer.Option(help="images to check (ISIC 2017, ISIC Archive download or generic folder)")],
    out: Annotated[Path, typer.Option(help="report folder: pairs.csv, index.html with thumbnails")],
    split: Annotated[str | None, typer.Option(help="ISIC 2017 split of --data (default train)")] = None,
    against: Annotated[Path | None, typer.Option(help="a second set, checked within and against the first")] = None,
    against_split: Annotated[str | None, typer.Option(help="ISIC 2017 split of --against")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="near-duplicate distance (default: chosen on ISIC 2017 training images)")
    ] = None,
    skip_bad: bool = False,
) -> None:
    """Find identical and near-duplicate images within and across sets (leakage between splits)."""
    from chaiderm.data.records import is_isic2017, load_table
    from chaiderm.evaluation.duplicates import DEFAULT_THRESHOLD, find_duplicates, image_features, write_report

    with _errors(skip_bad_hint=True):
        sets = []
        for label, path, sp in (("a", data, split), ("b", against, against_split)):
            if path is None:
                continue
            table = load_table(path, sp or ("train" if is_isic2017(path) else None))
            name = f"{label}:{sp}" if sp else label
            with _progress() as p:
                task = p.add_task(f"features of {path}", total=len(table), info="")
                feats, table = image_features(table, skip_bad=skip_bad, progress=lambda p=p, task=task: p.advance(task))
            sets.append((name, table, feats))
        pairs = find_duplicates(sets, DEFAULT_THRESHOLD if threshold is None else threshold)
        paths = {f"{n}:{i}": pth for n, t, _ in sets for i, pth in zip(t.image_ids, t.paths, strict=True)}
        write_report(out, pairs, paths)
    counts: dict[str, int] = {}
    for p_ in pairs:
        where = "within " + p_.a.split(":")[0] if p_.a.split(":")[0] == p_.b.split(":")[0] else "across sets"
        counts[f"{p_.kind}, {where}"] = counts.get(f"{p_.kind}, {where}", 0) + 1
    for k, v in sorted(counts.items()):
        typer.echo(f"{v}\t{k}")
    console.print(f"{len(pairs)} pair(s); {out / 'pairs.csv'} and {out / 'index.html'}")


def annotate(
    data: Annotated[Path, typer.Option(help="images to sort (ISIC 2017 folder or generic folder)")],
    out: Annotated[Path, typer.Option(help="groups CSV to write (resumed if it exists)")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    mode: Annotated[str, typer.Option(help="hierarchical (one disease at a time) or joint (disease-blind)")] = (
        "hierarchical"
    ),
    host: str = "127.0.0.1",
    port: int = 8001,
) -> None:
    """A page for sorting images into visual-similarity groups; writes `chaiderm train --groups` CSVs."""
    import uvicorn

    from chaiderm.data.records import load_table
    from chaiderm.web.annotate import create_annotate_app

    with _errors():
        table = load_table(data, default_split(data, split))
        application = create_annotate_app(table, out, mode=mode)
        console.print(f"annotator on http://{host}:{port}/ ({len(table)} images, saving to {out})")
        uvicorn.run(application, host=host, port=port, log_level="warning")


@groups_app.command("enhance")
def groups_enhance(
    enhance: Annotated[Path, typer.Option(help="ENHANCE folder (crowd/, student/)")],
    data: Annotated[Path, typer.Option(help="ISIC 2017 folder (its training split is grouped)")],
    out: Annotated[Path, typer.Option(help="folder for the group CSVs")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    n_finetune: Annotated[int, typer.Option(help="annotated images kept for group-based fine-tuning")] = 1000,
    melanoma_groups: Annotated[
        int, typer.Option(help="groups within melanoma (paper 20; research/cross_validation/ tried 10 and 5)")
    ] = 20,
    sk_groups: Annotated[int, typer.Option(help="groups within seborrheic keratosis (paper 12)")] = 12,
    nevus_groups: Annotated[int, typer.Option(help="groups within nevus (paper 15)")] = 15,
    blind_groups: int = 37,
    seed: int = 0,
) -> None:
    """Group images on non-expert ENHANCE ratings: hierarchical (within disease) and disease-blind.

    Writes groups.csv / groups_blind.csv (the fine-tuning images) and groups_heldout.csv /
    groups_blind_heldout.csv (the other rated images, for REL only), plus groups_info.json.
    """
    from chaiderm.data.enhance import GROUP_FILES, enhance_groups, read_enhance, write_group_files
    from chaiderm.data.records import load_table

    with _errors():
        table = load_table(data, default_split(data, split))
        ratings = read_enhance(enhance)
        per = {"melanoma": melanoma_groups, "seborrheic_keratosis": sk_groups, "nevus": nevus_groups}
        parts = enhance_groups(
            ratings,
            table.image_ids,
            table.diagnoses,
            n_finetune=n_finetune,
            groups_per_disease=per,
            n_blind=blind_groups,
            seed=seed,
        )
        write_group_files(
            parts,
            out,
            {
                "enhance": str(enhance),
                "data": str(data),
                "split": split,
                "seed": seed,
                "n_rated": sum(len(parts[k]) for k in ("finetune", "heldout")),
                "groups_per_disease": per,
                "blind_groups": blind_groups,
                "sources": ratings.sources,
            },
        )
    console.print(
        f"wrote {', '.join(GROUP_FILES.values())} to {out} ({len(parts['finetune'])} fine-tuning images, "
        f"{len(parts['heldout'])} held out)"
    )


@groups_app.command("proxy")
def groups_proxy(
    data: Annotated[Path, typer.Option(help="images to group (ISIC 2017 folder or generic folder)")],
    out: Annotated[Path, typer.Option(help="folder for the group CSVs")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    n_finetune: int = 1000,
    melanoma_groups: int = 20,
    sk_groups: int = 12,
    nevus_groups: int = 15,
    blind_groups: int = 37,
    seed: int = 0,
) -> None:
    """PROXY groups computed from the images (size, colour, border, texture), for data without annotations."""
    from chaiderm.data.enhance import GROUP_FILES, write_group_files
    from chaiderm.data.proxy import DESCRIPTORS, proxy_groups
    from chaiderm.data.records import load_table

    with _errors():
        table = load_table(data, default_split(data, split))
        per = {"melanoma": melanoma_groups, "seborrheic_keratosis": sk_groups, "nevus": nevus_groups}
        parts = proxy_groups(
            table.paths,
            table.image_ids,
            table.diagnoses,
            n_finetune=n_finetune,
            groups_per_disease=per,
            n_blind=blind_groups,
            seed=seed,
        )
        write_group_files(
            parts,
            out,
            {"kind": "proxy (computed, not human)", "descriptors": DESCRIPTORS, "data": str(data), "seed": seed},
        )
    console.print(f"wrote proxy groups ({', '.join(GROUP_FILES.values())}) to {out}")
