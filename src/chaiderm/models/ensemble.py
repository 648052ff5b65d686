"""Several trained embeddings used as one model (``chaiderm ensemble RUN... --out RUN``).

The ensemble's embedding is its members' embeddings side by side, so its squared distance is the sum of
the members' squared distances (Eq. 1's D for each), and its activation maps are the members' maps stacked
along the channel axis. A QAM/RAM pair (Eq. 2) over the stack is then the sum of the members' pairs, each
weighted by its own distance terms: the maps still explain, cell by cell, the distance that ranked the
neighbour. Members must see the same input (size, crop, colour normalisation, mean/std) and give maps of
the same size; the ensemble run folder holds every member's weights in one ``model.safetensors`` and
their settings in its ``config.json``, so ``index``, ``query``, ``evaluate`` and ``serve`` use it as any run.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from chaiderm.config import ModelConfig, RunConfig, TrainConfig, model_from_dict
from chaiderm.errors import ArtifactError

ENSEMBLE = "ensemble"  # ModelConfig.backbone of an ensemble; ModelConfig.members holds its members

_POOL: tuple[tuple[int, int], ThreadPoolExecutor] | None = None  # ((pid, threads), pool)
_POOL_LOCK = threading.Lock()
_MEMBER_THREADS: int | None = None  # set_member_threads(); None: the operator's variable, else the cores


def set_member_threads(n: int | None) -> int | None:
    """Run at most ``n`` ensemble members at once in this process from now on (1: one after another);
    ``None`` goes back to the default of :func:`member_threads`. For a process that owns only part of the
    machine's cores (a Ray actor, one of several training processes side by side). Returns the previous
    setting, so a caller can restore it."""
    global _MEMBER_THREADS
    if n is not None and n < 1:
        raise ValueError(f"member threads: {n} (at least 1)")
    previous, _MEMBER_THREADS = _MEMBER_THREADS, n
    return previous


def member_threads() -> int:
    """How many members of an ensemble run at once when it answers queries: what
    :func:`set_member_threads` set, else ``CHAIDERM_MEMBER_THREADS`` from the environment (an operator's
    setting; 1 runs them one after another, as in training), else the cores this process may use, at most 8."""
    if _MEMBER_THREADS is not None:
        return _MEMBER_THREADS
    env = os.environ.get("CHAIDERM_MEMBER_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ArtifactError(f"CHAIDERM_MEMBER_THREADS: '{env}' is not a whole number") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def member_pool() -> ThreadPoolExecutor | None:
    """The process's one pool for ensemble members (None: run them in turn). Each of its threads runs one
    member at a time on one torch thread. On a batch of one a member's convolutions barely use a second
    thread (torch's intra-op threads mostly wait for each other), so two members side by side, one thread
    each, finish sooner than the two in turn on two threads each. Shared by every ensemble and request of
    the process, so concurrent queries (``serve``) never run more members at once than there are cores."""
    global _POOL
    n = member_threads()
    if n < 2:
        return None
    with _POOL_LOCK:
        # a forked child (Ray, data loaders) inherits the pool object but none of its threads
        if _POOL is None or _POOL[0] != (os.getpid(), n):
            if _POOL is not None and _POOL[0][0] == os.getpid():
                _POOL[1].shutdown(wait=False)  # another size asked for: the old threads end when idle
            pool = ThreadPoolExecutor(n, thread_name_prefix="chaiderm-member", initializer=_one_torch_thread)
            _POOL = ((os.getpid(), n), pool)
        return _POOL[1]


def _member_maps(member: nn.Module, x: torch.Tensor, start: int, inference: bool) -> torch.Tensor:
    # grad mode is per thread: the caller's inference mode must hold in the pool's thread too
    with torch.inference_mode(inference), torch.no_grad():
        return member.evidence_maps(x, start)[0]


class EnsembleNet(nn.Module):
    def __init__(self, members: list[nn.Module], cfg: ModelConfig):
        super().__init__()
        if len(members) < 2:
            raise ArtifactError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.cfg = cfg
        self.dim = sum(m.dim for m in members)
        self.classifier = None
        self.freeze_stages = 0
        self._shared: int | None = None

    @property
    def mean(self) -> tuple[float, ...]:
        return self.members[0].mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.members[0].std

    @property
    def colour(self) -> str:
        return self.cfg.colour

    def shared_stages(self) -> int:
        """How many leading backbone stages every member has with equal weights and buffers: members
        fine-tuned from one ImageNet backbone keep its frozen stem identical (the first 6 of Lite0's 18
        stages), so it is computed once per image, not once per member. An ensemble is never trained:
        its weights change only through ``load_state_dict``, which forgets the count."""
        if self._shared is None:
            self._shared = self._count_shared()
        return self._shared

    def load_state_dict(self, *args, **kwargs):  # type: ignore[override]
        self._shared = None
        return super().load_state_dict(*args, **kwargs)

    def _count_shared(self) -> int:
        stages = [getattr(getattr(m, "backbone", None), "stages", None) for m in self.members]
        if any(s is None for s in stages):
            return 0
        # equal weights are not equal arithmetic where padding differs (combine lets members differ in it)
        if len({m.cfg.padding for m in self.members}) > 1:
            return 0
        n = 0
        for i in range(min(len(s) for s in stages)):
            first = stages[0][i].state_dict()
            for other in stages[1:]:
                mod = other[i]
                theirs = mod.state_dict()
                if type(mod) is not type(stages[0][i]) or theirs.keys() != first.keys():
                    return n
                if not all(torch.equal(first[k], theirs[k]) for k in first):
                    return n
            n = i + 1
        return n

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' evidence maps stacked: ``(B, sum of D, h, w)``; each member's part averages to
        its own embedding (L2-normalised where that member normalises). Bit-identical to running each
        member on ``x`` with the same torch threads: the shared stages are the same modules' arithmetic on
        the same input. Answering queries (eval mode, no gradients, CPU), the members after the shared
        stages run side by side on ``member_pool``'s threads, one torch thread each."""
        # training mode would update each member's BN statistics, which a shared pass would skip
        n = 0 if self.training else self.shared_stages()
        for s in self.members[0].backbone.stages[:n]:
            x = s(x)
        pool = None
        # only where no gradient is asked for (autograd across threads would work but nothing needs it)
        if not self.training and not torch.is_grad_enabled() and x.device.type == "cpu":
            pool = member_pool()
        if pool is None:
            return torch.cat([m.evidence_maps(x, n)[0] for m in self.members], dim=1)
        inference = torch.is_inference_mode_enabled()
        parts = [pool.submit(_member_maps, m, x, n, inference) for m in self.members]
        return torch.cat([p.result() for p in parts], dim=1)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pool(fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise ArtifactError("an ensemble has no classifier head")

    def evidence_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.forward_features(x)
        return g, self.pool(g)

    def fold(self) -> int:
        """Inference only: each member's batch norms folded (``models.fold``). Members that shared their
        frozen stem still do: equal weights fold to equal weights."""
        from chaiderm.models.fold import mark_folded

        n = sum(m.fold() for m in self.members)
        mark_folded(self)
        self._shared = None
        return n


def build_ensemble(cfg: ModelConfig) -> EnsembleNet:
    from chaiderm.models.embedding import build_model

    members = [build_model(model_from_dict(m, "model: members"), load_pretrained=False) for m in cfg.members or []]
    return EnsembleNet(members, cfg)


SAME_INPUT = ("image_size", "load_size", "colour", "map_stride")


def combine(
    runs: list[str | Path], out: str | Path, *, views: str | None = None, vote: str | None = None
) -> tuple[EnsembleNet, RunConfig]:
    """Write the ensemble of trained ``runs`` to the run folder ``out``; refuses members that would not
    see the same input or whose maps could not be stacked."""
    from chaiderm.models.embedding import load_model, save_model

    if len(runs) < 2:
        raise ArtifactError("an ensemble needs at least two trained runs")
    loaded = [load_model(r) for r in runs]
    first_model, first = loaded[0]
    for (model, cfg), run in zip(loaded, runs, strict=True):
        if cfg.model.backbone == ENSEMBLE:
            raise ArtifactError(f"{run}: is an ensemble already; list its members instead")
        for f in SAME_INPUT:
            if getattr(cfg.model, f) != getattr(first.model, f):
                raise ArtifactError(
                    f"{run}: {f} is {getattr(cfg.model, f)}, {runs[0]} has {getattr(first.model, f)}; "
                    "an ensemble's members must see the same input"
                )
        if model.mean != first_model.mean or model.std != first_model.std:
            raise ArtifactError(f"{run}: its backbone scales inputs differently from {runs[0]}'s")
        if cfg.train.positive_class != first.train.positive_class:
            raise ArtifactError(
                f"{run}: positive class '{cfg.train.positive_class}', {runs[0]} has '{first.train.positive_class}'"
            )
    with torch.no_grad():  # every member must give maps of the same size at this input
        x = torch.zeros(1, 3, first.model.image_size, first.model.image_size)
        sizes = {tuple(m.forward_features(x).shape[2:]) for m, _ in loaded}
    if len(sizes) > 1:
        raise ArtifactError(f"the members' evidence maps differ in size ({sorted(sizes)}); use one map stride")
    mc = ModelConfig(
        backbone=ENSEMBLE,
        pretrained=False,
        head="conv",
        embedding_dim=sum(m.dim for m, _ in loaded),
        image_size=first.model.image_size,
        load_size=first.model.load_size,
        views=views or first.model.views,
        # the members' vote where they share one (a recipe's members do); else each neighbour one vote
        vote=vote or (first.model.vote if len({c.model.vote for _, c in loaded}) == 1 else "uniform"),
        colour=first.model.colour,
        map_stride=first.model.map_stride,
        members=[c.model.to_dict() for _, c in loaded],
    )
    cfg = RunConfig(
        model=mc,
        train=TrainConfig(
            logic="none",
            epochs=0,
            positive_class=first.train.positive_class,
            # the members' recipe, where they share one: `chaiderm train --recipe` ends in this ensemble
            recipe=first.train.recipe if len({c.train.recipe for _, c in loaded}) == 1 else "",
        ),
    )
    cfg.data.members = [str(Path(r).resolve()) for r in runs]
    cfg.data.diagnoses = first.data.diagnoses
    cfg.data.vocabulary = first.data.vocabulary
    cfg.data.holdout = first.data.holdout  # members of one `train --ensemble` share it
    net = EnsembleNet([m for m, _ in loaded], mc).eval()
    save_model(net, out, cfg)
    return net, cfg
