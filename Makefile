# medimg-spark: `make demo` and `make test` do all set-up on a fresh machine (Python 3.11+, Java 17+).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
N ?= 10000
FUZZ_SEED ?= 1
FUZZ_WORK ?= benchmarks/.cache/fuzz
# make bench: the commit benchmarks/run.py compares the current code with (--against), side by side
BENCH_AGAINST ?= f73b140

.PHONY: help java venv install install-dev demo test lint pytest integration browser ci-packages bench fuzz dist docker clean

help:
	@echo "make demo   - create $(VENV), install, run the pipeline on the bundled sample data"
	@echo "make test   - install dev dependencies, run lint (ruff, mypy) and the test suite"
	@echo "make integration - cluster (wheel only), spark-submit, viewfs:// whole-pipeline, benchmark scripts and seeded fuzz-run tests (~22 min)"
	@echo "make bench  - run the performance benchmark (benchmarks/run.py --against \$$BENCH_AGAINST, with Ray Data and Daft; hours on 2 cores)"
	@echo "              shorter (~1 h): python benchmarks/run.py --n 500 --repeats 1 --modes loop pool spark ray daft --against f73b140 --profile --out /tmp/bench"
	@echo "make fuzz   - fuzz medimg ingest with N (default 10000) mutated files (benchmarks/fuzz.py)"
	@echo "make dist   - build the wheel shipped to Spark executors (dist/)"

java:
	@command -v java >/dev/null 2>&1 || { echo "ERROR: Java 17+ is required by Spark but 'java' was not found."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
	  echo "  macOS: brew install openjdk@17 ; then put it on PATH or set JAVA_HOME"; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\(\.\([0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -1); \
	  major=$${v%% *}; [ "$$major" = "1" ] && major=$${v##* }; \
	  if [ -z "$$major" ] || [ "$$major" -lt 17 ]; then \
	    echo "ERROR: Spark needs Java 17+, found: $$(java -version 2>&1 | head -1)"; \
	    echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless (then select it with update-alternatives)"; \
	    echo "  macOS: brew install openjdk@17 ; or set JAVA_HOME to a Java 17+ installation"; exit 1; fi

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(VENV)/bin/python

install: java venv
	$(PIP) install --quiet -e '.[demo]'

install-dev: java venv
	$(PIP) install --quiet -e '.[dev,dl,itk]'

demo: install
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/medimg run --config conf/demo.yaml --out $(DEMO_OUT) --ephemeral-key
	$(VENV)/bin/medimg export --out $(DEMO_OUT) --table volumes --format nifti
	$(VENV)/bin/medimg export --out $(DEMO_OUT) --table volume_labels --format seg --ephemeral-key

lint: install-dev
	$(VENV)/bin/ruff check medimg_spark jobs tests benchmarks
	$(VENV)/bin/ruff format --check medimg_spark jobs tests benchmarks
	$(VENV)/bin/mypy medimg_spark

pytest: install-dev
	$(VENV)/bin/pytest -m "not integration" --durations=25 $(PYTEST_ARGS)

# Whole-pipeline runs on a standalone cluster (only the wheel shipped, --out on viewfs://), on a viewfs://
# lake (each compared with a local run), `medimg run` from the wheel in a fresh venv and the benchmark
# scripts' smoke runs and the seeded 520-file fuzz run: about 20 minutes on 2 cores, so not in `make test`.
integration: install-dev
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

# CI only (CI=true, root, Debian): headless Chromium for the report's rendering test and Tesseract
# (tesseract-ocr) for the OCR redaction of burned-in text; tests needing either skip without it.
CI_PACKAGES_MISSING = $$( (command -v chromium >/dev/null 2>&1 || echo chromium); (command -v tesseract >/dev/null 2>&1 || echo tesseract-ocr) )
ci-packages:
	@missing="$(CI_PACKAGES_MISSING)"; \
	if [ "$$CI" = "true" ] && [ -n "$$missing" ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian $$missing (report rendering test, OCR redaction tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || echo "$$missing install failed; tests that need it are skipped"; fi

browser: ci-packages

test: lint ci-packages pytest

bench: install-dev
	$(PIP) install --quiet -e '.[bench]'
	$(PY) benchmarks/run.py --against $(BENCH_AGAINST) --profile
	$(PY) benchmarks/transport.py --n 2000
	$(PY) benchmarks/denoise.py --jobs 2

# Fuzz `medimg ingest` with N seeded mutations of real files; report in $(FUZZ_WORK)/fuzz_report.json.
fuzz: install-dev
	$(PY) benchmarks/fuzz.py --n $(N) --seed $(FUZZ_SEED) --work $(FUZZ_WORK)

dist: venv
	rm -rf dist build && $(PIP) wheel --quiet --no-deps --wheel-dir dist .
	@echo "wheel for spark-submit --py-files: $$(ls dist/*.whl)"

docker:
	@command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 || { echo "make docker needs a running Docker engine"; exit 1; }
	docker build -f docker/Dockerfile -t medimg-spark:latest .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(DEMO_OUT)
