"""Several seeds of one training run, combined into one model (``chaiderm train --ensemble N``).

Members are trained one after another into ``OUT/members/seed<S>`` from seeds ``seed, seed+1, ...`` and
then combined into ``OUT`` (``models.ensemble.combine``), so every command uses the ensemble like one run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaiderm.config import RunConfig
from chaiderm.data.records import ImageTable
from chaiderm.training import distributed
from chaiderm.training.checkpoint import training_progress
from chaiderm.training.loop import TrainResult, train

# trains one member: ``training.train``'s signature (a caller may wrap it, e.g. to show progress)
Trainer = Callable[..., TrainResult]


@dataclass
class EnsembleResult:
    run_dir: Path
    members: list[Path]
    trained: list[TrainResult] = field(default_factory=list)  # members trained by this call, in order
    dim: int | None = None  # the combined embedding's; None in a process that did not write it

    @property
    def skipped(self) -> list[str]:
        """Images some member skipped as unreadable (``skip_bad``), each once. Members train on the same
        table, so each usually skips the same ones."""
        return list(dict.fromkeys(s for r in self.trained for s in r.skipped))


def member_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / "members" / f"seed{seed}"


def train_ensemble(
    cfg: RunConfig,
    table: ImageTable,
    out: str | Path,
    n_members: int,
    *,
    resume: bool = False,
    trainer: Trainer = train,
    log: Callable[[str], None] | None = None,
    **train_kw: Any,
) -> EnsembleResult:
    """Train ``n_members`` (at least 2) copies of ``cfg`` that differ only in their seed and combine them
    into the run folder ``out``. ``cfg`` is not changed. With ``resume``, members that finished are kept
    and one that was stopped continues from its checkpoint. ``train_kw`` go to ``trainer`` for every member.
    Under torchrun every process trains every member (each batch split between them) and the first one
    writes the ensemble."""
    from chaiderm.models.ensemble import combine

    if n_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, not {n_members}")
    members, trained = [], []
    for i in range(n_members):
        seed = cfg.train.seed + i
        member = member_dir(out, seed)
        members.append(member)
        done = training_progress(member) if resume and member.exists() else None
        if done is not None and done[0] >= done[1]:
            continue  # finished before the run was stopped
        if log is not None:
            log(f"member {i + 1} of {n_members} (seed {seed})")
        mcfg = copy.deepcopy(cfg)
        mcfg.train.seed = seed
        trained.append(trainer(mcfg, table, member, resume=resume and member.exists(), **train_kw))
    result = EnsembleResult(Path(out), members, trained)
    d = distributed.from_env()
    if d is None or d.main:
        net, _ = combine([str(m) for m in members], out)
        result.dim = net.dim
    return result
