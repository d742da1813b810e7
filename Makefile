# The README's two commands.  Both do all set-up on a fresh machine (system
# packages, .venv, the package with its test extras) and are idempotent: the
# install step reruns only when the build inputs change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.synfast-installed
BUILD_INPUTS := pyproject.toml setup.py $(wildcard ext/*/*.pyx ext/*/*.pxd ext/*/*.pxi ext/*/*.h)

.PHONY: demo test sysdeps install lint bench clean

demo: install
	$(PY) bench/demo.py

test: install
	$(PY) -m pytest

install: sysdeps $(STAMP)

sysdeps:
	@bash .ci/sysdeps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# compat: a .pth entry instead of an import hook, which cost every command 17 ms.
$(STAMP): $(BUILD_INPUTS) | $(PY)
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@# Byte-compile as a regular (non-editable) install does, even where
	@# PYTHONDONTWRITEBYTECODE is set: every synfast command starts faster.
	$(PY) -m compileall -q synfast >/dev/null
	@touch $@

lint: install
	$(VENV)/bin/ruff check synfast tests bench setup.py

bench: install
	$(PY) -m pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info synfast/*/*.so ext/*/*.c .pytest_cache .hypothesis
