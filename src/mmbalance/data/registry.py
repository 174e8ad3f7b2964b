"""The dataset registry: each dataset key of the config, declared once.

A new dataset is one module in mmbalance/data/datasets/ with

    CLASSES: tuple[str, ...]
    def download(raw_dir: Path, source: dict, workers: int) -> dict
        fetch, verify and extract everything into raw_dir (with fetching.http
        and fetching.archives); returns a record of what was verified (written
        to resources/raw/<raw>/download.json)
    def build_catalog(raw_dir: Path, protocol: str, options: dict) -> Catalog
        read the split files and build the catalog, with the shared checks of
        mmbalance.data.catalog: check_counts (sizes against the paper's),
        check_missing (listed clips without media), carve_validation (a seeded
        validation list, when the protocol has none)

plus one line here. A large dataset may keep its download in a companion
module (vggsound_download) and import `download` from it. The config schema's `datasets.<key>` block and the grid's
list of datasets are built from this table (mmbalance.config). Two keys may
share a raw folder (CREMA-D's two protocols are read from one download).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetEntry:
    module: str  # mmbalance.data.datasets.<module>
    raw: str  # resources/raw/<raw>
    protocol: str  # the split protocol the module's build_catalog reads
    description: str  # one line, printed in every table's protocol line
    preset: str  # default preprocessing preset (mmbalance.data.recipes)
    max_skipped_fraction: float  # default share of a split preprocessing may skip
    # Published numbers (config/published.csv) carry a protocol; a run is
    # compared only with numbers whose protocol is this one. None: never compared.
    published_protocol: str | None


DATASETS = {
    "synthetic_cremad": DatasetEntry(
        "cremad", "synthetic_cremad", "generated",
        "the embedded default: generated clips in CREMA-D format, actor-disjoint train/val/test folds", "synthetic_cpu", 0.05, None),
    "cremad": DatasetEntry(
        "cremad", "cremad", "mlb", "CREMA-D, MLB's actor-independent folds 1-3 (VAVL partitions)", "mlb_cremad", 0.01, "cremad_mlb_folds"),
    "cremad_ogm": DatasetEntry(
        "cremad", "cremad", "ogm", "CREMA-D, OGM-GE's 6,698/744 split with a stratified 10% validation list", "ogm_ge_cremad", 0.01,
        "cremad_ogm_split"),
    "ave": DatasetEntry(
        "ave", "ave", "mlb", "AVE, 28 classes, official 3,339/402/402 lists (first occurrence kept)", "mlb_ave", 0.01, "ave_official"),
    "ucf101": DatasetEntry(
        "ucf101", "ucf101", "mlb", "UCF101, the 51 classes with audio, official splits 1-3, validation by group", "mlb_ucf101", 0.05,
        "ucf101_51_audio"),
    "kinetics_sounds": DatasetEntry(
        "kinetics_sounds", "kinetics_sounds", "ogm_ge", "Kinetics-Sounds, 31 classes, OGM-GE / BML lists", "gewu_kinetics_sounds", 0.05,
        "kinetics_sounds_ogm_ge"),
    "vggsound": DatasetEntry(
        "vggsound", "vggsound", "ogm_ge", "VGGSound, 309 classes, the hche11 train/test lists", "ogm_ge_vggsound", 0.05, "vggsound_ogm_ge"),
}


def entry(dataset: str) -> DatasetEntry:
    if dataset not in DATASETS:
        raise KeyError(f"dataset {dataset!r} is not one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def module(dataset: str):
    return importlib.import_module(f"mmbalance.data.datasets.{entry(dataset).module}")


def is_generated(dataset: str) -> bool:
    return entry(dataset).protocol == "generated"
