"""`chaiderm query --dicomweb URL --study UID [--store]`: every dermoscopic image of a PACS study answered,
retrieved into memory only (nothing of the patient's is written here unless --reports asks), printed by SOP
Instance UID; with --store, one STOW-RS request per study puts an SR and an evidence capture per image back."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import typer

from chaiderm.cli._common import _errors, _fail, _warn, console
from chaiderm.errors import ChaidermError

CHUNK = 64  # images retrieved, decoded and answered together (as `query` answers files)


def check_options(images: list[Path] | None, url: str | None, studies: list[str] | None, csv, region) -> None:
    if images or url is None or not studies:
        raise _fail("query: --dicomweb URL --study UID [--store] reads a PACS instead of image files")
    if csv is not None or region is not None:
        raise _fail("query --dicomweb: --csv and --region are for image files")


@dataclass
class StudyAnswers:
    """What is kept of one study's answers to store them back: headers, results, neighbour images."""

    heads: list = field(default_factory=list)
    results: list = field(default_factory=list)
    neighbours: list = field(default_factory=list)


def _retrieve(pacs, refs, predictor, skip_bad: bool, skipped: list[str], answers: StudyAnswers | None):
    """The decodable images of ``refs`` and their refs; a bad one raises unless ``skip_bad`` (then named)."""
    from pydicom import dcmread

    from chaiderm.data.images import load_image

    kept, images = [], []
    for ref in refs:
        try:
            data = pacs.fetch(ref)
            images.append(load_image(data, ref.name, fit=predictor.cfg.model.load_size))
        except ChaidermError as e:
            if not skip_bad or getattr(e, "code", None) is None:  # a PACS that fails is never skipped
                raise
            skipped.append(str(e))
            typer.echo(f"warning: skipped {e}", err=True)
            continue
        kept.append(ref)
        if answers is not None:  # the header only: the SR and capture copy the study's patient and study modules
            answers.heads.append(dcmread(io.BytesIO(data), stop_before_pixels=True))
    return kept, images


def _answer(predictor, refs, images, k, where, reports, out: Path, answers: StudyAnswers | None) -> None:
    from chaiderm.evidence.report import write_query_json, write_query_report

    evidence = answers is not None or reports == "html"
    results = predictor.predict_many(images, k=k, image_ids=[r.instance for r in refs], where=where, evidence=evidence)
    for ref, res in zip(refs, results, strict=True):
        pred = res.prediction
        neighbours = predictor.neighbor_images(res) if evidence else []
        if reports == "html":
            write_query_report(out, ref.instance, res.image, pred, neighbours, res.qams, res.rams)
        elif reports == "json":
            write_query_json(out, ref.instance, pred)
        if answers is not None:
            answers.results.append(res)
            answers.neighbours.append(neighbours)
        dist = " ".join(f"{d}={p:.3f}" for d, p in pred.class_probabilities.items())
        typer.echo(f"{ref.instance}\t{pred.positive_class}_probability={pred.positive_probability:.3f}\t{dist}")


def query_studies(url, studies, model, index, out: Path, k, where, reports: str, skip_bad: bool, store: bool) -> None:
    from chaiderm.cli._pacs import find_images
    from chaiderm.pacs.results import Identity, study_results
    from chaiderm.pipeline import Predictor

    if reports != "none":
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _fail(f"{out}: cannot write reports there ({e.strerror or e})") from None
    skipped: list[str] = []
    stored = 0
    with _errors(skip_bad_hint=True):
        predictor = Predictor.load(model, index)
        pacs, found = find_images(url, studies, None, None)
        if not found.images:
            raise _fail(f"{pacs.name}: no dermoscopic or VL photographic image in study {', '.join(studies)}")
        for uid in studies:
            refs = [r for r in found.images if r.study == uid]
            answers = StudyAnswers() if store else None
            for start in range(0, len(refs), CHUNK):
                kept, images = _retrieve(pacs, refs[start : start + CHUNK], predictor, skip_bad, skipped, answers)
                _answer(predictor, kept, images, k, where, reports, out, answers)
            if answers is not None and answers.results:
                objects = study_results(answers.heads, answers.results, answers.neighbours, Identity.of(predictor))
                stored += pacs.store(objects, uid)
    _summary(skipped, store, stored, studies, pacs.name, reports, out)


def _summary(skipped, store, stored, studies, pacs_name, reports, out) -> None:
    if skipped:
        _warn(f"skipped {len(skipped)} unreadable image(s): no answer")
    if store:
        console.print(
            f"stored {stored} result object(s) (a report and an evidence capture per image) in new series of "
            f"study {', '.join(studies)} on {pacs_name}",
            highlight=False,
            soft_wrap=True,
        )
    if reports != "none":
        console.print(f"reports in {out}/", highlight=False, soft_wrap=True)
