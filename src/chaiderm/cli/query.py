"""`chaiderm query`: a model and its archive answering images (files, or a PACS study)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import _errors, _fail, _warn, console
from chaiderm.cli._pacs import DicomWeb, Studies
from chaiderm.errors import ChaidermError


def query(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    index: Annotated[Path, typer.Option(help="index folder")],
    images: Annotated[list[Path] | None, typer.Argument(help="query image files")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("chaiderm-query"),
    k: int = 10,
    where: Annotated[
        str | None, typer.Option(help='only archive cases that pass, e.g. "sex = female and age >= 50"')
    ] = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            help="also write the predictions in the ISIC challenge's task 3 CSV layout, a row as each image is "
            "answered; an existing file of the same layout is resumed (its images are not answered again)"
        ),
    ] = None,
    csv_format: Annotated[str, typer.Option(help="isic2019 (MEL ... SCC, UNK) or isic2018 (MEL ... VASC)")] = (
        "isic2019"
    ),
    region: Annotated[
        str | None,
        typer.Option(help="search by the part of the image inside x0,y0,x1,y1 (pixels of the image; ';' for more)"),
    ] = None,
    reports: Annotated[
        str | None,
        typer.Option(
            help="per-image reports in --out: html (the evidence page, its JSON and images: about 3 MB with an "
            "ensemble), json (the vote and neighbours only, a few kB) or none. Default: html, or none with --csv"
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="skip unreadable images with a warning naming each (no CSV row, no report)")
    ] = False,
    dicomweb: DicomWeb = None,
    study: Studies = None,
    store: Annotated[
        bool,
        typer.Option(
            help="with --dicomweb: store the results back into each study, in new series: a Structured Report "
            "per image and a Secondary Capture of its evidence, both marked decision support, not a diagnosis"
        ),
    ] = False,
    level: Annotated[
        float, typer.Option(help="coverage level of the prediction sets (0.5 to below 1; needs an index with them)")
    ] = 0.9,
    novelty_threshold: Annotated[
        float | None,
        typer.Option(help="novelty percentile above which an answer is 'unlike the archive' (default: the index's)"),
    ] = None,
) -> None:
    """Classify images by kNN vote, print each answer, and write evidence reports and/or a predictions CSV.

    Images are embedded in batches and answered as they come. Without --csv each image gets an HTML evidence
    report (--reports html); with --csv the CSV alone is written unless --reports asks for reports too. A run
    that is stopped keeps the CSV rows it wrote; running it again with the same --csv answers only the rest.

    From a PACS: --dicomweb URL --study UID answers every dermoscopic and VL photographic image of the study
    (named by SOP Instance UID; other instances skipped and counted); no report files unless --reports asks,
    and with --store the results go back to the study."""
    from chaiderm.evaluation import isic_csv
    from chaiderm.index import refine
    from chaiderm.pipeline import Predictor

    _check_query_options(k, reports, level, novelty_threshold)
    if any((dicomweb, study, store)):  # a PACS study instead of files
        from chaiderm.cli import query_pacs

        query_pacs.check_options(images, dicomweb, study, csv, region)
        query_pacs.query_studies(dicomweb, study, model, index, out, k, where, reports or "none", skip_bad, store)
        return
    if not images:
        raise _fail("query: name image files, or a PACS study with --dicomweb URL --study UID")
    paths = _query_paths(images)
    reports = _report_mode(reports, csv, out)
    with _errors(skip_bad_hint=True), contextlib.ExitStack() as stack:
        predictor = _trusting(Predictor.load(model, index), index, level, novelty_threshold)
        if csv is not None:  # refuse a layout the archive's diagnoses do not fit before any query runs
            _ = [isic_csv.code_of(d, csv_format) for d in predictor.classes]
        run = _FileQueries(predictor, k, where, reports, skip_bad, refine.parse_regions(region), out, csv)
        if csv is not None:
            run.sheet = stack.enter_context(isic_csv.PredictionsFile(csv, csv_format))
            paths = _unanswered(paths, run.sheet, csv)
        for start in range(0, len(paths), QUERY_CHUNK):
            for path, res, searched in run.answers(paths[start : start + QUERY_CHUNK]):
                run.write(path, res, searched)
                typer.echo(answer_line(path.name, res.prediction))
    _summary(run)


def _check_query_options(k: int, reports: str | None, level: float, novelty_threshold: float | None) -> None:
    if not 1 <= k <= 1000:
        raise _fail(f"--k must be between 1 and 1000 (the number of nearest archive cases that vote), not {k}")
    if reports is not None and reports not in QUERY_REPORTS:
        raise _fail(f"--reports: one of {', '.join(QUERY_REPORTS)}, not '{reports}'")
    _check_trust(level, novelty_threshold)


def _summary(run: _FileQueries) -> None:
    if run.skipped:
        _warn(f"skipped {len(run.skipped)} unreadable image(s): no row, no report")
    if run.reports != "none":
        console.print(f"reports in {run.out}/", highlight=False, soft_wrap=True)
    if run.csv is not None:
        console.print(f"{run.answered} row(s) added to {run.csv}", highlight=False, soft_wrap=True)


def _report_mode(reports: str | None, csv: Path | None, out: Path) -> str:
    """The reports a file query writes (html without --csv, none with it, unless asked), their folder made."""
    if reports is None:
        reports = "none" if csv is not None else "html"
        if csv is not None:
            console.print("note: --csv without --reports: no report files (--reports json or html for them)")
    if reports != "none":
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _fail(f"{out}: cannot write reports there ({e.strerror or e})") from None
    return reports


def _unanswered(paths: list[Path], sheet, csv: Path) -> list[Path]:
    """The images a resumed CSV does not answer yet."""
    if not sheet.answered:
        return paths
    rest = [p for p in paths if p.stem not in sheet.answered]
    console.print(
        f"note: {csv} already answers {len(paths) - len(rest)} of these {len(paths)} image(s): skipped; "
        f"answering the other {len(rest)} (delete the file to answer all again)",
        highlight=False,
        soft_wrap=True,
    )
    return rest


@dataclass
class _FileQueries:
    """One `query` run over files: what it answers with, and where the answers go."""

    predictor: object
    k: int
    where: str | None
    reports: str
    skip_bad: bool
    boxes: list
    out: Path
    csv: Path | None
    sheet: object = None
    skipped: list[str] = field(default_factory=list)
    answered: int = 0

    def answers(self, chunk: list[Path]):
        """(path, result, region) for each image of ``chunk`` that loads, in order."""
        if self.boxes:
            yield from self._region_answers(chunk)
        else:
            yield from self._batch_answers(chunk)

    def _load(self, path: Path, **kw):
        """The decoded image, or None where it is skipped (--skip-bad); otherwise its error is raised."""
        from chaiderm.data.images import load_image

        try:
            return load_image(path, **kw)
        except ChaidermError as e:
            if not self.skip_bad:
                raise
            _skip(e, self.skipped)
            return None

    def _region_answers(self, chunk: list[Path]):
        # boxes are in the original image's pixels: decoded whole, one at a time
        from chaiderm.index import refine

        p = self.predictor
        for path in chunk:
            img = self._load(path)
            if img is None:
                continue
            try:
                regions = refine.from_original(self.boxes, img.shape[:2], p.cfg.model.load_size)
            except ChaidermError as e:
                raise _fail(f"{path}: {e}") from None
            res = p.predict(
                img, k=self.k, image_id=path.stem, where=self.where, regions=regions, evidence=self.reports == "html"
            )
            yield path, res, ";".join(map(str, regions)) or None

    def _batch_answers(self, chunk: list[Path]):
        from chaiderm.data.images import load_image

        p = self.predictor
        loaded, imgs, bad = [], [], None
        for path in chunk:
            try:  # decoded as an index, evaluate and the server decode: shrunk while >= load_size
                imgs.append(load_image(path, fit=p.cfg.model.load_size))
                loaded.append(path)
            except ChaidermError as e:
                if not self.skip_bad:
                    bad = e  # the images before it are answered (and written) first
                    break
                _skip(e, self.skipped)
        results = p.predict_many(
            imgs, k=self.k, image_ids=[x.stem for x in loaded], where=self.where, evidence=self.reports == "html"
        )
        yield from ((path, res, None) for path, res in zip(loaded, results, strict=True))
        if bad is not None:
            raise bad

    def write(self, path: Path, res, searched: str | None) -> None:
        """The image's report and CSV row, as --reports and --csv ask."""
        from chaiderm.evaluation import isic_csv
        from chaiderm.evidence.report import write_query_json, write_query_report

        pred = res.prediction
        try:
            if self.reports == "html":
                neigh = self.predictor.neighbor_images(res)
                write_query_report(self.out, path.stem, res.image, pred, neigh, res.qams, res.rams, region=searched)
            elif self.reports == "json":
                write_query_json(self.out, path.stem, pred, region=searched)
        except OSError as e:
            raise _fail(f"{self.out}: cannot write the report of {path.name} ({e.strerror or e})") from None
        if self.sheet is not None:
            try:
                self.sheet.write(path.stem, pred.class_probabilities, isic_csv.unknown_of(pred.uncertainty))
            except OSError as e:
                raise _fail(f"{self.csv}: cannot write the row of {path.name} ({e.strerror or e})") from None
        self.answered += 1


def _check_trust(level: float, novelty_threshold: float | None) -> None:
    if not 0.5 <= level < 1:
        raise _fail(f"--level: the prediction sets' coverage, from 0.5 to below 1, not {level}")
    if novelty_threshold is not None and not 50 <= novelty_threshold < 100:
        raise _fail(f"--novelty-threshold: a percentile from 50 to below 100, not {novelty_threshold}")


def _trusting(predictor, index: Path, level: float, novelty_threshold: float | None):
    """The predictor answering with prediction sets at ``level`` and the novelty threshold asked for."""
    predictor.level, predictor.novelty_threshold = level, novelty_threshold
    if predictor.uncertainty is None:
        _warn(f"{index}: built without a novelty reference: answers say 'novelty unknown' (index it again)")
    return predictor


def answer_line(name: str, pred) -> str:
    """One answer as ``query`` prints it: the novelty first, then the vote (with the calibrated probability
    and the prediction set where the index has them), tab-separated."""
    u = pred.uncertainty or {}
    pct = u.get("novelty_percentile")
    novelty = (
        "novelty=unknown"
        if pct is None
        else f"novelty={pct:.1f}" + ("(UNLIKE THE ARCHIVE)" if u.get("unlike_archive") else "")
    )
    dist = " ".join(f"{d}={p:.3f}" for d, p in pred.class_probabilities.items())
    fields = [name, novelty, f"{pred.positive_class}_share={pred.positive_probability:.3f}"]
    cal = u.get("calibrated_probabilities")
    if cal is not None and pred.positive_class in cal:
        fields.append(f"{pred.positive_class}_calibrated={cal[pred.positive_class]:.3f}")
    if u.get("prediction_set") is not None:
        fields.append(f"set@{u['set_level']:.0%}={'|'.join(u['prediction_set'])}")
    return "\t".join([*fields, dist])


QUERY_REPORTS = ("none", "json", "html")
# images decoded, embedded and searched together; small enough that a stopped run loses little
QUERY_CHUNK = 64


def _query_paths(images: list[Path]) -> list[Path]:
    """The query files, each once; refused where two files would answer under one image id (the CSV's rows
    and the reports are named by it)."""
    seen: dict[str, Path] = {}
    paths = []
    for p in images:
        first = seen.get(p.stem)
        if first is None:
            seen[p.stem] = p
            paths.append(p)
        elif first.resolve() != p.resolve():
            raise _fail(f"{first} and {p} would both answer as image '{p.stem}': query them in separate runs")
    return paths


def _skip(e: ChaidermError, skipped: list[str]) -> None:
    skipped.append(str(e))
    typer.echo(f"warning: skipped {e}", err=True)  # plain and unwrapped: the message names the file
