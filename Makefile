# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs
# what it needs on a fresh machine with Python 3.11+ and make.
# `make demo` is `dvc repro`: the demo's stages are defined once, in dvc.yaml (README, "Set-up").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/convert-leads
DVC    := $(BIN)/dvc
# LightGBM's OpenMP threads sleep instead of spinning between parallel regions: on a shared
# or busy machine spinning makes small fits 10-100x slower; on an idle one sleeping costs little.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install install-dev lint bench realdata clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-pipeline

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-pipeline: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[pipeline]'
	touch $@ $(VENV)/.installed

# dvc needs its .dvc folder (committed) and git, or core.no_scm outside a git checkout (a tarball);
# the stages call convert-leads, so the venv's bin comes first on PATH. A second run runs no stage.
demo: $(VENV)/.installed-pipeline
	@test -d .dvc || $(DVC) init --no-scm -q
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || $(DVC) config --local core.no_scm true
	PATH="$(CURDIR)/$(BIN):$$PATH" $(DVC) repro

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(VENV)/.installed-dev lint
	bash tests/setup-services.sh
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/features.py

# The README's results on real public datasets (flat mode, through the CLI, committed mappings).
DATASETS ?= ../shared/datasets
REALDATA ?= reports/realdata
REAL_TRAIN = MLFLOW_TRACKING_URI=sqlite:///$(REALDATA)/mlflow.db $(CLI) train --rejects $(REALDATA)/rejects.csv
realdata: $(VENV)/.installed
	@test -d "$(DATASETS)" || { echo "$(DATASETS) is absent: the real datasets are not on this machine"; exit 1; }
	rm -rf $(REALDATA) && mkdir -p $(REALDATA)
	$(REAL_TRAIN) --data "$(DATASETS)/x_education_leads/Leads.csv" --mapping docs/mappings/x_education_leads.yaml \
	  --model-name realdata-x-education --summary $(REALDATA)/x_education_leads.json
	$(REAL_TRAIN) --data "$(DATASETS)/uci_bank_marketing/bank-additional-full.csv" --mapping docs/mappings/uci_bank_marketing.yaml \
	  --model-name realdata-bank --summary $(REALDATA)/uci_bank_marketing.json
	$(REAL_TRAIN) --data "$(DATASETS)/uci_bank_marketing/bank-additional-full.csv" --mapping docs/mappings/uci_bank_marketing.yaml \
	  --split random --model-name realdata-bank-random --summary $(REALDATA)/uci_bank_marketing_random_split.json
	$(REAL_TRAIN) --data "$(DATASETS)/uci_online_shoppers/online_shoppers_intention.csv" --mapping docs/mappings/uci_online_shoppers.yaml \
	  --model-name realdata-online-shoppers --summary $(REALDATA)/uci_online_shoppers.json
	$(BIN)/python -m convert.analysis.realdata $(REALDATA) > $(REALDATA)/results.md
	cat $(REALDATA)/results.md

clean:
	rm -rf data/demo data/features data/crm.db models/lead-conversion dvc.lock mlflow.db mlruns rejects.csv reports
