"""The settings resolver: from a config to the exact settings of every cell.

A cell is one training job: (dataset, backbone, fusion, method, variant, fold).
Its settings are merged in one order, for the method's settings and for the
training recipe alike:

    methods.<m>   -> datasets.<d>.methods.<m>   -> variants.<v>.methods.<m>
    train         -> datasets.<d>.train         -> variants.<v>.train

This module is the only place that logic lives: the workflow
(workflow/rules/common.smk), the CLI and the tests call it. It also builds the
config schema: the static part is workflow/schemas/config.schema.yaml, and the
parts that depend on the registries (the method, fusion, dataset and preset
names, each method's settings, each dataset's block) are filled in from them,
so a new method or dataset needs no schema edit.

A method that learns from other cells' trained models (UMT's unimodal teachers,
its class's `TEACHERS`) brings those cells into the grid: the teacher of
modality m for a cell is the cell of method `TEACHERS[m]` with the same dataset,
backbone, variant and fold, under late_linear fusion (only its encoder is read),
and the cell's settings carry the path of the teacher's model.pt.

A wrong key or value raises `ConfigError` naming it, e.g.
``config variants.adam.train.optimizer.name: 'adamw' is not one of ['adam', 'sgd']``.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import jsonschema
import yaml

from mmbalance.balancers import METHODS, method_class
from mmbalance.compatibility import incompatibility
from mmbalance.data import recipes, registry
from mmbalance.models.fusion import FUSIONS
from mmbalance.tracking import SERVER_RECORD, SERVER_SCHEME, SERVER_STORE

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
GRID_AXES = ("datasets", "backbones", "fusions", "methods", "variants", "folds")
DEFAULT_VARIANT = "default"
# The variant whose settings are the best of an equal-budget study on validation (tuning.*),
# read by the training job from results/.../tuning/<study>/best.json (mmbalance.tuning).
TUNED_VARIANT = "tuned"
RESERVED_VARIANTS = (DEFAULT_VARIANT, TUNED_VARIANT)
# A teacher model is read for its encoder only; late_linear runs every unimodal method.
TEACHER_FUSION = "late_linear"
# Per-job resources: one value for the whole grid (they size Snakemake/SLURM jobs), never overridden.
RESOURCE_KEYS = ("device", "threads", "mem_mb", "runtime")
# The training job is given the recipe without the scheduling-only keys.
NOT_PASSED_TO_TRAINING = ("threads", "mem_mb", "runtime")
# The SQLite store jobs write on one machine; a tracking server fronts the same file.
DEFAULT_TRACKING_URI = SERVER_STORE
# Tracking through the workflow's MLflow server: the address is read from this record at run time.
SERVER_TRACKING_URI = f"{SERVER_SCHEME}{SERVER_RECORD}"


class ConfigError(ValueError):
    """A wrong key or value in the configuration; the message names it."""


@functools.cache
def _schema() -> dict:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    defs = schema["$defs"]
    defs["dataset_name"]["enum"] = list(registry.DATASETS)
    defs["fusion_name"]["enum"] = list(FUSIONS)
    defs["method_name"]["enum"] = list(METHODS)
    defs["recipe"]["properties"]["preset"]["enum"] = list(recipes.PRESETS)
    for key, allowed in recipes.CHOICES.items():
        defs["recipe"]["properties"][key]["enum"] = list(allowed)
    schema["properties"]["methods"]["properties"] = {name: method_class(name).settings_schema() for name in METHODS}
    datasets = schema["properties"]["datasets"]["properties"]
    for name, entry in registry.DATASETS.items():
        block = copy.deepcopy(defs["dataset"])
        block["description"] = entry.description
        block["properties"]["max_skipped_fraction"]["default"] = entry.max_skipped_fraction
        block["properties"]["preprocessing"]["default"] = {"preset": entry.preset}
        if registry.is_generated(name):
            del block["properties"]["source"]
            block["properties"]["generator"] = defs["generator"]
        datasets[name] = block
    return schema


def schema() -> dict:
    """The full config schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


def _where(path) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _error(prefix: str, error: jsonschema.ValidationError) -> ConfigError:
    return ConfigError(f"config {_where([prefix, *error.absolute_path] if prefix else error.absolute_path)}: {error.message}")


def _fill_defaults(validator_class):
    """A validator that writes each property's default into the instance (as Snakemake's does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


_DefaultsValidator = _fill_defaults(jsonschema.Draft202012Validator)


def _check(instance, subschema: dict, prefix: str, fill_defaults: bool = False) -> None:
    """Validate `instance` against `subschema` (with the full schema's $defs); raise naming the first error."""
    full = {**subschema, "$defs": _schema()["$defs"]}
    validator = (_DefaultsValidator if fill_defaults else jsonschema.Draft202012Validator)(full)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        raise _error(prefix, error)


def validate(config: dict) -> dict:
    """Check `config` against the schema and fill every default, in place; returns it."""
    if DEFAULT_VARIANT in (config.get("variants") or {}):
        raise ConfigError(f"config variants.{DEFAULT_VARIANT}: {DEFAULT_VARIANT!r} names the settings without overrides; call the variant otherwise")
    if TUNED_VARIANT in (config.get("variants") or {}):
        raise ConfigError(f"config variants.{TUNED_VARIANT}: {TUNED_VARIANT!r} names the settings found by the tuning studies (tuning.*); call the variant otherwise")
    _check(config, _schema(), "", fill_defaults=True)
    return config


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: key {key!r} is given twice "
                              f"(first on line {seen[key] + 1})")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(path: str | Path) -> dict:
    """A config file, with errors naming the file, line and column (a tab indent, a key given twice ...)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as stream:  # a file object: error marks carry its name
            loaded = yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, not a {type(loaded).__name__}")
    return loaded


def check_config_files(paths) -> None:
    """Read each config file strictly (Snakemake's own reader accepts a key given twice, the last
    silently winning): raises ConfigError naming the file, line and column."""
    for path in paths:
        load_yaml(path)


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` merged in: dicts key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else copy.deepcopy(value)
    return merged


def _lookup(schema: dict, dotted: str) -> dict | None:
    """The subschema of a dotted key (`optimizer.lr` of the train schema), or None."""
    for part in dotted.split("."):
        schema = schema.get("properties", {}).get(part)
        if schema is None:
            return None
    return schema


def set_dotted(settings: dict, dotted: str, value) -> dict:
    """A copy of `settings` with the nested key `a.b.c` set to `value`."""
    head, _, rest = dotted.partition(".")
    return settings | {head: set_dotted(settings.get(head, {}), rest, value) if rest else value}


@dataclass(frozen=True, order=True)
class Cell:
    """One training job of the grid."""

    dataset: str
    backbone: str
    fusion: str
    method: str
    variant: str
    fold: int

    @property
    def path(self) -> str:
        """Its place under results/runs/, results/checkpoints/, logs/train/ ..."""
        return f"{self.dataset}/{self.backbone}/{self.fusion}/{self.method}/{self.variant}/fold{self.fold}"

    @property
    def panel(self) -> tuple[str, str, str]:
        return (self.dataset, self.backbone, self.fusion)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CellSettings:
    """Everything one training job needs: what `mmbalance train --settings` receives."""

    cell: Cell
    seed: int
    backbone: dict  # {"name": ..., **backbones.<name>}
    method_settings: dict
    train: dict  # the resolved recipe, without the scheduling-only keys
    tracking: dict  # {"uri", "experiment"}

    def as_dict(self) -> dict:
        return {
            "cell": self.cell.as_dict(),
            "seed": self.seed,
            "backbone": self.backbone,
            "fusion": self.cell.fusion,
            "method": self.cell.method,
            "variant": self.cell.variant,
            "method_settings": self.method_settings,
            "train": self.train,
            "tracking": self.tracking,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


class Experiment:
    """A validated config and everything resolved from it: the grid's cells and
    each cell's settings, each dataset's preprocessing recipe. Building one
    checks the whole config, so a wrong key, an unknown variant or a method that
    cannot run on a fusion stops the run before any job starts."""

    def __init__(self, config: dict, *, validated: bool = False):
        self.config = config if validated else validate(copy.deepcopy(config))
        self._check_overrides()
        self.cells = self._grid_cells()
        self._method_settings = {
            (c.dataset, c.method, c.variant): self.method_settings(c.dataset, c.method, c.variant) for c in self.cells
        }
        for cell in self.cells:
            reason = incompatibility(cell.method, self._method_settings[(cell.dataset, cell.method, cell.variant)], cell.fusion)
            if reason:
                where = f"variant {cell.variant!r}, " if cell.variant != DEFAULT_VARIANT else ""
                raise ConfigError(f"config grid: {where}dataset {cell.dataset!r}: {reason}")
        self.recipes = {
            d: recipes.resolve(self.config["datasets"][d]["preprocessing"], f"datasets.{d}.preprocessing") for d in self.datasets
        }

    @classmethod
    def from_files(cls, *paths: str | Path) -> Experiment:
        """Configs merged in order (later files win, dicts key by key), as `--configfile` does."""
        config: dict = {}
        for path in paths:
            config = deep_merge(config, load_yaml(path))
        return cls(config)

    # --- the grid -------------------------------------------------------------

    def _grid_cells(self) -> list[Cell]:
        grid = self.config["grid"]
        main = {axis: grid[axis] for axis in GRID_AXES}
        cells: dict[Cell, None] = {}
        for block in [main, *({**main, **block} for block in grid["blocks"])]:
            for variant in block["variants"]:
                if variant not in RESERVED_VARIANTS and variant not in self.config["variants"]:
                    raise ConfigError(f"config grid: variant {variant!r} is not defined under `variants` (defined: {sorted(self.config['variants'])})")
            for d in block["datasets"]:
                for b in block["backbones"]:
                    for f in block["fusions"]:
                        for m in block["methods"]:
                            for v in block["variants"]:
                                for k in block["folds"]:
                                    cells[Cell(d, b, f, m, v, k)] = None
        trial_cells = [Cell(c.dataset, c.backbone, c.fusion, c.method, c.variant, self.config["tuning"]["fold"])
                       for c in cells if c.variant == TUNED_VARIANT]
        teachers = {t: None for c in [*cells, *trial_cells] for t in self.teachers(c).values()}
        return list(cells | teachers)

    def teachers(self, cell: Cell) -> dict[str, Cell]:
        """modality -> the cell whose trained model teaches it (methods with TEACHERS), else {}."""
        return {m: Cell(cell.dataset, cell.backbone, TEACHER_FUSION, teacher, cell.variant, cell.fold)
                for m, teacher in getattr(method_class(cell.method), "TEACHERS", {}).items()}

    def teacher_models(self, cell: Cell) -> dict[str, str]:
        """modality -> the teacher's model.pt, as the workflow writes it."""
        return {m: f"{self.config['results']}/runs/{teacher.path}/model.pt" for m, teacher in self.teachers(cell).items()}

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(c.dataset for c in self.cells))

    @property
    def backbones(self) -> list[str]:
        return list(dict.fromkeys(c.backbone for c in self.cells))

    @property
    def methods(self) -> list[str]:
        """Methods in grid order (tables and figures list them so)."""
        return list(dict.fromkeys(c.method for c in self.cells))

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(c.variant for c in self.cells))

    @property
    def max_fold(self) -> int:
        return max(c.fold for c in self.cells)

    def panels(self) -> list[tuple[str, str, str]]:
        """(dataset, backbone, fusion) of the grid: one evaluation job and one figure panel each."""
        return list(dict.fromkeys(c.panel for c in self.cells))

    def panel_cells(self, dataset: str, backbone: str, fusion: str) -> list[Cell]:
        return [c for c in self.cells if c.panel == (dataset, backbone, fusion)]

    # --- per-cell settings -------------------------------------------------------

    def _check_overrides(self) -> None:
        """Each override layer alone against its schema, so an error names where it was written."""
        train_schema = _schema()["properties"]["train"]
        layers = [(f"datasets.{d}", block) for d, block in self.config["datasets"].items()]
        layers += [(f"variants.{v}", block) for v, block in self.config["variants"].items()]
        for where, block in layers:
            overrides = block.get("train", {})
            for key in RESOURCE_KEYS:
                if key in overrides:
                    raise ConfigError(f"config {where}.train.{key}: per-job resources are set once, under train.{key}")
            _check(overrides, train_schema, f"{where}.train")
            for method, settings in block.get("methods", {}).items():
                _check(settings, method_class(method).settings_schema(), f"{where}.methods.{method}")
        for name, spec in self.config["tuning"]["recipe_space"].items():
            if _lookup(train_schema, name) is None:
                raise ConfigError(f"config tuning.recipe_space.{name}: not a key of train")
            if spec["low"] > spec["high"] or (spec.get("log") and spec["low"] <= 0):
                raise ConfigError(f"config tuning.recipe_space.{name}: the range [{spec['low']}, {spec['high']}] is empty or not positive on a log scale")

    def method_settings(self, dataset: str, method: str, variant: str = DEFAULT_VARIANT) -> dict:
        """The settings before any tuning; a `tuned` cell's job merges its study's best over them."""
        settings = self.config["methods"][method]
        settings = deep_merge(settings, self.config["datasets"][dataset]["methods"].get(method, {}))
        if variant not in RESERVED_VARIANTS:
            settings = deep_merge(settings, self.config["variants"][variant].get("methods", {}).get(method, {}))
        return settings

    def train_recipe(self, dataset: str, variant: str = DEFAULT_VARIANT) -> dict:
        recipe = deep_merge(self.config["train"], self.config["datasets"][dataset]["train"])
        if variant not in RESERVED_VARIANTS:
            recipe = deep_merge(recipe, self.config["variants"][variant].get("train", {}))
        return recipe

    def variant_description(self, variant: str) -> str:
        if variant == DEFAULT_VARIANT:
            return "the config's settings"
        if variant == TUNED_VARIANT:
            return "the best settings of each study: " + self.tuning_protocol()
        return self.config["variants"][variant].get("description", "")

    # --- tuning ----------------------------------------------------------------

    def studies(self) -> list[tuple[str, str, str, str]]:
        """(dataset, backbone, fusion, method) of every cell of the `tuned` variant: one study each."""
        return list(dict.fromkeys((c.dataset, c.backbone, c.fusion, c.method) for c in self.cells if c.variant == TUNED_VARIANT))

    def trial_settings(self, dataset: str, backbone: str, fusion: str, method: str) -> CellSettings:
        """What every trial of the study starts from (the cell's settings on the tuning fold, the
        tuning epochs); a trial merges its drawn values over them."""
        tuning = self.config["tuning"]
        settings = self.settings(Cell(dataset, backbone, fusion, method, TUNED_VARIANT, tuning["fold"]))
        if tuning["epochs"] is not None:
            settings.train["epochs"] = tuning["epochs"]
        return settings

    def search_space(self, method: str) -> dict:
        """Every range a study of `method` draws from: `method.<setting>` from the method's
        SEARCH_SPACE, `train.<key>` from tuning.recipe_space (the same for every method)."""
        space = {f"method.{name}": {"log": False, "type": "float"} | spec for name, spec in method_class(method).SEARCH_SPACE.items()}
        space |= {f"train.{name}": {"log": False, "type": "float"} | spec for name, spec in self.config["tuning"]["recipe_space"].items()}
        return space

    def tuning_protocol(self) -> str:
        tuning = self.config["tuning"]
        epochs = "the recipe's epochs" if tuning["epochs"] is None else f"{tuning['epochs']} epochs"
        pruner = "" if tuning["pruner"] == "none" else f", {tuning['pruner']} pruning"
        return (f"tuned: {tuning['trials']} trials per (dataset, backbone, fusion, method), {tuning['sampler'].upper()} sampler "
                f"(seed {tuning['seed']}){pruner}, {epochs} each, selected on the validation split of fold {tuning['fold']}; "
                "test never read while tuning")

    def store_recipe(self, dataset: str) -> dict:
        """The recipe the dataset's feature store is built from (no training-only keys)."""
        return recipes.store_recipe(self.recipes[dataset])

    def settings(self, cell: Cell) -> CellSettings:
        recipe = self.train_recipe(cell.dataset, cell.variant)
        # The recipe keys the training job reads (augmentation) travel with the cell's settings.
        recipe |= {k: self.recipes[cell.dataset][k] for k in recipes.TRAINING_KEYS}
        method_settings = self.method_settings(cell.dataset, cell.method, cell.variant)
        if teachers := self.teacher_models(cell):
            method_settings = method_settings | {"teacher_models": teachers}
        return CellSettings(
            cell=cell,
            seed=recipe["seed"] + cell.fold,
            backbone={"name": cell.backbone} | self.config["backbones"][cell.backbone],
            method_settings=method_settings,
            train={k: v for k, v in recipe.items() if k not in NOT_PASSED_TO_TRAINING},
            tracking=self.tracking,
        )

    def cell(self, dataset: str, backbone: str, fusion: str, method: str, variant: str, fold: int | str) -> Cell:
        """The grid's cell with these keys (wildcards arrive as strings)."""
        cell = Cell(dataset, backbone, fusion, method, variant, int(fold))
        if cell not in self._cell_set:
            raise ConfigError(f"{cell.path} is not a cell of the configured grid")
        return cell

    @functools.cached_property
    def _cell_set(self) -> set[Cell]:
        return set(self.cells)

    @property
    def tracking(self) -> dict:
        """The configured URI, or a SQLite store inside results/. The path is relative to the
        working directory every job runs in, so moving the project retrains nothing."""
        tracking = self.config["tracking"]
        if tracking["server"]["enabled"]:
            # --- tracking server (mmbalance.tracking): jobs find its address in a file the
            # local rule init_tracking writes, so the settings (and reruns) do not depend on the host.
            if tracking["uri"]:
                raise ConfigError("config tracking.server.enabled: true needs tracking.uri empty (the server fronts "
                                  "results/mlflow/mlflow.db); set one or the other")
            return {"uri": SERVER_TRACKING_URI, "experiment": tracking["experiment"]}
        return {"uri": tracking["uri"] or DEFAULT_TRACKING_URI, "experiment": tracking["experiment"]}
