"""The pipeline benchmark (mmbalance.bench_pipeline) runs and prints every figure it promises,
on sizes small enough for a test. Its figures themselves are only meaningful in a real run."""

from __future__ import annotations

import re

from mmbalance import bench_pipeline


def test_data_path_prints_the_ceiling_and_every_store_path(tmp_path, capsys):
    store = bench_pipeline.write_store(tmp_path / "store", 8)
    reference = bench_pipeline.write_reference_files(tmp_path / "reference", 8)
    bench_pipeline.data_path(store, reference, 8, 4, "cpu", 0)
    out = capsys.readouterr().out
    assert "reference-style loader" in out and "ceiling: only widening" in out
    for placement in ("in memory", "streamed"):
        for kind in ("plain", "augmented"):
            assert re.search(rf"store {placement}\s+{kind}\s*:\s+\d+ samples/s", out), out


def test_startup_times_each_import_set_in_a_fresh_interpreter(capsys):
    bench_pipeline.startup(repeats=1)  # fails (check=True) if any import it names is gone
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().endswith(tuple(label for label, _ in bench_pipeline.STARTUP_STEPS))]
    assert len(lines) == len(bench_pipeline.STARTUP_STEPS)
    seconds = [float(line.split()[0]) for line in lines]
    assert seconds[1] > seconds[0]  # importing torch costs more than starting python
