"""The settings resolver (mmbalance.config): merge order, grid blocks and variants,
error messages that name the key, and the schema built from the registries."""

import json

import pytest

from mmbalance.balancers import METHODS
from mmbalance.config import Cell, ConfigError, Experiment, schema
from mmbalance.data import recipes, registry
from mmbalance.models.fusion import FUSIONS

from conftest import ROOT, load_yaml


def experiment(**config) -> Experiment:
    return Experiment(config)


def test_method_settings_merge_global_then_dataset_then_variant():
    e = experiment(
        grid={"datasets": ["synthetic_cremad"], "methods": ["mlb"], "variants": ["default", "steep"]},
        methods={"mlb": {"alpha": 1.0, "beta_max": 4}},
        datasets={"synthetic_cremad": {"methods": {"mlb": {"alpha": 2.0}}}},
        variants={"steep": {"methods": {"mlb": {"alpha": 3.0, "weights": {"video": 0.5}}}}},
    )
    default = e.method_settings("synthetic_cremad", "mlb", "default")
    steep = e.method_settings("synthetic_cremad", "mlb", "steep")
    # alpha: global 1 -> dataset 2 -> variant 3; beta_max from the global block; the rest schema defaults.
    assert (default["alpha"], default["beta_max"], default["end_epoch"]) == (2.0, 4, 1500)
    assert (steep["alpha"], steep["beta_max"]) == (3.0, 4)
    # Nested settings merge key by key.
    assert steep["weights"] == {"audio": 1.0, "video": 0.5}


def test_training_recipe_merges_global_then_dataset_then_variant():
    e = experiment(
        grid={"variants": ["default", "adam_small"]},
        train={"epochs": 5, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.8}},
        datasets={"synthetic_cremad": {"train": {"batch_size": 16, "optimizer": {"lr": 0.05}}}},
        variants={"adam_small": {"train": {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "step", "step_size": 3}}}},
    )
    default = e.train_recipe("synthetic_cremad")
    variant = e.train_recipe("synthetic_cremad", "adam_small")
    assert (default["epochs"], default["batch_size"], default["optimizer"]["lr"], default["optimizer"]["momentum"]) == (5, 16, 0.05, 0.8)
    assert (variant["batch_size"], variant["optimizer"]["name"], variant["optimizer"]["lr"]) == (16, "adam", 0.001)
    assert variant["scheduler"] == {"name": "step", "step_size": 3, "gamma": 0.1}
    assert default["scheduler"]["name"] == "constant"


def test_cell_settings_are_what_the_training_job_gets():
    e = experiment(grid={"methods": ["ogm_ge"], "folds": [2], "variants": ["ge_only"]},
                   variants={"ge_only": {"methods": {"ogm_ge": {"alpha": 0.0}}, "train": {"seed": 10}}})
    (cell,) = e.cells
    assert cell == Cell("synthetic_cremad", "resnet18", "late_linear", "ogm_ge", "ge_only", 2)
    assert cell.path == "synthetic_cremad/resnet18/late_linear/ogm_ge/ge_only/fold2"
    settings = json.loads(e.settings(cell).to_json())
    assert settings["cell"] == cell.as_dict() and settings["variant"] == "ge_only"
    assert settings["method_settings"]["alpha"] == 0.0
    assert settings["seed"] == 12  # the variant's base seed + fold
    # Scheduling-only keys size the Snakemake job; the training job does not get them.
    assert not {"threads", "mem_mb", "runtime"} & set(settings["train"])
    assert settings["tracking"] == {"uri": "sqlite:///results/mlflow/mlflow.db", "experiment": "mmbalance"}


def test_grid_blocks_are_a_union_with_each_cell_once():
    e = experiment(grid={
        "fusions": ["late_linear"], "methods": ["audio_only", "joint", "ogm_ge"], "folds": [1],
        "blocks": [{"fusions": ["sum", "late_linear"], "methods": ["joint", "ogm_ge"]}],
    })
    assert [(c.fusion, c.method) for c in e.cells] == [
        ("late_linear", "audio_only"), ("late_linear", "joint"), ("late_linear", "ogm_ge"), ("sum", "joint"), ("sum", "ogm_ge")]
    assert e.panels() == [("synthetic_cremad", "resnet18", "late_linear"), ("synthetic_cremad", "resnet18", "sum")]
    assert [c.method for c in e.panel_cells("synthetic_cremad", "resnet18", "sum")] == ["joint", "ogm_ge"]


def test_a_variant_can_make_a_cell_possible():
    """OGM-GE on FiLM needs head scores: a variant for those cells only (OGM-GE Table 1's FiLM† row)."""
    config = {"grid": {"fusions": ["late_linear"], "methods": ["ogm_ge"], "folds": [1],
                       "blocks": [{"fusions": ["film"], "variants": ["heads"]}]},
              "variants": {"heads": {"methods": {"ogm_ge": {"score_source": "heads"}}}}}
    assert len(Experiment(config).cells) == 2
    del config["grid"]["blocks"][0]["variants"]
    with pytest.raises(ConfigError, match="method 'ogm_ge' needs decomposition, which fusion 'film' does not offer"):
        Experiment(config)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": {"epoch": 3}}, "config train: Additional properties are not allowed ('epoch' was unexpected)"),
        ({"datasets": {"synthetic_cremad": {"train": {"optimizer": {"lr": -1}}}}}, "config datasets.synthetic_cremad.train.optimizer.lr: -1 is less than or equal to the minimum of 0"),
        ({"datasets": {"ave": {"train": {"threads": 4}}}}, "config datasets.ave.train.threads: per-job resources are set once, under train.threads"),
        ({"variants": {"adam": {"train": {"optimizer": {"name": "adamw"}}}}}, "config variants.adam.train.optimizer.name: 'adamw' is not one of ['adam', 'sgd']"),
        ({"variants": {"steep": {"methods": {"mlb": {"beta": 2}}}}}, "config variants.steep.methods.mlb: Additional properties are not allowed ('beta' was unexpected)"),
        ({"variants": {"x": {"methods": {"mlbb": {}}}}}, "config variants.x.methods: 'mlbb' is not one of"),
        ({"variants": {"Bad Name": {}}}, "config variants: 'Bad Name' does not match"),
        ({"variants": {"default": {}}}, "config variants.default: 'default' names the settings without overrides"),
        ({"grid": {"variants": ["adam"]}}, "config grid: variant 'adam' is not defined under `variants`"),
        ({"grid": {"blocks": [{"method": ["joint"]}]}}, "config grid.blocks.0: Additional properties are not allowed ('method' was unexpected)"),
        ({"grid": {"methods": ["joint", "ogmge"]}}, "config grid.methods.1: 'ogmge' is not one of"),
        ({"datasets": {"synthetic_cremad": {"preprocessing": {"preset": "nope"}}}}, "config datasets.synthetic_cremad.preprocessing.preset: 'nope' is not one of"),
        ({"results": "elsewhere"}, "config results: 'elsewhere' does not match"),
    ],
)
def test_a_wrong_key_or_value_is_named(config, message):
    with pytest.raises(ConfigError) as error:
        Experiment(config)
    assert message in str(error.value)


def test_schema_is_built_from_the_registries():
    full = schema()
    defs = full["$defs"]
    assert defs["method_name"]["enum"] == list(METHODS)
    assert defs["fusion_name"]["enum"] == list(FUSIONS)
    assert defs["dataset_name"]["enum"] == list(registry.DATASETS)
    assert defs["recipe"]["properties"]["preset"]["enum"] == list(recipes.PRESETS)
    datasets = full["properties"]["datasets"]["properties"]
    assert set(datasets) == set(registry.DATASETS)
    assert datasets["vggsound"]["properties"]["preprocessing"]["default"] == {"preset": "ogm_ge_vggsound"}
    assert "generator" in datasets["synthetic_cremad"]["properties"] and "source" not in datasets["synthetic_cremad"]["properties"]


def test_the_default_config_resolves_to_the_default_grid():
    e = Experiment.from_files(ROOT / "config" / "config.yaml")
    assert len(e.cells) == 36 and e.variants == ["default"]
    grid = load_yaml(ROOT / "config" / "config.yaml")["grid"]
    assert e.methods == grid["methods"]


def test_from_files_names_a_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml, line 2, column 1: not valid YAML"):
        Experiment.from_files(bad)


def test_a_teacher_method_brings_its_teacher_cells_and_their_model_paths():
    """UMT learns from the unimodal models of the same dataset, backbone, variant and fold
    (late_linear: only the encoder is read); those cells join the grid, tuning's too."""
    config = {"results": "results/x", "grid": {"methods": ["umt"], "fusions": ["gated"], "folds": [2, 3],
                                               "blocks": [{"methods": ["umt"], "variants": ["tuned"], "folds": [3]}]},
              "tuning": {"fold": 1}}
    experiment = Experiment(config)
    teachers = {c.path for c in experiment.cells if c.method != "umt"}
    assert teachers == {f"synthetic_cremad/resnet18/late_linear/{m}/{v}/fold{k}"
                        for m in ("audio_only", "video_only") for v, k in [("default", 2), ("default", 3), ("tuned", 3), ("tuned", 1)]}
    cell = experiment.cell("synthetic_cremad", "resnet18", "gated", "umt", "default", 2)
    assert experiment.settings(cell).method_settings["teacher_models"] == {
        "audio": "results/x/runs/synthetic_cremad/resnet18/late_linear/audio_only/default/fold2/model.pt",
        "video": "results/x/runs/synthetic_cremad/resnet18/late_linear/video_only/default/fold2/model.pt",
    }
    trial = experiment.trial_settings("synthetic_cremad", "resnet18", "gated", "umt")
    assert trial.method_settings["teacher_models"]["audio"].endswith("late_linear/audio_only/tuned/fold1/model.pt")
    assert "teacher_models" not in experiment.settings(experiment.cell("synthetic_cremad", "resnet18", "late_linear", "audio_only", "default", 2)).method_settings
