"""Embedding an archive on a Ray cluster (``chaiderm index --ray ADDRESS|local``).

Ray Data reads the archive's file list in blocks; a pool of actors, each holding the model once, decodes,
embeds and hashes its images and writes one shard file (rows, embeddings, evidence maps, digests, errors)
to a folder every worker can reach. The driver then reads the shards back in row order, so the index is
the one a single process builds: the same ids in the same order, the same embeddings to float tolerance.
An actor that dies is restarted and its blocks retried by Ray; a shard written twice (a retried block)
is read once. Unreadable images are skipped or refused exactly as the single-process path does.

Ray is an optional extra (``pip install -e '.[distributed]'``); nothing here is imported without ``--ray``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from chaiderm.config import RunConfig
from chaiderm.data.records import ImageTable
from chaiderm.errors import ChaidermError


class RayUnavailableError(ChaidermError):
    def __init__(self, detail: str):
        super().__init__(f"--ray: {detail}")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailableError(
            "Ray is not installed; install the distributed extra: pip install -e '.[distributed]'"
        ) from None
    return ray


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray waits minutes for a head that is not there; a TCP connection says within seconds."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(f"'{address}' is not local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayUnavailableError(
            f"no Ray cluster answers at '{address}' ({e}); start one or use --ray local"
        ) from None


def connect(address: str, num_cpus: int | None = None):
    """Join the cluster at ``address``, or start a local one (``local``); an already connected driver
    (a test session's cluster) is reused."""
    ray = _ray()
    if address != "local":
        _reachable(address)
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailableError(f"cannot connect to the Ray cluster at '{address}' ({e})") from None
    return ray


class _Embedder:
    """One per actor: the model is loaded once and embeds every block the actor is given."""

    def __init__(
        self, model_dir: str, views: str, store_maps: bool, shard_dir: str, threads: int, fault_marker: str | None
    ):
        import torch

        from chaiderm.models.embedding import load_model
        from chaiderm.models.ensemble import member_threads, set_member_threads

        torch.set_num_threads(threads)
        # an ensemble's members side by side only within this actor's share of the cores (its own process)
        set_member_threads(min(threads, member_threads()))
        self.model, self.cfg = load_model(model_dir, fold=True)
        self.model.eval()
        self.views, self.store_maps, self.shard_dir = views, store_maps, Path(shard_dir)
        self.fault_marker = fault_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from chaiderm._io import file_digest
        from chaiderm.data.transforms import prepare
        from chaiderm.models.inference import embed

        if self.fault_marker and not os.path.exists(self.fault_marker):
            Path(self.fault_marker).touch()
            os._exit(1)  # fault injection (tests): an actor lost mid-block, as a node failure loses it
        rows, paths = batch["row"].astype(np.int64), [str(p) for p in batch["path"]]
        images, ok, errors = prepare(paths, self.cfg.model.load_size, skip_bad=True)
        bad = sorted(set(range(len(paths))) - set(ok))
        if ok:
            emb, maps = embed(
                self.model, images, self.cfg.model.image_size, with_maps=self.store_maps, views=self.views
            )
        else:  # a block of unreadable files only
            emb, maps = np.zeros((0, self.model.dim), np.float32), None
        name = self.shard_dir / f"shard-{int(rows.min()):09d}-{uuid.uuid4().hex[:8]}.npz"
        tmp = name.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            rows=rows[ok],
            emb=emb,
            maps=maps if maps is not None else np.zeros((0,), np.float16),
            content=np.array([file_digest(paths[i]) for i in ok], dtype=object),
            bad_rows=rows[bad],
            errors=np.array(errors, dtype=object),
        )
        os.replace(tmp, name)  # a shard is whole or absent
        return {"shard": np.array([name.name]), "n": np.array([len(rows)])}


def embed_archive_ray(
    model_dir: str | Path,
    cfg: RunConfig,
    table: ImageTable,
    *,
    address: str = "local",
    workers: int | None = None,
    block_size: int = 64,
    store_maps: bool = True,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    shard_dir: str | Path | None = None,
    fault_marker: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, ImageTable, list[str], list[str]]:
    """``pipeline.embed_archive`` on a Ray cluster: the same five results, in the same row order.
    ``shard_dir`` must be reachable from every worker (a shared file system on a real cluster); by
    default a temporary folder, removed afterwards. ``fault_marker`` (tests): the first actor to find no
    file there creates it and dies mid-block."""
    ray = connect(address, workers)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    n_cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = workers or max(1, n_cpus)
    own = shard_dir is None
    # a folder of this run's own: shards of an earlier run in the same place are never read
    base = Path(shard_dir) if shard_dir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    shards = Path(tempfile.mkdtemp(prefix="chaiderm-shards-", dir=base))
    try:
        items = [{"row": i, "path": str(Path(p).resolve())} for i, p in enumerate(table.paths)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // block_size)))
        out = ds.map_batches(
            _Embedder,
            fn_constructor_kwargs=dict(
                model_dir=str(Path(model_dir).resolve()),
                views=cfg.model.views,
                store_maps=store_maps,
                shard_dir=str(shards.resolve()),
                threads=max(1, n_cpus // workers),
                fault_marker=fault_marker,
            ),
            batch_size=block_size,
            concurrency=workers,
            num_cpus=1,
            # an actor that dies is restarted and its block retried: Ray Data's actor pools do so by
            # default (tests/index/test_ray_index.py kills one)
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*concurrent actors.*")  # small archives: fewer blocks
            for b in out.iter_batches(batch_size=None, batch_format="numpy"):
                if progress is not None:
                    progress(int(np.sum(b["n"])) * 2)  # decoded and embedded, as the single-process bar counts
        return _assemble(shards, table, cfg, store_maps, skip_bad)
    finally:
        if own:
            shutil.rmtree(shards, ignore_errors=True)


def _assemble(shards: Path, table: ImageTable, cfg: RunConfig, store_maps: bool, skip_bad: bool):
    seen: set[int] = set()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]] = []
    bad: dict[int, str] = {}
    for f in sorted(shards.glob("shard-*.npz")):
        z = np.load(f, allow_pickle=True)
        rows = z["rows"]
        if rows.size and int(rows[0]) in seen:
            continue  # a retried block's second shard
        for r, e in zip(z["bad_rows"].tolist(), z["errors"].tolist(), strict=True):
            bad.setdefault(int(r), str(e))
        seen.update(int(r) for r in rows)
        if rows.size:
            parts.append((rows, z["emb"], z["maps"] if store_maps else None, list(z["content"])))
    if bad and not skip_bad:
        from chaiderm.data.transforms import prepare

        prepare([table.paths[min(bad)]], cfg.model.load_size)  # raises the single-process path's own error
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    if len(rows) + len(bad) != len(table) or len(set(rows.tolist())) != len(rows):
        raise ChaidermError(f"--ray: the workers returned {len(rows)} of {len(table) - len(bad)} images")
    order = np.argsort(rows, kind="stable")
    emb = np.concatenate([p[1] for p in parts])[order]
    maps = np.concatenate([p[2] for p in parts])[order] if store_maps else None
    content = [c for p in parts for c in p[3]]
    content = [content[i] for i in order]
    ok = rows[order].tolist()
    errors = [bad[r] for r in sorted(bad)]
    return emb, maps, table.subset(ok), content, errors
