"""``chaiderm annotate``: sort images into visual-similarity groups, the way the paper's non-expert
annotator did. Every change is saved at once (CSV + a small sidecar listing the groups, both written
atomically); starting again on the same ``--out`` resumes where the last session stopped."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from chaiderm._io import write_json, write_text
from chaiderm.data.records import ImageTable, read_groups
from chaiderm.errors import DataError
from chaiderm.pipeline import load_image, to_png_bytes
from chaiderm.web.schemas import AssignIn, CreateGroupIn, MergeIn, RenameIn
from chaiderm.web.security import page as static_page
from chaiderm.web.security import secure

MODES = ("hierarchical", "joint")
BODY_LIMIT = 64_000  # the annotator's requests are small JSON bodies
# a name starting like a formula would run when the groups CSV is opened in a spreadsheet
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def check_group_name(name: str) -> str:
    """Group names are free text shown as text; refused only where they would break a file or a sheet."""
    name = name.strip()
    if not name:
        raise HTTPException(422, detail="a group name cannot be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise HTTPException(422, detail="a group name cannot hold control characters")
    if name.startswith(FORMULA_START):
        raise HTTPException(422, detail="a group name cannot start with = + - or @ (spreadsheet formulas)")
    return name


class Annotation:
    """Groups and assignments, persisted on every change."""

    def __init__(self, table: ImageTable, out: str | Path, mode: str = "hierarchical"):
        if mode not in MODES:
            raise DataError(None, f"annotate mode must be one of {MODES}, not '{mode}'")
        self.table, self.out, self.mode = table, Path(out), mode
        self.sidecar = self.out.with_name(self.out.name + ".groups.json")
        self.diagnosis = dict(zip(table.image_ids, table.diagnoses, strict=True))
        self.paths = dict(zip(table.image_ids, table.paths, strict=True))
        self.groups: dict[str, str | None] = {}  # name -> disease (None when disease-blind)
        self.assign: dict[str, str] = {}
        self.lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if self.sidecar.exists():
            try:
                saved = json.loads(self.sidecar.read_text())
                self.groups = {g["name"]: g.get("disease") for g in saved["groups"]}
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(self.sidecar, f"unreadable group list ({e})") from None
        if self.out.exists() and self.out.stat().st_size > 0:
            for iid, (group, disease) in read_groups(self.out).items():
                if iid not in self.diagnosis:
                    raise DataError(self.out, f"image id '{iid}' is not in the data being annotated")
                self.assign[iid] = group
                self.groups.setdefault(group, disease if self.mode == "hierarchical" else None)

    def _save(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        hier = self.mode == "hierarchical"
        w.writerow(["image_id", "group", "disease"] if hier else ["image_id", "group"])
        for iid in self.table.image_ids:
            if iid in self.assign:
                w.writerow([iid, self.assign[iid], self.diagnosis[iid]] if hier else [iid, self.assign[iid]])
        write_text(self.out, buf.getvalue())
        write_json(
            self.sidecar, {"mode": self.mode, "groups": [{"name": n, "disease": d} for n, d in self.groups.items()]}
        )

    def state(self, disease: str | None = None) -> dict:
        with self.lock:
            counts: dict[str, int] = {}
            for g in self.assign.values():
                counts[g] = counts.get(g, 0) + 1
            show = self.mode == "hierarchical" and disease is not None
            images = [
                {"image_id": i, "diagnosis": d, "group": self.assign.get(i)}
                for i, d in zip(self.table.image_ids, self.table.diagnoses, strict=True)
                if not show or d == disease
            ]
            groups = [
                {"name": n, "disease": d, "count": counts.get(n, 0)}
                for n, d in self.groups.items()
                if not show or d == disease
            ]
            return {
                "mode": self.mode,
                "diseases": sorted(set(self.table.diagnoses)),
                "groups": groups,
                "images": images,
                "assigned": len(self.assign),
                "total": len(self.table),
            }

    def create(self, name: str, disease: str | None) -> None:
        name = check_group_name(name)
        with self.lock:
            if name in self.groups:
                raise HTTPException(409, detail=f"group '{name}' exists")
            if self.mode == "hierarchical" and disease not in set(self.table.diagnoses):
                raise HTTPException(422, detail="hierarchical groups need one of the data's diseases")
            self.groups[name] = disease if self.mode == "hierarchical" else None
            self._save()

    def set(self, image_id: str, group: str | None) -> None:
        with self.lock:
            if image_id not in self.diagnosis:
                raise HTTPException(404, detail=f"no image '{image_id}'")
            if group is None:
                self.assign.pop(image_id, None)
            else:
                if group not in self.groups:
                    raise HTTPException(404, detail=f"no group '{group}'")
                parent = self.groups[group]
                if parent is not None and parent != self.diagnosis[image_id]:
                    raise HTTPException(
                        409, detail=f"group '{group}' is under {parent}, the image is {self.diagnosis[image_id]}"
                    )
                self.assign[image_id] = group
            self._save()

    def rename(self, old: str, new: str) -> None:
        new = check_group_name(new)
        with self.lock:
            if old not in self.groups:
                raise HTTPException(404, detail=f"no group '{old}'")
            if new in self.groups:
                raise HTTPException(409, detail=f"group '{new}' exists; merge instead")
            self.groups = {(new if n == old else n): d for n, d in self.groups.items()}
            self.assign = {i: (new if g == old else g) for i, g in self.assign.items()}
            self._save()

    def merge(self, source: str, target: str) -> None:
        with self.lock:
            if source not in self.groups or target not in self.groups or source == target:
                raise HTTPException(404, detail="merge needs two existing, different groups")
            if self.groups[source] != self.groups[target]:
                raise HTTPException(409, detail="groups under different diseases cannot merge")
            del self.groups[source]
            self.assign = {i: (target if g == source else g) for i, g in self.assign.items()}
            self._save()

    def thumbnail(self, image_id: str, side: int = 160) -> bytes:
        from chaiderm.evidence.render import thumbnail

        if image_id not in self.paths:
            raise HTTPException(404, detail=f"no image '{image_id}'")
        return to_png_bytes(thumbnail(load_image(self.paths[image_id]), side))


def get_annotation(request: Request) -> Annotation:
    return request.app.state.annotation


Ann = Annotated[Annotation, Depends(get_annotation)]


def create_annotate_app(table: ImageTable, out: str | Path, *, mode: str = "hierarchical") -> FastAPI:
    ann = Annotation(table, out, mode)  # fails early on a bad CSV, before the server starts
    app = FastAPI(title="chaiderm annotate")
    app.state.annotation = ann

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return static_page("annotate.html")

    @app.get("/api/state")
    def state(a: Ann, disease: str | None = None) -> dict:
        return a.state(disease)

    @app.post("/api/groups")
    def create(body: CreateGroupIn, a: Ann) -> dict:
        a.create(body.name, body.disease)
        return {"ok": True}

    @app.post("/api/assign")
    def assign(body: AssignIn, a: Ann) -> dict:
        a.set(body.image_id, body.group)
        return {"ok": True}

    @app.post("/api/groups/rename")
    def rename(body: RenameIn, a: Ann) -> dict:
        a.rename(body.old, body.new)
        return {"ok": True}

    @app.post("/api/groups/merge")
    def merge(body: MergeIn, a: Ann) -> dict:
        a.merge(body.source, body.target)
        return {"ok": True}

    @app.get("/api/thumb/{image_id}")
    def thumb(image_id: str, a: Ann) -> Response:
        return Response(a.thumbnail(image_id), media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    return secure(app, BODY_LIMIT)
