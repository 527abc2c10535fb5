"""The store's schema: its tables and columns, the vocabularies they allow, one `runs` row.

Every table and column name used in SQL anywhere in `store/` comes from `TABLES` here (values
are always bound with `?`), and a frame is checked against its table's rules before it is
written (`writes.validate_frame`). `SCHEMA_VERSION` is what `connection` checks and upgrades
when it opens a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..config.settings import RUN_METHODS

SCHEMA_VERSION = 2  # 2: imported runs file their questions under `import:<pipeline>`
MIGRATED_FROM = (1,)  # older versions read as they are and upgraded when opened for writing

SPLITS = ("val", "test", "test_ood")
CONVENTIONS = ("paper", "option")
METRICS = ("accuracy", "confidence", "ece", "mce", "brier", "nll", "trust", "auroc", "aurc")
POSTHOC_KIND = "posthoc"  # a post-hoc run's validation ECE over T (its fitted T: chosen)
SEARCH_KINDS = ("TS", "LS", POSTHOC_KIND)
IMPORTED_METHOD = "imported"  # `runs.method` of predictions imported from another model
IMPORT_PREFIX = "import:"     # `runs.dataset` / `examples.dataset` of an import: prefix + name
PRETRAINED_METHOD = "pretrained_zero_shot"  # `runs.method` of a pretrained model read zero-shot


@dataclass(frozen=True)
class Table:
    """One table: its columns (name -> SQL type) and the rules a frame must meet to be written.

    `required` columns must be present in a written frame (the rest become NULL when absent);
    `not_null` ones must also have no missing value; `unique` is the natural key, checked
    for duplicates; `replace_by` is the key whose existing rows a write replaces; `allowed`
    restricts a column to a fixed vocabulary.
    """

    name: str
    columns: Mapping[str, str]
    required: tuple[str, ...] = ()
    not_null: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    replace_by: tuple[str, ...] = ()
    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def ddl(self) -> str:
        cols = ", ".join(f'"{c}" {t}' for c, t in self.columns.items())
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" ({cols})'


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("meta", {"key": "VARCHAR PRIMARY KEY", "value": "VARCHAR"}),
    Table("runs", {
        "run_id": "VARCHAR PRIMARY KEY", "method": "VARCHAR", "model": "VARCHAR",
        "dataset": "VARCHAR", "seed": "INTEGER", "temperature": "DOUBLE", "smoothing": "DOUBLE",
        "config": "JSON", "created_at": "TIMESTAMP", "pipeline": "VARCHAR"},
        allowed={"method": RUN_METHODS}),
    Table("predictions", {
        "run_id": "VARCHAR", "split": "VARCHAR", "example_id": "VARCHAR", "gold": "VARCHAR",
        "pred": "VARCHAR", "confidence": "DOUBLE", "correct": "BOOLEAN",
        "pred_option": "VARCHAR", "confidence_option": "DOUBLE", "correct_option": "BOOLEAN",
        "option_labels": "VARCHAR[]", "option_probs": "DOUBLE[]", "topk_ids": "INTEGER[]",
        "topk_probs": "DOUBLE[]", "topk_tokens": "VARCHAR[]"},
        required=("split", "example_id", "gold", "pred", "confidence", "correct",
                  "pred_option", "confidence_option", "correct_option"),
        not_null=("split", "example_id"), unique=("split", "example_id"),
        replace_by=("run_id",), allowed={"split": SPLITS}),
    Table("metrics", {
        "run_id": "VARCHAR", "split": "VARCHAR", "convention": "VARCHAR", "metric": "VARCHAR",
        "value": "DOUBLE", "ci_low": "DOUBLE", "ci_high": "DOUBLE"},
        required=("split", "convention", "metric", "value"),
        not_null=("split", "convention", "metric"), unique=("split", "convention", "metric"),
        replace_by=("run_id",),
        allowed={"split": SPLITS, "convention": CONVENTIONS, "metric": METRICS}),
    Table("temperature_search", {
        "run_id": "VARCHAR", "kind": "VARCHAR", "value": "DOUBLE", "ece_val": "DOUBLE",
        "ece_test": "DOUBLE", "chosen": "BOOLEAN"},
        required=("run_id", "kind", "value", "ece_val", "chosen"),
        not_null=("run_id", "kind", "value"), unique=("run_id", "kind", "value"),
        replace_by=("run_id", "kind"), allowed={"kind": SEARCH_KINDS}),
    Table("topk_coverage", {
        "run_id": "VARCHAR", "k": "INTEGER", "mean": "DOUBLE", "p10": "DOUBLE", "p50": "DOUBLE",
        "p90": "DOUBLE", "bytes_per_position": "DOUBLE", "full_bytes_per_position": "DOUBLE",
        "n_positions": "BIGINT", "vocab_size": "INTEGER"},
        required=("run_id", "k", "mean"), not_null=("run_id", "k"), unique=("run_id", "k"),
        replace_by=("run_id",)),
    Table("examples", {
        "dataset": "VARCHAR", "split": "VARCHAR", "example_id": "VARCHAR", "question": "VARCHAR",
        "context": "VARCHAR", "labels": "VARCHAR[]", "choices": "VARCHAR[]", "answer": "VARCHAR"},
        required=("dataset", "split", "example_id", "question", "labels", "choices", "answer"),
        not_null=("dataset", "split", "example_id"), unique=("dataset", "split", "example_id"),
        replace_by=("dataset", "split")),
)}


@dataclass(frozen=True)
class RunRecord:
    """One row of `runs`: what was trained, from what, with which settings."""

    run_id: str
    method: str
    model: str
    dataset: str
    seed: int
    temperature: float | None = None  # c used for the student targets
    smoothing: float | None = None    # label-smoothing delta
    config: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None  # None: now (UTC)
    pipeline: str | None = None         # name of the run directory

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("RunRecord.run_id: must be a non-empty string")
        if self.method not in RUN_METHODS:
            raise ValueError(f"RunRecord.method: {self.method!r} is not one of {RUN_METHODS}")
        for name in ("temperature", "smoothing"):
            value = getattr(self, name)
            if value is not None and not value == value:  # NaN
                raise ValueError(f"RunRecord.{name}: must be a number or None, got NaN")

    def row(self) -> list[Any]:
        """Values in `TABLES['runs']` column order, ready to bind."""
        created = self.created_at or datetime.now(timezone.utc).replace(tzinfo=None)
        return [self.run_id, self.method, self.model, self.dataset, int(self.seed),
                self.temperature, self.smoothing, json.dumps(dict(self.config), sort_keys=True),
                created, self.pipeline]

