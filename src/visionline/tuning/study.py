"""The study in the artifact store: its keys, its name, and Optuna's journal kept as
one object there, so a search that dies is continued by starting it again."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

from visionline.config import PipelineConfig, TuneConfig
from visionline.data.manifest import DatasetRef
from visionline.errors import TuningError
from visionline.storage import ArtifactStore
from visionline.tuning.space import base_params, trial_epochs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPaths:
    """Every store key of one study: ``tuning/<study>/...``."""

    study: str

    @property
    def prefix(self) -> str:
        return f"tuning/{self.study}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def relative(self, key: str) -> str:
        """A key of this study as a link from its report, which sits beside it."""
        return key.removeprefix(f"{self.prefix}/")

    @property
    def journal(self) -> str:
        return self._key("journal.jsonl")

    @property
    def report(self) -> str:
        return self._key("report.md")

    @property
    def trials(self) -> str:
        return self._key("trials.json")

    @property
    def best(self) -> str:
        return self._key("best.json")

    @property
    def best_config(self) -> str:
        return self._key("best_config.yaml")

    @property
    def history_png(self) -> str:
        return self._key("optimization_history.png")

    @property
    def importance_png(self) -> str:
        return self._key("param_importances.png")


def study_name(cfg: PipelineConfig, dataset: DatasetRef) -> str:
    """The same search (training inputs, data, space, metric, pruner, seed) has the same
    name, so starting it again continues it. How many trials, how long and how many at
    once are not part of it: ``--trials 12`` after ``--trials 8`` adds four trials."""
    tune = cfg.tune.model_dump(
        mode="json", exclude={"n_trials", "timeout_s", "parallel", "threads_per_trial"}
    )
    blob = json.dumps(
        {"base": cfg.fingerprint(), "dataset": str(dataset), "tune": tune}, sort_keys=True
    ).encode()
    return f"{cfg.name}-{dataset.version}-{hashlib.sha256(blob).hexdigest()[:8]}"


def metric_direction(metric: str) -> str:
    """Which way the search drives its metric (accuracy up, loss down)."""
    return "maximize" if metric == "val_accuracy" else "minimize"


class StoreJournal(BaseJournalBackend):
    """Optuna's journal as one object in the artifact store (a directory or S3).

    This process is the study's only writer, so the log in memory is the truth and each
    append rewrites the object (atomically: a reader, or a restarted tuner, sees the old
    journal or the new one, never half a line). Before writing, the stored journal is
    compared with what this process last wrote: a second tuner on the same study is
    refused instead of silently overwriting the first one's trials.
    """

    def __init__(self, store: ArtifactStore, key: str) -> None:
        self.store = store
        self.key = key
        self._logs: list[dict[str, Any]] = []
        self._blob = b""
        if store.exists(key):
            # Not verify=True: the journal is rewritten while a search runs, and a local
            # store's hash sidecar and data are two renames, so a reader (or a tuner
            # killed between them) can see one new and one old. Each line is checked
            # instead: an atomic rewrite never leaves half of one.
            self._blob = store.get_bytes(key)
            for n, line in enumerate(self._blob.decode().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self._logs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TuningError(
                        f"study journal {store.url(key)} line {n} is not JSON ({e}): "
                        "restore it or delete the study's folder to start the search afresh"
                    ) from e
        self._digest = hashlib.sha256(self._blob).hexdigest() if self._blob else None

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._logs[log_number_from:]

    def _unchanged(self) -> bool:
        if not self.store.exists(self.key):
            return self._digest is None
        if self.store.sha256(self.key) == self._digest:
            return True
        # A recorded hash that disagrees may be a sidecar left by an interrupted write:
        # the content decides.
        return self.store.get_bytes(self.key) == self._blob

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not self._unchanged():
            raise TuningError(
                f"study journal {self.store.url(self.key)} was changed by another process: "
                "run one search per study at a time"
            )
        blob = self._blob + "".join(json.dumps(entry) + "\n" for entry in logs).encode()
        self._digest = self.store.put_bytes(self.key, blob)
        self._blob = blob
        self._logs.extend(logs)


def _pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    p = tune.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        )
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_epochs,
            max_resource=max(epochs, p.min_epochs),
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def study_in_store(
    store: ArtifactStore,
    name: str,
    *,
    direction: str = "maximize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """The study ``name`` in the store's journal, created if it is not there yet.
    (Loading writes nothing: create_study(load_if_exists=True) would log a second
    create-study entry on every resume.)"""
    storage = JournalStorage(StoreJournal(store, StudyPaths(name).journal))
    if any(s.study_name == name for s in storage.get_all_studies()):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return optuna.create_study(
        study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner
    )


def load_study(store: ArtifactStore, name: str) -> optuna.Study:
    """A stored study, to read (reports, notebooks)."""
    if not store.exists(StudyPaths(name).journal):
        raise TuningError(f"no study {name!r} in {store.uri}")
    return study_in_store(store, name)


def open_study(
    cfg: PipelineConfig, store: ArtifactStore, dataset: DatasetRef
) -> tuple[optuna.Study, StudyPaths]:
    """The search's study in the store: created (with the config as written as its
    first trial) or loaded to be continued."""
    name = study_name(cfg, dataset)
    study = study_in_store(
        store,
        name,
        direction=metric_direction(cfg.tune.metric),
        sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed),
        pruner=_pruner(cfg.tune, trial_epochs(cfg)),
    )
    if not study.trials:
        study.set_user_attr("dataset", str(dataset))
        study.set_user_attr("metric", cfg.tune.metric)
        if cfg.tune.include_base:
            params, outside = base_params(cfg)
            if outside:
                log.warning(
                    "the first trial differs from the config as written in %s "
                    "(outside the search space)",
                    ", ".join(outside),
                )
            study.enqueue_trial(params, user_attrs={"base": not outside})
    return study, StudyPaths(name)
