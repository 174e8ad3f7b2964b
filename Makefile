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
