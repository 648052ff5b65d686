"""`chaiderm reproduce`: the paper's Table 1 from ISIC 2017, ENHANCE and lesion masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import _errors, config_from_options, console


def reproduce(
    isic: Annotated[Path, typer.Option(help="ISIC 2017 folder (challenge layout)")],
    enhance: Annotated[Path, typer.Option(help="ENHANCE folder (non-expert ratings)")],
    masks_data: Annotated[Path, typer.Option(help="images with lesion masks for localisation (ham10000_dev)")],
    out: Annotated[Path, typer.Option(help="output folder; a killed run resumes from it")],
    seeds: Annotated[int, typer.Option(help="train every variant this many times (mean and std)")] = 1,
    epochs: Annotated[int | None, typer.Option(help="epochs from ImageNet (default: the tuned setting)")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="epochs of group fine-tuning from Disease")] = None,
    backbone: Annotated[str | None, typer.Option(help="backbone (default: the tuned setting)")] = None,
    image_size: Annotated[int | None, typer.Option(help="network input side")] = None,
    n_boot: int = 1000,
    paper_groups: Annotated[
        bool,
        typer.Option(
            "--paper-groups/--half-groups",
            help="hierarchical groups: the paper's 20 / 12 / 15, or half of them (10 / 6 / 8, docs/results.md)",
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="where to compute: cpu, cuda (not a setting of the results)")] = "cpu",
    views: Annotated[str | None, typer.Option(help="test-time views of every evaluation: none, flip, flip4")] = None,
    colour: Annotated[
        str | None, typer.Option(help="colour normalisation of every variant: none, shades_of_gray")
    ] = None,
    colour_jitter: Annotated[float | None, typer.Option(help="training brightness/contrast/saturation jitter")] = None,
    teach_maps: Annotated[
        bool,
        typer.Option(
            help="beyond the paper: the embeddings also learn where lesions are from a seeded quarter of "
            "--masks-data; localisation is then scored on the other three quarters"
        ),
    ] = False,
    teach_map_stride: Annotated[
        int | None, typer.Option(help="with --teach-maps: map stride of the taught variants, 32 or 16 (finer maps)")
    ] = None,
    mask_dice_share: Annotated[
        float | None,
        typer.Option(help="with --teach-maps: the Dice term's share of the mask term (0.5: mass and Dice alike)"),
    ] = None,
) -> None:
    """The paper's Table 1: six embeddings, AUC@k, REL@k, map localisation, statistics and figures.

    Defaults are the settings chosen on the validation split (research/reproduction/tune_val.py,
    research/reproduction/reproduction.md)."""
    from chaiderm.reproduce import ReproduceSettings, run_reproduce

    given = dict(
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        backbone=backbone,
        image_size=image_size,
        views=views,
        colour=colour,
        colour_jitter=colour_jitter,
        teach_maps=teach_maps or None,
        mask_dice_share=mask_dice_share,
        teach_map_stride=teach_map_stride,
    )
    s = config_from_options(ReproduceSettings, dict(given, seeds=seeds, n_boot=n_boot))
    if not paper_groups:
        from chaiderm.data.enhance import HALF_GROUPS

        s.groups_per_disease = dict(HALF_GROUPS)
    with _errors():
        run_reproduce(isic, enhance, masks_data, out, s, log=lambda m: console.print(m, markup=False), device=device)
