# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs
# what it needs on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/convert-leads
DEMO_DATA  ?= data/demo
DEMO_LEADS ?= 20000
DEMO_AS_OF ?= 2026-01-01
DEMO_CRM   ?= sqlite:///data/crm.db
DEMO_REPORT ?= reports/demo-report.html
DEMO_REPS ?= 8
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
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DEMO_DATA)/leads.csv: | $(VENV)/.installed
	$(CLI) generate --out $(DEMO_DATA) --leads $(DEMO_LEADS) --seed 42 --reps $(DEMO_REPS)

demo: $(VENV)/.installed $(DEMO_DATA)/leads.csv
	$(CLI) validate --data $(DEMO_DATA)
	$(CLI) train --data $(DEMO_DATA)
	$(CLI) promote
	$(CLI) score --data $(DEMO_DATA) --as-of $(DEMO_AS_OF) --out $(DEMO_CRM) --top 10
	$(CLI) report --data $(DEMO_DATA) --as-of $(DEMO_AS_OF) --out $(DEMO_REPORT)
	@if [ -f $(DEMO_DATA)/reps.csv ]; then \
	  $(CLI) allocate --data $(DEMO_DATA) --scores $(DEMO_CRM) --reps $(DEMO_DATA)/reps.csv --out $(DEMO_CRM) \
	    --compare-effects $(DEMO_DATA)/rep_effects.csv; \
	else echo "no $(DEMO_DATA)/reps.csv (DEMO_REPS=0, or data generated before reps): allocation skipped; make clean && make demo"; fi

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
	rm -rf $(DEMO_DATA) data/crm.db mlflow.db mlruns rejects.csv reports
