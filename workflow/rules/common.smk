# Helpers shared by every rule: config validation, the grid, paths and per-cell
# settings. Rules hold no logic of their own; they call `python -m mmbalance`.

import json
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

from mmbalance.compatibility import incompatibility

# A method that cannot run on a fusion stops the run here, naming both.
for _method in config["grid"]["methods"]:
    for _fusion in config["grid"]["fusions"]:
        _reason = incompatibility(_method, config["methods"][_method], _fusion)
        if _reason:
            raise ValueError(f"config grid: {_reason}")

GRID = config["grid"]
CELL = "{dataset}/{backbone}/{fusion}/{method}/fold{fold}"
FEATURE_FILES = ["frames.npy", "spectrograms.npy", "index.csv", "meta.json"]
# The Conformer backbone trains on frozen embeddings, extracted once per dataset.
EMBEDDING_FILES = ["audio.npy", "video.npy", "index.csv", "meta.json"]
# Every training job reads the tracking store, which must exist first (ECOSYSTEM 0.4).
TRACKING_SENTINEL = "results/mlflow/initialized.json"

wildcard_constraints:
    dataset="[a-z0-9_]+",
    backbone="[a-z0-9_]+",
    fusion="[a-z0-9_]+",
    method="[a-z0-9_]+",
    fold=r"\d+",


def grid_cells():
    """Every (dataset, backbone, fusion, method, fold) of the grid, as dicts."""
    return [
        dict(dataset=d, backbone=b, fusion=f, method=m, fold=k)
        for d in GRID["datasets"]
        for b in GRID["backbones"]
        for f in GRID["fusions"]
        for m in GRID["methods"]
        for k in GRID["folds"]
    ]


def panels():
    """(dataset, backbone, fusion) triples: one figure panel each."""
    return [dict(dataset=d, backbone=b, fusion=f) for d in GRID["datasets"] for b in GRID["backbones"] for f in GRID["fusions"]]


# Tables written by the aggregate rule, and figures by the figure rules.
TABLES = ["runs.csv", "summary.csv", "summary.md", "paired_vs_joint.csv", "published_comparison.csv",
          "published_comparison.md", "agreement.csv", "agreement_summary.csv"]
TABLE_FIGURES = ["accuracy_per_method", "ece_per_method", "accuracy_per_fusion", "agreement"]
TRAINING_FIGURES = ["balance_over_training", "unimodal_curves", "discrepancy_ratio", "logit_norms"]
# The analysis code is an input of the rules that run it, so editing a plot
# re-draws it (Snakemake does not see code otherwise); training never depends on it.
PACKAGE = Path(workflow.basedir) / "src" / "mmbalance"


def final_outputs():
    return (
        [f"results/tables/{name}" for name in TABLES]
        + ["results/summary.json"]
        + [f"results/figures/{name}.png" for name in TABLE_FIGURES]
        + [f"results/figures/{p['dataset']}/{p['backbone']}/{p['fusion']}/{name}.png" for p in panels() for name in TRAINING_FIGURES]
    )


def published_numbers():
    return config["analysis"]["published"] or str(Path(workflow.basedir) / "config" / "published.csv")


def all_predictions(wildcards):
    return expand(f"results/runs/{CELL}/predictions.npz", zip, **_columns(grid_cells()))


def _columns(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


def feature_files(wildcards):
    """The store a training cell reads: decoded media for ResNet18, frozen embeddings for the Conformer."""
    return expand(f"{features_dir(wildcards)}/{{name}}", name=EMBEDDING_FILES if wildcards.backbone == "conformer" else FEATURE_FILES)


def tracking_uri():
    """The configured URI, or a SQLite store inside results/. The path is
    relative to the working directory every job runs in, so moving the project
    does not change any job's settings (and retrain it)."""
    return config["tracking"]["uri"] or "sqlite:///results/mlflow/mlflow.db"


def cell_settings(wildcards):
    """Everything one training job needs, resolved from the config. Passed as a
    param, so editing one method's settings re-runs only that method's cells."""
    return json.dumps(
        {
            "cell": dict(dataset=wildcards.dataset, backbone=wildcards.backbone, fusion=wildcards.fusion, method=wildcards.method, fold=int(wildcards.fold)),
            "seed": config["train"]["seed"] + int(wildcards.fold),
            "backbone": {"name": wildcards.backbone} | config["backbones"][wildcards.backbone],
            "fusion": wildcards.fusion,
            "method": wildcards.method,
            "method_settings": config["methods"][wildcards.method],
            "train": {k: v for k, v in config["train"].items() if k not in ("threads", "mem_mb", "runtime")},
            "tracking": {"uri": tracking_uri(), "experiment": config["tracking"]["experiment"]},
        },
        sort_keys=True,
    )


def checkpoint_path(wildcards):
    """Resume state lives outside the declared outputs: Snakemake deletes the
    outputs of a failed job, and the checkpoint must survive that."""
    return f"results/checkpoints/{CELL.format(**wildcards)}/last.pt"


def job_gpus(wildcards):
    """Training and extraction take one GPU slot unless the config pins the CPU."""
    return 0 if config["train"]["device"] == "cpu" else 1


def generator_settings(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset]["generator"], sort_keys=True)


def preprocessing_recipe(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset]["preprocessing"], sort_keys=True)


def raw_dir(wildcards):
    return f"resources/raw/{wildcards.dataset}"


def features_dir(wildcards):
    if getattr(wildcards, "backbone", None) == "conformer":
        return f"results/features/{wildcards.dataset}/conformer"
    return f"results/features/{wildcards.dataset}"


def extraction_settings(wildcards):
    """Only what the frozen front-ends depend on: editing the Conformer's sizes
    or the number of wav2vec2 layers trained does not re-extract."""
    conformer = config["backbones"]["conformer"]
    audio = {k: v for k, v in conformer["audio"].items() if k != "layers"}
    return json.dumps({"audio": audio, "video": conformer["video"]}, sort_keys=True)


def run_dir(wildcards):
    return f"results/runs/{CELL.format(**wildcards)}"


def panel_run_files(name):
    """Input function: `name` in the run folder of every method x fold of a panel."""

    def files(wildcards):
        return expand(f"results/runs/{CELL}/{name}", method=GRID["methods"], fold=GRID["folds"], allow_missing=True)

    return files


def panel_metric_files():
    """Metrics of every method x fold of a panel, in the order of panel_run_files."""
    return expand(f"results/metrics/{CELL}.json", method=GRID["methods"], fold=GRID["folds"], allow_missing=True)


def all_metrics(wildcards):
    return expand(f"results/metrics/{CELL}.json", zip, **_columns(grid_cells()))


def panel_histories(wildcards):
    """Every method's and fold's history in one panel."""
    return expand(f"results/runs/{CELL}/history.csv", method=GRID["methods"], fold=GRID["folds"], **wildcards)


def protocol():
    """Named in every table: split, selection rule, frames, audio front-end."""
    parts = []
    for dataset in GRID["datasets"]:
        r = config["datasets"][dataset]["preprocessing"]
        parts.append(
            f"{dataset}: actor-disjoint train/val/test folds {','.join(map(str, GRID['folds']))}; "
            f"model selected on validation accuracy, test reported at that epoch; "
            f"{r['frames']} frame(s) at {r['fps']:g} fps, {r['frame_size']} px; "
            f"audio log|STFT| n_fft {r['n_fft']}, hop {r['hop_length']} at {r['sample_rate']} Hz over {r['seconds']:g} s"
        )
        if "conformer" in GRID["backbones"]:
            c = config["backbones"]["conformer"]
            parts[-1] += (
                f"; conformer: frozen wav2vec2 CNN ({c['audio']['bundle']}, {c['audio']['weights']} weights) on 16 kHz audio, "
                f"EfficientNet-B2 ({c['video']['weights']} weights) on whole {c['video']['frame_size']} px frames"
            )
    return " | ".join(parts)
