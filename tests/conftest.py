"""Shared fixtures: a tiny generated dataset in the real CREMA-D format, its
feature store, an MLflow store, and training settings that run in seconds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mmbalance.config import Cell, Experiment, validate
from mmbalance.data import recipes, synthetic
from mmbalance.data.datasets import cremad
from mmbalance.data.store import features
from mmbalance.tracking import init_store

ROOT = Path(__file__).resolve().parents[1]

# The Conformer backbone's layout at toy sizes, random weights (tests never download).
TINY_CONFORMER = {
    "audio": {
        "bundle": "WAV2VEC2_LARGE_LV60K",
        "layers": 1,
        "weights": "random",
        "architecture": {
            "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
            "encoder_embed_dim": 32,
            "encoder_num_heads": 2,
            "encoder_ff_interm_features": 64,
            "encoder_pos_conv_kernel": 16,
            "encoder_pos_conv_groups": 4,
        },
    },
    "video": {"weights": "random", "frame_size": 32},
    "conformer": {"projection_dim": 8, "dim": 16, "heads": 2, "ffn_dim": 32, "layers": 1, "kernel_size": 3, "dropout": 0.1},
}

# As a config gives it, and resolved (with the recipe defaults) as the store records it.
TINY_PREPROCESSING = {"frames": 2, "fps": 1.0, "frame_size": 32, "sample_rate": 8000, "seconds": 1.0, "n_fft": 128, "hop_length": 125}
TINY_RECIPE = recipes.resolve(TINY_PREPROCESSING)


def default_config(overrides: dict | None = None) -> dict:
    """The schema's defaults merged under `overrides`, validated."""
    return validate(copy.deepcopy(overrides or {}))


@pytest.fixture(scope="session")
def tiny_generator_settings() -> dict:
    settings = default_config()["datasets"]["synthetic_cremad"]["generator"]
    return settings | {"actors": 6, "sentences": 1, "video_width": 64, "video_height": 48}


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_generator_settings) -> Path:
    raw = tmp_path_factory.mktemp("raw") / "synthetic_cremad"
    synthetic.generate(raw, tiny_generator_settings)
    return raw


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory, tiny_raw) -> Path:
    catalog_dir = tmp_path_factory.mktemp("catalog") / "synthetic_cremad"
    cremad.build_catalog(tiny_raw, "generated", {}).write(catalog_dir)
    return catalog_dir


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_catalog) -> Path:
    store = tmp_path_factory.mktemp("features") / "synthetic_cremad"
    features.preprocess(tiny_catalog, store, TINY_RECIPE)
    return store


@pytest.fixture(scope="session")
def tiny_embeddings(tmp_path_factory, tiny_catalog) -> Path:
    from mmbalance.data.store import embeddings

    store = tmp_path_factory.mktemp("features") / "synthetic_cremad" / "conformer"
    embeddings.extract(tiny_catalog, store, TINY_RECIPE, TINY_CONFORMER)
    return store


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> dict:
    """One MLflow store per test module: a module's queries (runs of a method, an
    unfinished run to resume) never see the runs another module trained."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    init_store(uri, "tests", root / "artifacts", root / "initialized.json")
    return {"uri": uri, "experiment": "tests"}


@pytest.fixture
def train_settings(tracking):
    """Settings of one tiny training run, resolved by mmbalance.config as the workflow does;
    call with the method and training-recipe overrides."""

    def make(method: str, fold: int = 1, epochs: int = 2, backbone: str = "resnet18", fusion: str = "late_linear", **train_overrides) -> dict:
        config = {
            "grid": {"backbones": [backbone], "fusions": [fusion], "methods": [method], "folds": [fold]},
            "backbones": {"resnet18": {"width": 4}, "conformer": TINY_CONFORMER},
            "train": {"epochs": epochs, "batch_size": 8, "device": "cpu"} | train_overrides,
        }
        cell = Cell("synthetic_cremad", backbone, fusion, method, "default", fold)
        return Experiment(config).settings(cell).as_dict() | {"tracking": tracking}

    return make


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())
