# Helpers shared by every rule: config validation, the grid, paths and per-cell
# settings. Rules hold no logic of their own; they call `python -m mmbalance`.

import json
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

import jsonschema
import yaml


SCHEMA = yaml.safe_load(open(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"))


def _method_settings(dataset, method):
    """methods.<method>, with the dataset's overrides merged over it and checked
    against the method's schema (the overrides are free-form in the schema,
    since schema defaults would otherwise overwrite the global settings)."""
    merged = config["methods"][method] | config["datasets"][dataset].get("methods", {}).get(method, {})
    schema = SCHEMA
    subschema = schema["properties"]["methods"]["properties"][method] | {"$defs": schema["$defs"]}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(subschema).iter_errors(merged))
    if error is not None:
        raise ValueError(f"config datasets.{dataset}.methods.{method}: {error.message}")
    return merged


METHOD_SETTINGS = {(d, m): _method_settings(d, m) for d in config["grid"]["datasets"] for m in config["grid"]["methods"]}

from mmbalance.compatibility import incompatibility
from mmbalance.data import recipes, registry

# A method that cannot run on a fusion stops the run here, naming both.
for (_dataset, _method), _settings in METHOD_SETTINGS.items():
    for _fusion in config["grid"]["fusions"]:
        _reason = incompatibility(_method, _settings, _fusion)
        if _reason:
            raise ValueError(f"config grid: {_reason}")

GRID = config["grid"]
# Every dataset's recipe is resolved (preset + overrides) once, here, so a bad
# preset or a missing key stops the run before any job starts.
RECIPES = {d: recipes.resolve(config["datasets"][d]["preprocessing"], f"datasets.{d}.preprocessing") for d in GRID["datasets"]}
# Raw folders that are downloaded (the generated default is written instead).
DOWNLOADABLE = sorted({registry.entry(d).raw for d in registry.DATASETS if not registry.is_generated(d)})
CATALOG_FILES = ["catalog.csv", "data_splits.json", "catalog.json"]
CELL = "{dataset}/{backbone}/{fusion}/{method}/fold{fold}"
FEATURE_FILES = ["frames.npy", "spectrograms.npy", "index.csv", "kept_skipped.csv", "meta.json"]
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
            "method_settings": METHOD_SETTINGS[(wildcards.dataset, wildcards.method)],
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
    return json.dumps(RECIPES[wildcards.dataset], sort_keys=True)


def raw_dir(wildcards):
    return f"resources/raw/{registry.entry(wildcards.dataset).raw}"


def raw_marker(wildcards):
    """What says the raw tree is complete: the generator's manifest, or the verified-download record."""
    marker = "manifest.csv" if registry.is_generated(wildcards.dataset) else "download.json"
    return f"{raw_dir(wildcards)}/{marker}"


def download_source(wildcards):
    """URL overrides of a raw folder (CREMA-D's two protocols share the `cremad` download)."""
    return json.dumps(config["datasets"].get(wildcards.raw, {}).get("source", {}), sort_keys=True)


def catalog_options(wildcards):
    settings = config["datasets"][wildcards.dataset]
    return json.dumps({"folds": max(GRID["folds"])} | settings.get("catalog", {}), sort_keys=True)


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


AUDIO_FEATURES = {"stft": "log|STFT|", "psd": "log scipy spectrogram", "fbank": "kaldi log-mel fbank"}


def protocol():
    """Named in every table: split, selection rule, frames, audio front-end."""
    parts = []
    for dataset in GRID["datasets"]:
        r = RECIPES[dataset]
        window = f"{r['mel_bins']} mel bins" if r["audio_features"] == "fbank" else f"n_fft {r['n_fft']}, hop {r['hop_length']}"
        parts.append(
            f"{dataset}: {registry.entry(dataset).description}, folds {','.join(map(str, GRID['folds']))}; "
            f"model selected on validation accuracy, test reported at that epoch; recipe {r['preset']}: "
            f"{r['frames']} frame(s) at {r['fps']:g} fps{' from the event start' if r['segment'] else ''}, {r['frame_size']} px; "
            f"audio {AUDIO_FEATURES[r['audio_features']]} {window} at {r['sample_rate']} Hz over {r['seconds']:g} s"
        )
        if "conformer" in GRID["backbones"]:
            c = config["backbones"]["conformer"]
            parts[-1] += (
                f"; conformer: frozen wav2vec2 CNN ({c['audio']['bundle']}, {c['audio']['weights']} weights) on 16 kHz audio, "
                f"EfficientNet-B2 ({c['video']['weights']} weights) on whole {c['video']['frame_size']} px frames"
            )
    return " | ".join(parts)
