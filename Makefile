# The README's two commands.  Both do all set-up on a fresh machine (system
# packages, .venv, the package with its test extras) and are idempotent: the
# install step reruns only when the build inputs change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.synfast-installed
# The package's directories are inputs too: a module added or removed must be
# linked into (or out of) the strict editable install's tree.
BUILD_INPUTS := pyproject.toml setup.py $(wildcard ext/*/*.pyx ext/*/*.pxd ext/*/*.pxi ext/*/*.h) \
                $(filter-out %/__pycache__/,$(wildcard synfast synfast/*/))

.PHONY: demo test sysdeps install lint bench clean

demo: install
	$(PY) bench/demo.py

test: install
	$(PY) -m pytest

# Byte-compile as a regular (non-editable) install does, even where
# PYTHONDONTWRITEBYTECODE is set: every synfast command starts faster.  Run on
# every install (it skips what is current), so an edited module is not left to
# be compiled again by every command.
install: sysdeps $(STAMP)
	@$(PY) -m compileall -q synfast build/__editable__.* >/dev/null

sysdeps:
	@bash .ci/sysdeps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# An editable install in setuptools' strict mode: a tree of links to the
# sources under build/__editable__.*, put on sys.path by a plain .pth entry.
# The default (lenient) mode adds an import hook that costs every command
# 17 ms.  PYTHONWARNINGS hides only strict mode's notice naming that tree.
$(STAMP): $(BUILD_INPUTS) | $(PY)
	PYTHONWARNINGS="ignore:Editable installation" \
	    $(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=strict
	@touch $@

lint: install
	$(VENV)/bin/ruff check synfast tests bench setup.py

bench: install
	PYTHONWARNINGS="ignore:Editable installation" \
	    $(PY) -m pip install -q -e '.[test,bench]' --config-settings editable_mode=strict
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info synfast/*/*.so ext/*/*.c .pytest_cache .hypothesis $(STAMP)
