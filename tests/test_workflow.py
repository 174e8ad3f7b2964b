"""The Snakemake workflow: config validation, lint, dry runs, and a tiny grid
end to end (generate -> preprocess -> train -> evaluate -> aggregate -> figures,
tracked in MLflow)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mmbalance.config import Experiment
from mmbalance.data import registry

from conftest import ROOT, TINY_CONFORMER, TINY_PREPROCESSING

TINY_CONFIG = {
    # MLB also under a second variant (on late_linear only): both runs must coexist.
    "grid": {"methods": ["audio_only", "joint", "mlb"], "folds": [2], "fusions": ["late_linear", "film"],
             "blocks": [{"methods": ["mlb"], "fusions": ["late_linear"], "variants": ["steep"]}]},
    "variants": {"steep": {"description": "MLB with a steeper coefficient", "methods": {"mlb": {"alpha": 2.0}}}},
    "datasets": {"synthetic_cremad": {"generator": {"actors": 6, "sentences": 1, "video_width": 64, "video_height": 48}, "preprocessing": TINY_PREPROCESSING,
                                      # 6 clips per split: the generated stub loses a class of one test split
                                      "max_skipped_fraction": 1.0}},
    "backbones": {"resnet18": {"width": 4}},
    "train": {"epochs": 2, "batch_size": 8, "device": "cpu"},
}


def snakemake(*args, cwd=ROOT):
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A working directory like a user's: the default config, no results yet."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    return tmp_path


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name not in ("config.yaml", "paper_tables.yaml")))
def test_every_shipped_grid_validates_and_dry_runs(workdir, config):
    result = snakemake("-n", "--quiet", "rules", "--directory", str(workdir), "--configfile", str(ROOT / "config" / config))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line.split() for line in (result.stdout + result.stderr).splitlines()]
    counts = {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}
    experiment = Experiment.from_files(ROOT / "config" / "config.yaml", ROOT / "config" / config)
    datasets, backbones = experiment.datasets, experiment.backbones
    # One training job per resolved cell (tests/test_papers.py checks that a paper config's
    # cells are exactly its table's implementable ones), one evaluation per panel.
    assert counts["train"] == len(experiment.cells)
    assert counts["evaluate"] == len(experiment.panels())
    # Real datasets: one download per raw folder, a catalog and a store per dataset.
    real = [d for d in datasets if not registry.is_generated(d)]
    assert counts.get("download", 0) == len({registry.entry(d).raw for d in real})
    assert counts.get("catalog", 0) == len(datasets)
    if "resnet18" in backbones:
        assert counts["preprocess"] == len(datasets)
    if "conformer" in backbones:
        assert counts["extract_embeddings"] == len(datasets)


def test_default_grid_dry_run_lists_every_job(workdir):
    result = snakemake("-n", "--quiet", "rules", "--directory", str(workdir))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in (result.stdout + result.stderr).splitlines()]
    counts = {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}
    grid = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["grid"]
    assert counts["train"] == len(grid["methods"]) * len(grid["folds"]) == 36
    assert counts["generate_dataset"] == counts["init_tracking"] == counts["evaluate"] == 1


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": {"epoch": 3}}, "'epoch' was unexpected"),
        ({"methods": {"mlb": {"alpha": 0.5, "beta": 2}}}, "'beta' was unexpected"),
        ({"train": {"optimizer": {"name": "adamw"}}}, "'adamw' is not one of ['adam', 'sgd']"),
        ({"grid": {"methods": ["joint", "ogmge"]}}, "'ogmge' is not one of"),
        ({"train": {"epochs": 0}}, "0 is less than the minimum of 1"),
        ({"grid": {"fusions": ["late_linear", "film"]}}, "method 'ogm' needs decomposition, which fusion 'film' does not offer"),
        ({"variants": {"adam": {"train": {"optimizer": {"name": "adamw"}}}}}, "config variants.adam.train.optimizer.name: 'adamw' is not one of"),
    ],
)
def test_wrong_config_stops_the_run_naming_the_key_or_value(tmp_path, config, message):
    result = snakemake("-n", "--configfile", str(write_config(tmp_path / "bad.yaml", config)))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_tiny_grid_end_to_end(workdir):
    tmp_path = workdir
    config = write_config(tmp_path / "tiny.yaml", TINY_CONFIG)
    result = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", str(config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    tables = tmp_path / "results" / "tables"
    summary = (tables / "summary.md").read_text()
    assert summary.startswith("Protocol: synthetic_cremad: the embedded default") and "actor-disjoint" in summary.splitlines()[0]
    assert "recipe custom: 2 frame(s) at 1 fps" in summary and "| mlb | default |" in summary and "| mlb | steep |" in summary
    assert "- `steep`: MLB with a steeper coefficient" in summary
    runs_dir = tmp_path / "results" / "runs" / "synthetic_cremad" / "resnet18" / "late_linear" / "mlb"
    assert sorted(p.name for p in runs_dir.iterdir()) == ["default", "steep"]
    assert (runs_dir / "steep" / "fold2" / "predictions.npz").exists()
    runs_table = (tables / "runs.csv").read_text()
    assert ",mlb,steep,2," in runs_table and ",mlb,default,2," in runs_table
    figures = ["accuracy_per_method", "ece_per_method", "accuracy_per_fusion", "agreement"] + [
        f"synthetic_cremad/resnet18/{fusion}/{name}" for fusion in ("late_linear", "film")
        for name in ("balance_over_training", "unimodal_curves", "discrepancy_ratio", "logit_norms")
    ]
    for figure in figures:
        assert (tmp_path / "results" / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Agreement of Joint and MLB with the audio-only baseline: the grid has no
    # video-only run, so the table is empty but written.
    assert (tables / "agreement.csv").exists()
    assert "not mapped" in (tables / "published_comparison.md").read_text()
    assert "synthetic_cremad/resnet18/late_linear/joint/default/acc_mean" in (tmp_path / "results" / "summary.json").read_text()
    # The variant is a bar of its own in the figures' source table and in the paired comparison.
    assert ",mlb,steep," in (tables / "paired_vs_joint.csv").read_text()
    # Preprocessing logged the skipped pointer stub with its reason.
    assert "git-lfs pointer stub" in (tmp_path / "logs" / "preprocess" / "synthetic_cremad.log").read_text()

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mmbalance").experiment_id])
    assert sorted((r.data.tags["fusion"], r.data.tags["method"], r.data.tags["variant"]) for r in runs) == sorted(
        [(f, m, "default") for f in ("film", "late_linear") for m in ("audio_only", "joint", "mlb")] + [("late_linear", "mlb", "steep")]
    )
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["fold"] == "2" and r.data.tags["data_hash"] for r in runs)

    again = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(config))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_tiny_conformer_cell_extracts_once_then_trains(workdir):
    """The Conformer backbone: extract_embeddings runs the frozen front-ends once
    (random weights at toy sizes), then the cell trains on the embeddings."""
    config = TINY_CONFIG | {
        "grid": {"backbones": ["conformer"], "fusions": ["late_linear"], "methods": ["joint"], "folds": [2]},
        "backbones": {"conformer": TINY_CONFORMER},
        "train": TINY_CONFIG["train"] | {"epochs": 1},
    }
    path = write_config(workdir / "tiny_conformer.yaml", config)
    result = snakemake("--cores", "2", "--directory", str(workdir), "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    store = workdir / "results" / "features" / "synthetic_cremad" / "conformer"
    assert (store / "audio.npy").exists() and (store / "video.npy").exists()
    assert not (workdir / "results" / "features" / "synthetic_cremad" / "frames.npy").exists()  # no ResNet store needed
    assert "synthetic_cremad/conformer/late_linear/joint/default/acc_mean" in (workdir / "results" / "summary.json").read_text()


TOY_METHOD = """\"\"\"A toy method for the one-file promise: Joint training with its loss scaled by `scale`.\"\"\"

import torch.nn.functional as F

from mmbalance.balancers.base import Balancer


class ScaledJoint(Balancer):
    DESCRIPTION = "Cross-entropy on the fused logits times `scale` (a test of the registry)."
    SETTINGS = {"scale": {"description": "Loss factor (a toy).", "type": "number", "exclusiveMinimum": 0, "default": 1.0}}

    def loss(self, out, labels, epoch):
        return self.settings["scale"] * F.cross_entropy(out.fused, labels), {"scale": self.settings["scale"]}
"""


def test_a_new_method_is_one_module_plus_one_registry_line(tmp_path):
    """Copy the project, add a method module and one line to the registry, nothing else:
    the config validates (its settings included), dry-runs and trains on the embedded default."""
    project = tmp_path / "project"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    (project / "src" / "mmbalance" / "balancers" / "scaled_joint.py").write_text(TOY_METHOD)
    registry_file = project / "src" / "mmbalance" / "balancers" / "__init__.py"
    text = registry_file.read_text()
    registry_file.write_text(text.replace('    "agm": "agm:AGM",\n', '    "agm": "agm:AGM",\n    "scaled_joint": "scaled_joint:ScaledJoint",\n'))
    config = write_config(project / "toy.yaml", TINY_CONFIG | {
        "grid": {"methods": ["scaled_joint"], "folds": [2]}, "methods": {"scaled_joint": {"scale": 0.5}}, "train": TINY_CONFIG["train"] | {"epochs": 1}})
    env = os.environ | {"PYTHONPATH": str(project / "src"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run(*args):
        return subprocess.run(["snakemake", *args, "--configfile", str(config)], cwd=project, env=env, capture_output=True, text=True)

    wrong = write_config(project / "wrong.yaml", {"grid": {"methods": ["scaled_joint"]}, "methods": {"scaled_joint": {"scale": 0}}})
    refused = subprocess.run(["snakemake", "-n", "--configfile", str(wrong)], cwd=project, env=env, capture_output=True, text=True)
    assert "config methods.scaled_joint.scale: 0 is less than or equal to the minimum of 0" in refused.stdout + refused.stderr
    dry = run("-n")
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    result = run("--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = pd.read_csv(project / "results" / "runs" / "synthetic_cremad" / "resnet18" / "late_linear" / "scaled_joint" / "default" / "fold2" / "history.csv")
    assert history["balance/scale"].tolist() == [0.5]
    assert "| scaled_joint | default |" in (project / "results" / "tables" / "summary.md").read_text()
