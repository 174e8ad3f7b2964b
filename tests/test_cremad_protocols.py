"""CREMA-D's two protocols: the OGM-GE split files with a stratified validation
list, and the check that a split file has the published sizes."""

import itertools
from collections import Counter

import pytest

from mmbalance.data.catalog import check_counts
from mmbalance.data.datasets import cremad


def names(count, emotions=cremad.EMOTIONS):
    combos = itertools.product(range(1001, 1092), cremad.SENTENCES, emotions, cremad.LEVELS)
    return [f"{a}_{s}_{e}_{lvl}" for a, s, e, lvl in itertools.islice(combos, count)]


def test_ogm_split_file_is_read_with_its_bom_and_crlf(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("\ufeff1001_DFA_ANG_XX,ANG\r\n1001_DFA_DIS_XX,DIS\r\n\r\n".encode())
    assert cremad.read_ogm_split(path) == ["1001_DFA_ANG_XX", "1001_DFA_DIS_XX"]


@pytest.mark.parametrize("line, message", [
    ("1001_DFA_ANG_XX,SAD", "train.csv:2: clip 1001_DFA_ANG_XX is labelled SAD, but its name says ANG"),
    ("1001_DFA_ANG_XX", "train.csv:2: expected 'name,EMOTION'"),
    ("1001_DFA_ANGRY_XX,ANG", "is not of the CREMA-D form"),
])
def test_a_bad_row_is_named_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.csv"
    path.write_text(f"1001_DFA_DIS_XX,DIS\r\n{line}\r\n")
    with pytest.raises(ValueError, match=message):
        cremad.read_ogm_split(path)


def test_validation_is_a_stratified_tenth_of_train_and_test_is_untouched():
    train, test = names(600), names(660)[600:]
    folds = cremad.ogm_protocol_folds(train, test, seed=3)["1"]
    val_counts = Counter(cremad.parse_clip_name(n)["emotion"] for n in folds["val"])
    train_counts = Counter(cremad.parse_clip_name(n)["emotion"] for n in train)
    assert val_counts == {e: round(0.1 * train_counts[e]) for e in cremad.EMOTIONS}
    assert not set(folds["val"]) & set(folds["train"]) and set(folds["val"]) | set(folds["train"]) == set(train)
    assert folds["test"] == test
    assert cremad.ogm_protocol_folds(train, test, seed=3)["1"]["val"] == folds["val"]
    assert cremad.ogm_protocol_folds(train, test, seed=4)["1"]["val"] != folds["val"]


def test_train_and_test_must_not_share_clips():
    with pytest.raises(ValueError, match="1 clips are in both train and test"):
        cremad.ogm_protocol_folds(names(10), names(11)[9:])


def test_the_published_sizes_pass_and_others_stop_the_run(tmp_path):
    all_names = names(7442)
    folds = cremad.ogm_protocol_folds(all_names[:6698], all_names[6698:])
    as_sets = {1: {split: set(members) for split, members in folds["1"].items()}}
    check_counts("cremad", *cremad.fold_sizes(as_sets, "ogm"), str(tmp_path / "splits.json"))
    per_class = Counter(cremad.parse_clip_name(n)["emotion"] for n in all_names[:6698])
    assert len(as_sets[1]["val"]) == sum(round(0.1 * c) for c in per_class.values()) and len(as_sets[1]["test"]) == 744

    mlb = {k: {"train": set(names(a)), "val": set(names(b)), "test": set(names(c))}
           for k, (a, b, c) in cremad.EXPECTED_COUNTS["mlb"].items()}
    check_counts("cremad", *cremad.fold_sizes(mlb, "mlb"), str(tmp_path / "data_splits_VALV.json"))
    mlb[2]["test"].pop()
    del mlb[3]
    with pytest.raises(ValueError) as error:
        check_counts("cremad", *cremad.fold_sizes(mlb, "mlb"), str(tmp_path / "data_splits_VALV.json"))
    message = str(error.value)
    assert "data_splits_VALV.json does not hold the published split" in message
    assert "fold 2 train/val/test: (4024, 881, 914) where the paper's split has (4024, 881, 915)" in message
    assert "fold 3 train/val/test: missing where the paper's split has (4017, 869, 934)" in message
