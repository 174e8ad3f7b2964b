"""The papers' tables as the papers print them, with our numbers beside the published ones.

Two files describe them:

* the specs (config/paper_tables.yaml): for each table or figure, its rows and
  columns in the paper's order and what each cell is in our grid. A cell's key
  is ``defaults | column | row | cell override``, and must give the dataset,
  backbone, fusion, method, variant and metric. A row (or one cell) the project
  cannot run is marked ``missing`` with the reason, never left out;
* the published numbers (config/published.csv): one row per printed number,
  ``paper, table, row, column, protocol, metric, value, note``, values in percent.

The protocol rule: a published number is compared with our runs only when its
protocol is the published protocol of the spec cell's dataset
(`mmbalance.data.registry`); e.g. the numbers on OGM-GE's CREMA-D split never
meet runs on MLB's actor-independent folds. `resolve_published` refuses a spec
that maps a number onto a dataset of another protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from mmbalance.balancers import METHODS
from mmbalance.data import registry

KEY_FIELDS = ("dataset", "backbone", "fusion", "method", "variant", "metric")
PUBLISHED_COLUMNS = ["paper", "table", "row", "column", "protocol", "metric", "value", "note"]
METRICS = ("acc", "mAP", "macro_f1", "ece")


@dataclass(frozen=True)
class SpecCell:
    row: str
    column: str
    key: dict | None  # the six KEY_FIELDS; None when missing
    missing: str = ""  # why the project cannot run it


@dataclass
class TableSpec:
    key: str
    paper: str
    table: str
    caption: str
    config: str
    rows: list[dict]
    columns: list[dict]
    defaults: dict = field(default_factory=dict)
    cells: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def spec_cells(self) -> list[SpecCell]:
        """Every row x column, in the paper's order."""
        overrides = {(c["row"], c["column"]): {k: v for k, v in c.items() if k not in ("row", "column")} for c in self.cells}
        result = []
        for row in self.rows:
            for column in self.columns:
                override = overrides.get((row["label"], column["label"]), {})
                missing = override.get("missing") or row.get("missing") or column.get("missing") or ""
                if missing:
                    result.append(SpecCell(row["label"], column["label"], None, missing))
                    continue
                key = {**self.defaults, **_fields(column), **_fields(row), **_fields(override)}
                if key.get("method") not in METHODS:
                    result.append(SpecCell(row["label"], column["label"], None, f"method {key.get('method')!r} is not implemented"))
                    continue
                result.append(SpecCell(row["label"], column["label"], key))
        return result


def _fields(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k in KEY_FIELDS}


def load_specs(path: str | Path) -> dict[str, TableSpec]:
    """Read the specs, checking labels, keys and that every cell is complete; errors name the table."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    specs = {}
    for key, entry in raw.items():
        where = f"{path}: {key}"
        unknown = set(entry) - {"paper", "table", "caption", "config", "rows", "columns", "defaults", "cells", "notes"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        spec = TableSpec(key=key, **entry)
        for kind, items in (("row", spec.rows), ("column", spec.columns)):
            labels = [item["label"] for item in items]
            if len(set(labels)) != len(labels):
                raise ValueError(f"{where}: repeated {kind} labels {sorted({l for l in labels if labels.count(l) > 1})}")
        row_labels, column_labels = {r["label"] for r in spec.rows}, {c["label"] for c in spec.columns}
        for override in spec.cells:
            if override["row"] not in row_labels or override["column"] not in column_labels:
                raise ValueError(f"{where}: cell override {override} names no row x column of the table")
        for cell in spec.spec_cells():
            if cell.key is None:
                continue
            lacking = [f for f in KEY_FIELDS if f not in cell.key]
            if lacking:
                raise ValueError(f"{where}: cell ({cell.row!r}, {cell.column!r}) does not say its {lacking}")
            if cell.key["dataset"] not in registry.DATASETS:
                raise ValueError(f"{where}: cell ({cell.row!r}, {cell.column!r}): unknown dataset {cell.key['dataset']!r}")
            if cell.key["metric"] not in METRICS:
                raise ValueError(f"{where}: cell ({cell.row!r}, {cell.column!r}): metric {cell.key['metric']!r} is not one of {METRICS}")
        specs[key] = spec
    return specs


def load_published(path: str | Path) -> pd.DataFrame:
    """Read config/published.csv, checking its columns, that values are numbers and rows unique."""
    published = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PUBLISHED_COLUMNS if c not in published.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; expected {PUBLISHED_COLUMNS}")
    values = pd.to_numeric(published["value"], errors="coerce")
    if values.isna().any():
        bad = published.index[values.isna()][0]
        raise ValueError(f"{path} line {bad + 2}: value {published.loc[bad, 'value']!r} is not a number")
    published["value"] = values
    repeated = published.duplicated(["paper", "table", "row", "column"], keep=False)
    if repeated.any():
        raise ValueError(f"{path}: numbers given twice for {published.loc[repeated, ['paper', 'table', 'row', 'column']].drop_duplicates().values.tolist()}")
    return published[PUBLISHED_COLUMNS]


def resolve_published(published: pd.DataFrame, specs: dict[str, TableSpec]) -> pd.DataFrame:
    """Each published number with the spec table it belongs to and our cell key (when we run
    that cell). A number whose (paper, table, row, column) no spec has, or whose protocol is not
    the one of the spec cell's dataset, is an error naming it."""
    cells = {}
    for spec in specs.values():
        for cell in spec.spec_cells():
            cells[(spec.paper, spec.table, cell.row, cell.column)] = (spec.key, cell)
    rows = []
    for _, number in published.iterrows():
        found = cells.get((number["paper"], number["table"], number["row"], number["column"]))
        if found is None:
            raise ValueError(
                f"published number {number['paper']} {number['table']} ({number['row']!r}, {number['column']!r}) "
                "is in no paper table spec: add it to the specs or fix its labels"
            )
        table_key, cell = found
        key = cell.key or {f: "" for f in KEY_FIELDS}
        if cell.key is not None:
            expected = registry.entry(key["dataset"]).published_protocol
            if number["protocol"] != expected:
                raise ValueError(
                    f"published number {number['table']} ({number['row']!r}, {number['column']!r}) has protocol "
                    f"{number['protocol']!r}, but the spec maps it to dataset {key['dataset']!r}, whose protocol is {expected!r}"
                )
            if number["metric"] != key["metric"]:
                raise ValueError(f"published number {number['table']} ({number['row']!r}, {number['column']!r}) is {number['metric']} but the spec cell is {key['metric']}")
        rows.append({"table_key": table_key, **number.to_dict(), **{f"our_{f}": key[f] for f in KEY_FIELDS}, "missing": cell.missing})
    return pd.DataFrame(rows, columns=["table_key", *PUBLISHED_COLUMNS, *(f"our_{f}" for f in KEY_FIELDS), "missing"])


def _ours(summary: pd.DataFrame, key: dict) -> tuple[float, float, int]:
    """Mean and std (percent) over folds and the number of folds of our cell, NaN/0 when not run."""
    if summary.empty or f"{key['metric']}_mean" not in summary.columns:
        return math.nan, math.nan, 0
    match = summary
    for f in KEY_FIELDS[:-1]:
        match = match[match[f] == key[f]]
    if match.empty:
        return math.nan, math.nan, 0
    row = match.iloc[0]
    return 100 * row[f"{key['metric']}_mean"], 100 * row[f"{key['metric']}_std"], int(row["n_folds"])


def paper_table(spec: TableSpec, published: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of the paper's table: the published value, ours (mean, std, folds) and
    ours minus published, with the cell's key in our grid (or why it is missing)."""
    numbers = published[published["table_key"] == spec.key].set_index(["row", "column"])["value"] if not published.empty else pd.Series(dtype=float)
    rows = []
    for cell in spec.spec_cells():
        value = float(numbers.get((cell.row, cell.column), math.nan))
        mean, std, n = _ours(summary, cell.key) if cell.key else (math.nan, math.nan, 0)
        rows.append({
            "table": spec.key, "row": cell.row, "column": cell.column, "published": value,
            "ours_mean": mean, "ours_std": std, "n_folds": n, "difference": mean - value,
            **{f: (cell.key or {}).get(f, "") for f in KEY_FIELDS}, "missing": cell.missing,
        })
    return pd.DataFrame(rows)


def _number(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def paper_markdown(spec: TableSpec, table: pd.DataFrame) -> str:
    """The table laid out as in the paper; each cell reads `published | ours ± std (folds) | ours - published`."""
    lines = [
        f"# {spec.paper}, {spec.table}",
        "",
        spec.caption,
        "",
        f"Regenerated by `{spec.config}`. Each cell: **published** / ours, mean ± sample std over folds (n) / "
        "ours minus published, in percent. `–`: not run (or not printed); *missing*: the project cannot run it.",
        "",
        "| | " + " | ".join(c["label"] for c in spec.columns) + " |",
        "|---" * (len(spec.columns) + 1) + "|",
    ]
    cells = table.set_index(["row", "column"])
    for row in spec.rows:
        texts = []
        for column in spec.columns:
            cell = cells.loc[(row["label"], column["label"])]
            published = f"**{_number(cell['published'])}**"
            if cell["missing"]:
                texts.append(f"{published} / *missing*")
            elif cell["n_folds"] == 0:
                texts.append(f"{published} / –")
            else:
                std = "" if math.isnan(cell["ours_std"]) else f" ± {cell['ours_std']:.1f}"
                diff = "" if math.isnan(cell["difference"]) else f" / {cell['difference']:+.1f}"
                texts.append(f"{published} / {cell['ours_mean']:.1f}{std} ({cell['n_folds']}){diff}")
        lines.append(f"| {row['label']} | " + " | ".join(texts) + " |")
    missing = table[table["missing"] != ""].drop_duplicates("missing")
    if not missing.empty or spec.notes:
        lines += ["", "Notes:", ""]
        lines += [f"- *missing* ({', '.join(sorted(set(table.loc[table['missing'] == m, 'row'])))}): {m}" for m in missing["missing"]]
        lines += [f"- {note}" for note in spec.notes]
    return "\n".join(lines) + "\n"
