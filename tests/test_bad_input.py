"""The bad-input catalogue: each case is an input a user can get wrong, and the message it
must produce names the file, key or value (and the line, where there is one). Cases that
write check that what was there before is untouched."""

import errno
import shutil
from pathlib import Path

import pytest
import yaml

from mmbalance import papers
from mmbalance.config import ConfigError, Experiment
from mmbalance.data import catalog, media, recipes, synthetic
from mmbalance.data.store.features import FeatureStore, write_store
from mmbalance.io import write_atomic

from conftest import ROOT, default_config


def config_case(overrides):
    return lambda tmp: Experiment(overrides)


def yaml_case(text):
    def case(tmp):
        path = tmp / "my config.yaml"
        path.write_text(text)
        return Experiment.from_files(path)
    return case


def published_case(edit):
    def case(tmp):
        rows = (ROOT / "config" / "published.csv").read_text().splitlines()
        path = tmp / "published.csv"
        path.write_text("\n".join(edit(rows)) + "\n")
        return papers.resolve_published(papers.load_published(path), papers.load_specs(ROOT / "config" / "paper_tables.yaml"))
    return case


def spec_case(edit):
    def case(tmp):
        specs = yaml.safe_load((ROOT / "config" / "paper_tables.yaml").read_text())
        edit(specs)
        path = tmp / "paper_tables.yaml"
        path.write_text(yaml.safe_dump(specs, allow_unicode=True))
        return papers.load_specs(path)
    return case


def _tiny_media(tmp) -> Path:
    raw = tmp / "raw"
    synthetic.generate(raw, default_config()["datasets"]["synthetic_cremad"]["generator"] | {"actors": 6, "sentences": 1, "video_width": 64, "video_height": 48})
    return raw


def cut_media(kind):
    def case(tmp):
        raw = _tiny_media(tmp)
        source = sorted((raw / ("AudioWAV" if kind == "wav" else "VideoFlash")).glob(f"*.{kind}"))[0]
        cut = tmp / f"cut clip.{kind}"
        data = source.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        return media.decode_audio(cut, 8000) if kind == "wav" else media.decode_frames(cut, 2, 1.0, 32)
    return case


def fake_media(content):
    def case(tmp):
        path = tmp / "clip.flv"
        path.write_bytes(content)
        return media.decode_frames(path, 1, 1.0, 32)
    return case


def folds_case(text):
    def case(tmp):
        path = tmp / "data_splits.json"
        path.write_text(text)
        return catalog.read_folds(path)
    return case


def catalog_case(edit):
    def case(tmp):
        from mmbalance.data.datasets import cremad

        raw = _tiny_media(tmp)
        out = tmp / "catalog"
        cremad.build_catalog(raw, "generated", {}).write(out)
        edit(out)
        return catalog.Catalog.read(out)
    return case


def _label_out_of_range(out):
    table = (out / "catalog.csv").read_text().splitlines()
    header, first = table[0].split(","), table[1].split(",")
    first[header.index("label")] = "9"
    (out / "catalog.csv").write_text("\n".join([table[0], ",".join(first), *table[2:]]) + "\n")


def store_case(edit):
    def case(tmp):
        store = tmp / "store"
        store.mkdir()
        (store / "meta.json").write_text("{}")
        edit(store)
        return FeatureStore.load(store)
    return case


def disk_full_case(tmp):
    target = tmp / "finished.csv"
    target.write_text("finished results\n")

    def full(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        return write_atomic(target, full)
    finally:
        assert target.read_text() == "finished results\n"  # the finished file is untouched
        assert not list(tmp.glob(".finished.csv.*.tmp"))


def store_too_big_case(tmp, monkeypatch=None):
    raw = _tiny_media(tmp)
    from mmbalance.data.datasets import cremad

    cat = cremad.build_catalog(raw, "generated", {})
    import mmbalance.data.store.features as features

    real = shutil.disk_usage
    features.shutil.disk_usage = lambda path: real(path)._replace(free=1000)
    try:
        return write_store(cat, tmp / "store", {"frames.npy": ("uint8", (2, 32, 32, 3))}, lambda clip: ({}, {}), {})
    finally:
        features.shutil.disk_usage = real


CASES = {
    # --- configuration files ---
    "yaml: tab indent": (yaml_case("grid:\n\tmethods: [joint]\n"), ["my config.yaml, line 2, column 1", "not valid YAML"]),
    "yaml: unclosed bracket": (yaml_case("grid:\n  methods: [joint\ntrain: {}\n"), ["my config.yaml, line 3", "not valid YAML"]),
    "yaml: key given twice": (yaml_case("train:\n  epochs: 3\ntrain:\n  epochs: 4\n"), ["my config.yaml, line 3, column 1", "'train' is given twice (first on line 1)"]),
    "yaml: nested key given twice": (yaml_case("train:\n  epochs: 3\n  epochs: 4\n"), ["line 3, column 3", "'epochs' is given twice"]),
    "yaml: a list, not a mapping": (yaml_case("- grid\n- train\n"), ["my config.yaml: a config is a mapping of keys, not a list"]),
    "config: unknown top-level key": (config_case({"trian": {}}), ["config (top level)", "'trian' was unexpected"]),
    "config: wrong type": (config_case({"train": {"epochs": "ten"}}), ["config train.epochs: 'ten' is not of type 'integer'"]),
    "config: unknown method": (config_case({"grid": {"methods": ["ogmge"]}}), ["config grid.methods.0: 'ogmge' is not one of"]),
    "config: unknown fusion": (config_case({"grid": {"fusions": ["concat"]}}), ["config grid.fusions.0: 'concat' is not one of"]),
    "config: unknown dataset": (config_case({"grid": {"datasets": ["crema"]}}), ["config grid.datasets.0: 'crema' is not one of"]),
    "config: fold 0": (config_case({"grid": {"folds": [0]}}), ["config grid.folds.0: 0 is less than the minimum of 1"]),
    "config: method setting out of range": (config_case({"methods": {"mlb": {"beta_max": 0.5}}}), ["config methods.mlb.beta_max: 0.5 is less than the minimum of 1"]),
    "config: per-dataset setting of an unknown key": (config_case({"datasets": {"ave": {"methods": {"agm": {"alfa": 1}}}}}), ["config datasets.ave.methods.agm", "'alfa' was unexpected"]),
    "config: per-dataset resource": (config_case({"datasets": {"ave": {"train": {"mem_mb": 10}}}}), ["config datasets.ave.train.mem_mb: per-job resources are set once"]),
    "config: variant with a wrong value": (config_case({"variants": {"fast": {"train": {"epochs": -1}}}}), ["config variants.fast.train.epochs: -1 is less than the minimum of 1"]),
    "config: undefined variant": (config_case({"grid": {"variants": ["fast"]}}), ["config grid: variant 'fast' is not defined under `variants`"]),
    "config: variant named default": (config_case({"variants": {"default": {}}}), ["config variants.default: 'default' names the settings without overrides"]),
    "config: method impossible on a fusion": (config_case({"grid": {"methods": ["mmcosine"], "fusions": ["gated"]}}), ["method 'mmcosine' needs decomposition, which fusion 'gated' does not offer"]),
    "config: unknown preset": (config_case({"datasets": {"ave": {"preprocessing": {"preset": "mlb"}}}}), ["config datasets.ave.preprocessing.preset: 'mlb' is not one of"]),
    "config: results outside results/": (config_case({"results": "/tmp/out"}), ["config results: '/tmp/out' does not match"]),
    "recipe without its keys": (lambda tmp: recipes.resolve({"frames": 2}, "datasets.x.preprocessing"), ["datasets.x.preprocessing: recipe lacks", "fps"]),
    # --- published numbers and paper specs ---
    "published: value not a number": (published_case(lambda rows: [rows[0], rows[1].replace(",52.5,", ",52.5%,"), *rows[2:]]), ["published.csv line 2: value '52.5%' is not a number"]),
    "published: missing column": (published_case(lambda rows: [line.rsplit(",", 1)[0] if i == 0 else line for i, line in enumerate(rows)]), ["lacks the columns ['note']"]),
    "published: a number in no table": (published_case(lambda rows: [rows[0], rows[1].replace("Audio-only", "Audio only")]), ["('Audio only', 'CREMA-D Acc') is in no paper table spec"]),
    "published: another protocol": (published_case(lambda rows: [rows[0], rows[1].replace("cremad_ogm_split", "cremad_mlb_folds")]), ["has protocol 'cremad_mlb_folds', but the spec maps it to dataset 'cremad_ogm'"]),
    "spec: cell without a dataset": (spec_case(lambda s: s["ogm_ge_table2"]["columns"][0].pop("dataset")), ["ogm_ge_table2: cell ('Concatenation', 'CREMA-D Acc') does not say its ['dataset']"]),
    "spec: unknown metric": (spec_case(lambda s: s["ogm_ge_table2"]["columns"][0].update(metric="top5")), ["metric 'top5' is not one of"]),
    # --- split files and catalogs ---
    "fold file not JSON": (folds_case('{"1": {"train": [}'), ["data_splits.json: not valid JSON (line 1, column"]),
    "fold file not an object": (folds_case("[1, 2]"), ["data_splits.json: expected an object of folds", "got a list"]),
    "fold file lacks a split": (folds_case('{"1": {"train": ["a"], "val": ["b"]}}'), ["data_splits.json: fold '1' lacks split(s) ['test']"]),
    "fold file with a clip in two splits": (folds_case('{"1": {"train": ["a"], "val": ["a"], "test": ["b"]}}'), ["data_splits.json: fold 1 has clips in both train and val: ['a']"]),
    "catalog: label outside the class list": (catalog_case(_label_out_of_range), ["catalog.csv", "has label 9, outside the 6 classes"]),
    "catalog: catalog.json not JSON": (catalog_case(lambda out: (out / "catalog.json").write_text("{oops")), ["catalog.json: not valid JSON"]),
    # --- media ---
    "media: truncated WAV": (cut_media("wav"), ["cut clip.wav: the WAV header declares", "(truncated)"]),
    "media: truncated FLV": (cut_media("flv"), ["cut clip.flv: video ends at", "but the file declares", "(truncated)"]),
    "media: git-lfs pointer": (fake_media(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n"), ["clip.flv: git-lfs pointer stub"]),
    "media: HTML page": (fake_media(b"<!DOCTYPE html><html>quota exceeded</html>"), ["clip.flv: an HTML page instead of media"]),
    "media: empty file": (fake_media(b""), ["clip.flv: empty file"]),
    "media: not a container": (fake_media(b"\x00" * 4096), ["clip.flv: cannot decode video"]),
    # --- stores and disks ---
    "store: meta.json not JSON": (store_case(lambda store: (store / "meta.json").write_text("{")), ["meta.json: not valid JSON"]),
    "disk full while writing": (disk_full_case, ["no space left on the device while writing", "finished.csv"]),
    "feature store larger than the free space": (store_too_big_case, ["no space left for the feature store", "store", "GB free"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named(name, tmp_path):
    case, expected = CASES[name]
    with pytest.raises((ValueError, OSError, media.MediaError, ConfigError)) as error:
        case(tmp_path)
    for fragment in expected:
        assert fragment in str(error.value), f"{name}: {fragment!r} not in {str(error.value)!r}"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30


def test_a_media_failure_keeps_its_kind():
    kinds = {}
    for name in ("media: truncated WAV", "media: truncated FLV", "media: git-lfs pointer", "media: not a container"):
        try:
            CASES[name][0](Path(__import__("tempfile").mkdtemp()))
        except media.MediaError as error:
            kinds[name] = error.kind
    assert kinds == {"media: truncated WAV": "truncated", "media: truncated FLV": "truncated", "media: git-lfs pointer": "stub",
                     "media: not a container": "corrupt"}
