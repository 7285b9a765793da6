# Two commands on a fresh machine with Python 3.11 and make: `make demo`, `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UBP := $(BIN)/ubp-edge

.PHONY: install demo test bench bench-compare clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# tf-keras declares a dependency on the full `tensorflow` wheel (572 MB); tensorflow-cpu
# provides the same modules, so tf-keras goes in without its dependencies.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps tf-keras==2.21.0
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on the embedded default: a seeded synthetic log.
demo: install
	rm -rf demo
	$(UBP) data generate demo/sessions.csv --seed 0
	$(UBP) data generate demo/holdout.csv --seed 1
	$(UBP) data inspect demo/sessions.csv
	$(UBP) train --data demo/sessions.csv --out demo/run
	$(UBP) convert demo/run
	$(UBP) score --model demo/run/model-float32.tflite --data demo/holdout.csv --out demo/holdout-scores.jsonl
	$(UBP) segment --model demo/run/model-float32.tflite --data demo/holdout.csv --out demo/holdout-tiers.csv
	$(UBP) explain --model demo/run/model-float32.tflite --data demo/holdout.csv --sessions 1 --report demo/explain
	$(UBP) evaluate demo/run/model-float32.tflite --data demo/holdout.csv

# Lint first (ruff, configured in pyproject.toml): a style error fails the build like a test.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# pytest-benchmark suites (encode, score one session, score_encoded in batches of 64 and 256,
# score_sessions on a batch, live push beside the step graph's bare invoke, load) over
# models/*.tflite, plus every artifact of UBP_EDGE_BENCH_RUN=runs/NAME when set; each run is
# saved under .benchmarks/. Then this machine's floor for one session's work, one core
# (benchmarks/floor.py: table on the terminal, JSON in .benchmarks/floor.json).
bench: install
	cd benchmarks && ../$(BIN)/python -m pytest -q -p no:cacheprovider --benchmark-autosave \
		--benchmark-storage=../.benchmarks --benchmark-columns=median,iqr,ops,rounds \
		--benchmark-sort=name --benchmark-group-by=group .
	$(BIN)/python -m benchmarks.floor > .benchmarks/floor.json

# Compare the last two saved runs, figure by figure.
bench-compare: install
	$(BIN)/pytest-benchmark --storage .benchmarks compare --columns=median,iqr --group-by=group \
		$$(ls .benchmarks/*/ | sort | tail -n 2 | sed 's/_.*//')

clean:
	rm -rf demo .pytest_cache
