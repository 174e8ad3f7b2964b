# make run   create the environment (first time) and run the default grid via DVC
# make test  create the environment (first time) and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Rules call `python -m mmbalance`: the environment's bin/ must come first.
export PATH := $(BIN):$(PATH)

.PHONY: install run test lint dry-run report restore docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(STAMP)

run: install
	dvc repro

test: install
	pytest

lint: install
	snakemake --lint

dry-run: install
	snakemake -n

report: install
	snakemake --report results/report.html

docs: install
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict

# After `dvc pull` (a fresh clone with a DVC remote): restored files are newer
# than their consumers, so mark them up to date instead of retraining.
restore: install
	dvc pull
	snakemake --touch

clean:
	rm -rf results logs benchmarks resources/raw .snakemake site

# SLURM (docs/guides/slurm.md). slurm-check: this config and profiles/slurm against the
# cluster (accounting, MinJobAge, whether a training job fits a node); CONFIG=<file> adds a config.
.PHONY: slurm-check slurm-cluster slurm-cluster-stop test-slurm
slurm-check: install
	python -m mmbalance slurm-check --configfile config/config.yaml $(CONFIG)

# A one-node test cluster on this machine (Debian 12, root): fake GPUs, no accounting.
slurm-cluster:
	ci/slurm-one-node.sh start

slurm-cluster-stop:
	ci/slurm-one-node.sh stop

# The SLURM tests alone (they start and stop a cluster when none answers and this is root).
test-slurm: install
	pip install -q -e '.[slurm]'
	pytest tests/test_slurm.py
