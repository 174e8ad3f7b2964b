"""The checks every dataset module shares (mmbalance.data.catalog), on hand-computed cases:
the validation carver with each dataset's count rule, the missing-clip check, the split-count check."""

from __future__ import annotations

import random

import pytest

from mmbalance.data.catalog import VALIDATION_COUNTS, SplitMismatchError, carve_validation, check_counts, check_missing

# --------------------------------------------------------------------------- carve_validation


@pytest.mark.parametrize("rule, fraction, n, expected", [
    # CREMA-D (OGM-GE split): Python's round, halves to even.
    ("round", 0.1, 5, 0), ("round", 0.1, 15, 2), ("round", 0.25, 10, 2), ("round", 0.1, 1166, 117),
    # UCF101: at least one group of a class that has two, none of a class with one.
    ("at_least_one", 0.1, 1, 0), ("at_least_one", 0.1, 2, 1), ("at_least_one", 0.1, 25, 2), ("at_least_one", 0.1, 18, 2),
    # VGGSound: never a class's last YouTube id.
    ("keep_one_in_train", 0.1, 1, 0), ("keep_one_in_train", 0.5, 2, 1), ("keep_one_in_train", 0.9, 2, 1),
    ("keep_one_in_train", 0.9, 3, 2), ("keep_one_in_train", 0.1, 35, 4),
])
def test_each_datasets_count_rule(rule, fraction, n, expected):
    assert VALIDATION_COUNTS[rule](fraction, n) == expected


def test_one_seeded_draw_per_class_in_label_order_from_sorted_units():
    # Listed out of order: the carver sorts the units of each class and goes through the labels 0, 1.
    train = [("b2", 1), ("a3", 0), ("b1", 1), ("a1", 0), ("a4", 0), ("a2", 0)]
    rng = random.Random(7)
    expected = set(rng.sample(["a1", "a2", "a3", "a4"], 2)) | set(rng.sample(["b1", "b2"], 1))
    assert carve_validation(train, 0.5, 7, "round") == expected
    assert len(expected) == 3


def test_a_group_counts_once_for_the_class_most_of_its_clips_have():
    # ytid "a": labels 1, 1, 0 -> class 1; "b": 0 and 2 tie -> the lowest, class 0; "c": class 0.
    train = [("a", 1), ("a", 1), ("a", 0), ("b", 2), ("b", 0), ("c", 0)]
    # Fraction 1 with keep_one_in_train: each class gives all its units but one. Class 0 has {b, c}
    # and gives one of them; class 1 has only "a" and keeps it (had "b" gone to class 2, nothing would be drawn).
    chosen = carve_validation(train, 1.0, 0, "keep_one_in_train")
    assert len(chosen) == 1 and chosen <= {"b", "c"}


def test_the_draw_returns_units_and_depends_only_on_the_seed():
    train = [(f"g{i:02d}", i % 3) for i in range(30)] * 2  # two clips per group
    first = carve_validation(train, 0.2, 5, "at_least_one")
    assert len(first) == 3 * 2 and all(unit.startswith("g") for unit in first)  # 10 groups per class -> 2 each
    assert carve_validation(list(reversed(train)), 0.2, 5, "at_least_one") == first
    assert carve_validation(train, 0.2, 6, "at_least_one") != first


def test_an_unknown_rule_is_a_key_error():
    with pytest.raises(KeyError):
        carve_validation([("a", 0)], 0.1, 0, "floor")


# --------------------------------------------------------------------------- check_missing


def test_a_share_above_the_limit_names_the_split_its_counts_and_examples():
    with pytest.raises(SplitMismatchError) as error:
        check_missing("ks", {"train": ["x"], "test": []}, {"train": 4, "test": 10}, "/raw/k400", "finish the download",
                      max_fraction=0.2)
    assert str(error.value) == ("ks: train: 1 of 4 clips have no media (25.0%), e.g. ['x'] under /raw/k400 "
                                "(more than max_missing_fraction 20.0%); finish the download")


def test_a_share_at_the_limit_passes():
    check_missing("ks", {"train": ["x"]}, {"train": 5}, "/m", "", max_fraction=0.2)
    check_missing("ks", {"train": []}, {"train": 0}, "/m", "", max_fraction=0.0)


def test_every_failing_part_is_named():
    with pytest.raises(SplitMismatchError, match=r"ks: train: 2 of 4 .*\['a', 'b'\]; test: 1 of 2 .*\['c'\] under"):
        check_missing("ks", {"train": ["a", "b"], "val": [], "test": ["c"]}, {"train": 4, "val": 3, "test": 2}, "/m", "",
                      max_fraction=0.1)


def test_a_count_limit_with_its_own_error_type_and_examples():
    check_missing("AVE", {"split files": ["v1"]}, {"split files": 10}, "/ave/AVE", "", max_count=1)
    with pytest.raises(FileNotFoundError) as error:
        check_missing("AVE", {"split files": ["v1", "v2"]}, {"split files": 10}, "/ave/AVE", "Re-run the download.",
                      max_count=1, examples=1, error=FileNotFoundError)
    assert str(error.value) == ("AVE: split files: 2 of 10 clips have no media (20.0%), e.g. ['v1'] under /ave/AVE "
                                "(at most 1 allowed); Re-run the download.")


# --------------------------------------------------------------------------- check_counts


def test_counts_that_match_pass_and_none_is_not_checked():
    check_counts("ds", {"train": 10, "val": 3}, {"train": 10, "val": None}, "lists.txt")


def test_every_difference_is_named_with_the_file_and_the_advice():
    with pytest.raises(SplitMismatchError) as error:
        check_counts("ds", {"train": 9}, {"train": 10, "test": 5}, "lists.txt", "Fetch it again.")
    assert str(error.value) == ("ds: lists.txt does not hold the published split (train: 9 where the paper's split has 10; "
                                "test: None where the paper's split has 5). Fetch it again.")


def test_per_fold_tuples_as_cremad_gives_them():
    with pytest.raises(SplitMismatchError) as error:
        check_counts("cremad", {"fold 1 train/val/test": (4043, 878, 899), "fold 3 train/val/test": "missing"},
                     {"fold 1 train/val/test": (4043, 878, 899), "fold 3 train/val/test": (4017, 869, 934)}, "folds.json")
    assert "(fold 3 train/val/test: missing where the paper's split has (4017, 869, 934))." in str(error.value)
    assert "fold 1" not in str(error.value)
