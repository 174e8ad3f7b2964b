"""The papers' tables: the published numbers, the protocol rule, the paper configs'
grids against the specs, and the tables laid out as printed."""

import math

import pandas as pd
import pytest

from mmbalance import papers
from mmbalance.aggregate import compare_published, summarize
from mmbalance.config import Experiment

from conftest import ROOT, load_yaml

SPECS = papers.load_specs(ROOT / "config" / "paper_tables.yaml")
PUBLISHED = papers.load_published(ROOT / "config" / "published.csv")
RESOLVED = papers.resolve_published(PUBLISHED, SPECS)


def test_every_printed_number_of_the_five_tables_is_there_once():
    counts = RESOLVED.groupby("table_key").size().to_dict()
    # OGM-GE Table 7 prints its (b=64, lr=1e-3) row twice: listed once.
    assert counts == {"ogm_ge_table1": 40, "ogm_ge_table2": 12, "ogm_ge_table6": 12, "ogm_ge_table7": 12, "olm_table1": 90}
    assert len(RESOLVED) == 166
    # Every printed cell of those tables has its number, and every number a printed cell.
    for key in counts:
        assert len(SPECS[key].spec_cells()) == counts[key], key


def value(table, row, column):
    match = RESOLVED[(RESOLVED["table_key"] == table) & (RESOLVED["row"] == row) & (RESOLVED["column"] == column)]
    return match["value"].item()


def test_spot_checks_against_the_papers():
    # OGM-GE Table 2, OGM-GE on CREMA-D: 61.9 (the 61.25 quoted second hand is no paper's).
    assert value("ogm_ge_table2", "OGM-GE", "CREMA-D Acc") == 61.9
    assert 61.25 not in PUBLISHED["value"].tolist()
    assert value("ogm_ge_table1", "Summation†", "CREMA-D mAP") == 64.3
    assert value("ogm_ge_table6", "Adam†", "VGGSound Acc") == 48.2
    assert value("olm_table1", "PMR◇", "CREMA-D mAP") == 64.5
    olm = RESOLVED[(RESOLVED["table_key"] == "olm_table1") & RESOLVED["row"].str.startswith("OLM")]
    assert sorted(olm["value"]) == sorted([51.1, 54.1, 62.4, 65.2, 63.1, 65.5])
    assert set(RESOLVED["metric"]) == {"acc", "mAP"}


def test_numbers_carry_their_datasets_protocol():
    # The OGM-GE split of CREMA-D is its own protocol, never MLB's actor-independent folds.
    cremad = RESOLVED[RESOLVED["column"].str.startswith("CREMA-D")]
    assert set(cremad["protocol"]) == {"cremad_ogm_split"}
    assert set(cremad.loc[cremad["missing"] == "", "our_dataset"]) == {"cremad_ogm"}


def test_a_spec_mapping_a_number_to_another_protocol_is_refused():
    spec = SPECS["ogm_ge_table2"]
    wrong = papers.TableSpec(**{**spec.__dict__, "columns": [dict(c, dataset="cremad") if c["label"].startswith("CREMA-D") else c for c in spec.columns]})
    with pytest.raises(ValueError, match="protocol 'cremad_ogm_split', but the spec maps it to dataset 'cremad', whose protocol is 'cremad_mlb_folds'"):
        papers.resolve_published(PUBLISHED[PUBLISHED["table"] == "Table 2"], {"ogm_ge_table2": wrong})


def test_a_number_no_spec_knows_is_refused():
    stray = PUBLISHED.head(1).assign(row="Nonexistent row")
    with pytest.raises(ValueError, match="'Nonexistent row'.* is in no paper table spec"):
        papers.resolve_published(stray, SPECS)


def _summary(dataset, rows):
    """Three folds of (method, fusion, variant, acc) per row."""
    runs = [{"dataset": dataset, "backbone": "resnet18", "fusion": fusion, "method": method, "variant": variant, "fold": fold,
             "best_epoch": 1, "acc": acc + 0.01 * (fold - 2), "macro_f1": acc, "mAP": acc + 0.02, "ece": 0.1}
            for method, fusion, variant, acc in rows for fold in (1, 2, 3)]
    return summarize(pd.DataFrame(runs))


def test_runs_meet_only_numbers_of_their_protocol():
    rows = [("joint", "late_linear", "default", 0.55), ("ogm_ge", "late_linear", "default", 0.60)]
    ogm_split = compare_published(_summary("cremad_ogm", rows), RESOLVED, "ours")
    joint_acc = ogm_split[(ogm_split["method"] == "joint") & (ogm_split["metric"] == "acc")]
    # Concatenation on CREMA-D is printed in OGM-GE Tables 1 and 2 and OLM Table 1 (51.7 each).
    assert joint_acc["published"].tolist() == [51.7, 51.7, 51.7]
    assert joint_acc["ours_mean"].iloc[0] == pytest.approx(55.0) and joint_acc["ours_std"].iloc[0] == pytest.approx(1.0)
    assert ogm_split[(ogm_split["method"] == "ogm_ge") & (ogm_split["metric"] == "mAP")]["published"].tolist() == [63.9, 63.9]
    # The same runs on MLB's folds: no number of the three papers is of that protocol.
    mlb_folds = compare_published(_summary("cremad", rows), RESOLVED, "ours")
    assert mlb_folds["published"].isna().all()
    assert mlb_folds["note"].str.contains("no published numbers under protocol 'cremad_mlb_folds'").all()
    # The embedded default is never compared.
    synthetic = compare_published(_summary("synthetic_cremad", rows), RESOLVED, "ours")
    assert synthetic["note"].str.contains("'synthetic_cremad' is not mapped to a published protocol").all()


@pytest.mark.parametrize("key", ["ogm_ge_table1", "olm_table1"])
def test_paper_table_renders_every_published_cell_with_ours_empty(key):
    spec = SPECS[key]
    table = papers.paper_table(spec, RESOLVED, pd.DataFrame())
    assert len(table) == len(spec.rows) * len(spec.columns)
    assert table["published"].notna().all()
    assert (table["n_folds"] == 0).all()
    markdown = papers.paper_markdown(spec, table)
    body = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| |")]
    assert [line.split(" | ")[0].removeprefix("| ") for line in body] == [r["label"] for r in spec.rows]
    for _, cell in table.iterrows():
        assert f"**{cell['published']:.1f}**" in markdown


def test_paper_table_puts_ours_beside_the_published_value():
    spec = SPECS["ogm_ge_table2"]
    summary = _summary("cremad_ogm", [("ogm_ge", "late_linear", "default", 0.60)])
    table = papers.paper_table(spec, RESOLVED, summary).set_index(["row", "column"])
    cell = table.loc[("OGM-GE", "CREMA-D Acc")]
    assert (cell["published"], cell["ours_mean"], cell["n_folds"]) == (61.9, pytest.approx(60.0), 3)
    assert cell["difference"] == pytest.approx(-1.9)
    markdown = papers.paper_markdown(spec, table.reset_index())
    assert "**61.9** / 60.0 ± 1.0 (3) / -1.9" in markdown
    assert "*missing*" in markdown  # Modality-Drop and Gradient-Blending are not implemented
    assert math.isnan(table.loc[("OGM-GE", "KS Acc"), "ours_mean"])


@pytest.mark.parametrize("key", sorted(SPECS))
def test_paper_config_grid_is_exactly_the_implementable_cells(key):
    spec = SPECS[key]
    config = load_yaml(ROOT / spec.config)
    assert config["analysis"]["paper_tables"] == [key]
    assert config["results"] == f"results/{key}"
    experiment = Experiment.from_files(ROOT / "config" / "config.yaml", ROOT / spec.config)
    ours = {(c.dataset, c.backbone, c.fusion, c.method, c.variant) for c in experiment.cells}
    wanted = {tuple(cell.key[f] for f in papers.KEY_FIELDS[:-1]) for cell in spec.spec_cells() if cell.key}
    assert ours == wanted
    assert {c.fold for c in experiment.cells} == {1, 2, 3}
