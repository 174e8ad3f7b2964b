# Helpers shared by every rule: paths, inputs and per-cell settings. The config
# is validated and resolved in Python (mmbalance.config, the settings resolver);
# this file only turns what it resolved into rule inputs and params.

import json
import shlex
from pathlib import Path

from mmbalance.config import Experiment, check_config_files, validate
from mmbalance.data import registry

# Snakemake's reader keeps the last of a key given twice: read the files again, strictly.
check_config_files(workflow.configfiles)
# Fills every default into `config` in place and stops on a wrong key or value, naming it.
validate(config)
EXPERIMENT = Experiment(config, validated=True)
# This config's runs, metrics, tables and figures (`results`; each paper config has its own
# folder, so each DVC stage owns its outputs). Catalogs, feature stores and the MLflow store
# are shared under results/ by every config.
OUT = config["results"]
LOGS = "logs" if OUT == "results" else f"logs/{OUT.removeprefix('results/')}"
BENCHMARKS = "benchmarks" if OUT == "results" else f"benchmarks/{OUT.removeprefix('results/')}"

# Raw folders that are downloaded (the generated default is written instead).
DOWNLOADABLE = sorted({registry.entry(d).raw for d in registry.DATASETS if not registry.is_generated(d)})
CATALOG_FILES = ["catalog.csv", "data_splits.json", "catalog.json"]
# One path grammar for a cell, written once (mmbalance.config.Cell.path has the same shape).
CELL = "{dataset}/{backbone}/{fusion}/{method}/{variant}/fold{fold}"
PANEL = "{dataset}/{backbone}/{fusion}"
FEATURE_FILES = ["frames.npy", "spectrograms.npy", "index.csv", "kept_skipped.csv", "meta.json"]
# The Conformer backbone trains on frozen embeddings, extracted once per dataset.
EMBEDDING_FILES = ["audio.npy", "video.npy", "index.csv", "meta.json"]
# Every training job reads the tracking store, which must exist first (concurrent first writes fail).
TRACKING_SENTINEL = "results/mlflow/initialized.json"

wildcard_constraints:
    dataset="[a-z0-9_]+",
    backbone="[a-z0-9_]+",
    fusion="[a-z0-9_]+",
    method="[a-z0-9_]+",
    variant="[a-z0-9][a-z0-9_-]*",
    fold=r"\d+",
    job=r"\d+",


# Tables written by the aggregate rule, and figures by the figure rules.
TABLES = ["runs.csv", "summary.csv", "summary.md", "paired_vs_joint.csv", "published_comparison.csv",
          "published_comparison.md", "agreement.csv", "agreement_summary.csv"]
TABLE_FIGURES = ["accuracy_per_method", "ece_per_method", "accuracy_per_fusion", "agreement"]
TRAINING_FIGURES = ["balance_over_training", "unimodal_curves", "discrepancy_ratio", "logit_norms"]
PAPER_TABLES = config["analysis"]["paper_tables"]
# The analysis code is an input of the rules that run it, so editing a plot
# re-draws it (Snakemake does not see code otherwise); training never depends on it.
PACKAGE = Path(workflow.basedir) / "src" / "mmbalance"


def panels():
    """(dataset, backbone, fusion) of the grid, as dicts: one evaluation job and one figure panel each."""
    return [dict(dataset=d, backbone=b, fusion=f) for d, b, f in EXPERIMENT.panels()]


def study_path(dataset, backbone, fusion, method):
    return f"{OUT}/tuning/{dataset}/{backbone}/{fusion}/{method}"


def study_spec(wildcards):
    """The study of a (dataset, backbone, fusion, method): its name, budget, sampler and ranges."""
    tuning = config["tuning"]
    name = f"{wildcards.dataset}/{wildcards.backbone}/{wildcards.fusion}/{wildcards.method}"
    return json.dumps({"name": name, "trials": tuning["trials"], "sampler": tuning["sampler"], "seed": tuning["seed"],
                       "pruner": tuning["pruner"], "space": EXPERIMENT.search_space(wildcards.method)}, sort_keys=True)


def study_trials(wildcards):
    return [f"{study_path(wildcards.dataset, wildcards.backbone, wildcards.fusion, wildcards.method)}/trial{k}.json"
            for k in range(config["tuning"]["trials"])]


def all_best():
    return [f"{study_path(*study)}/best.json" for study in EXPERIMENT.studies()]


def tuned_best(wildcards):
    """A `tuned` cell's study result (an input: the cell trains again when it changes); nothing otherwise."""
    if wildcards.variant != "tuned":
        return []
    return [f"{study_path(wildcards.dataset, wildcards.backbone, wildcards.fusion, wildcards.method)}/best.json"]


def final_outputs():
    return (
        [f"{OUT}/tables/{name}" for name in TABLES]
        + [f"{OUT}/tables/papers/{key}.{ext}" for key in PAPER_TABLES for ext in ("md", "csv")]
        + [f"{OUT}/summary.json"]
        + all_best()
        + [f"{OUT}/figures/{name}.png" for name in TABLE_FIGURES]
        + [f"{OUT}/figures/{PANEL.format(**p)}/{name}.png" for p in panels() for name in TRAINING_FIGURES]
    )


def shipped_or(key, name):
    """analysis.<key>, or the file shipped in config/."""
    return config["analysis"][key] or str(Path(workflow.basedir) / "config" / name)


def run_files(cells, name):
    return [f"{OUT}/runs/{cell.path}/{name}" for cell in cells]


def panel_run_files(name):
    """Input function: `name` in the run folder of every cell of a panel."""

    def files(wildcards):
        return run_files(EXPERIMENT.panel_cells(wildcards.dataset, wildcards.backbone, wildcards.fusion), name)

    return files


def all_predictions(wildcards):
    return run_files(EXPERIMENT.cells, "predictions.npz")


def all_metrics(wildcards):
    return [f"{OUT}/metrics/{PANEL.format(**p)}.json" for p in panels()]


def feature_files(wildcards):
    """The store a training cell reads: decoded media for ResNet18, frozen embeddings for the Conformer."""
    return expand(f"{features_dir(wildcards)}/{{name}}", name=EMBEDDING_FILES if wildcards.backbone == "conformer" else FEATURE_FILES)


def tracking_uri():
    return EXPERIMENT.tracking["uri"]


def cell_of(wildcards):
    return EXPERIMENT.cell(wildcards.dataset, wildcards.backbone, wildcards.fusion, wildcards.method, wildcards.variant, wildcards.fold)


def cell_settings(wildcards):
    """Everything one training job needs, resolved by mmbalance.config. Passed as a
    param, so editing one method's (or variant's) settings re-runs only its cells."""
    return EXPERIMENT.settings(cell_of(wildcards)).to_json()


def teacher_files(wildcards):
    """The model.pt of each teacher cell of a method that learns from trained unimodal
    models (UMT); nothing for other methods."""
    return list(EXPERIMENT.teacher_models(cell_of(wildcards)).values())


def trial_teacher_files(wildcards):
    settings = EXPERIMENT.trial_settings(wildcards.dataset, wildcards.backbone, wildcards.fusion, wildcards.method)
    return list(settings.method_settings.get("teacher_models", {}).values())


def checkpoint_path(wildcards):
    """Resume state lives outside the declared outputs: Snakemake deletes the
    outputs of a failed job, and the checkpoint must survive that."""
    return f"{OUT}/checkpoints/{CELL.format(**wildcards)}/last.pt"


def job_gpus(wildcards):
    """Training and extraction take one GPU slot unless the config pins the CPU."""
    return 0 if config["train"]["device"] == "cpu" else 1


def generator_settings(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset]["generator"], sort_keys=True)


def preprocessing_recipe(wildcards):
    return json.dumps(EXPERIMENT.store_recipe(wildcards.dataset), sort_keys=True)


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
    return json.dumps({"folds": EXPERIMENT.max_fold} | settings.get("catalog", {}), sort_keys=True)


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
    return f"{OUT}/runs/{CELL.format(**wildcards)}"


def variant_descriptions():
    """`name=description` of every variant of the grid, for the tables."""
    return [f"{v}={EXPERIMENT.variant_description(v)}" for v in EXPERIMENT.variants]


AUDIO_FEATURES = {"stft": "log|STFT|", "psd": "log scipy spectrogram", "fbank": "kaldi log-mel fbank"}


def protocol():
    """Named in every table: split, selection rule, frames, audio front-end."""
    parts = []
    folds = sorted({c.fold for c in EXPERIMENT.cells})
    for dataset in EXPERIMENT.datasets:
        r = EXPERIMENT.recipes[dataset]
        window = f"{r['mel_bins']} mel bins" if r["audio_features"] == "fbank" else f"n_fft {r['n_fft']}, hop {r['hop_length']}"
        parts.append(
            f"{dataset}: {registry.entry(dataset).description}, folds {','.join(map(str, folds))}; "
            f"model selected on validation accuracy, test reported at that epoch; recipe {r['preset']}: "
            f"{r['frames']} frame(s) at {r['fps']:g} fps{' from the event start' if r['segment'] else ''}, {r['frame_size']} px; "
            f"audio {AUDIO_FEATURES[r['audio_features']]} {window} at {r['sample_rate']} Hz over {r['seconds']:g} s"
        )
        if "conformer" in EXPERIMENT.backbones:
            c = config["backbones"]["conformer"]
            parts[-1] += (
                f"; conformer: frozen wav2vec2 CNN ({c['audio']['bundle']}, {c['audio']['weights']} weights) on 16 kHz audio, "
                f"EfficientNet-B2 ({c['video']['weights']} weights) on whole {c['video']['frame_size']} px frames"
            )
    if EXPERIMENT.studies():
        parts.append(EXPERIMENT.tuning_protocol())
    return " | ".join(parts)
