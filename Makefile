# Every install step lives here: a fresh machine needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torchattacks declares torchvision but never imports it, and the torchvision pip finds fails beside the
# CPU torch wheel (operator torchvision::nms does not exist); transformers imports torchvision whenever it
# is installed, so every install step ends by removing it (pyproject keeps torchattacks' own requirements).
NO_TORCHVISION := $(PIP) uninstall --disable-pip-version-check -q -y torchvision
# The mlflow extra (pyproject says why) after the project, by the names pyproject lists: pip then reports
# torchattacks' requests pin as a conflict, as it reports its torchvision.
MLFLOW_EXTRA := $(PIP) install --disable-pip-version-check -q -c constraints.txt $$($(PY) -c "import tomllib; \
	print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['mlflow']))")

.PHONY: install install-bench install-browser demo test bench study-variants clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -c constraints.txt -e '.[test,hf]'
	$(MLFLOW_EXTRA)
	$(NO_TORCHVISION)
	touch $(STAMP)

install-bench: install
	$(PIP) install --disable-pip-version-check -q -c constraints.txt -e '.[test,hf,bench]'
	$(MLFLOW_EXTRA)
	$(NO_TORCHVISION)

# Debian's chromium for the browser test (tests/test_browser.py, marker `browser`): it opens the reports
# headless and offline over the DevTools pipe, so no Python driver and no browser download are needed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

demo: install
	$(VENV)/bin/audit demo --out out/demo

test: install
	$(PY) -m pytest -q -n 2

bench: install
	$(PIP) install --disable-pip-version-check -q -c constraints.txt -e '.[bench]'
	$(MLFLOW_EXTRA)
	$(NO_TORCHVISION)
	OMP_NUM_THREADS=2 $(PY) -m bench.run

# the attention-variants study (docs/detectors.md, "Attention variants"): resumable, one torch thread per run, a run per core
STUDY_OPTIONS ?=
study-variants: install
	OMP_NUM_THREADS=1 $(PY) -m bench.study_variants --out out/study-variants $(STUDY_OPTIONS)

clean:
	rm -rf out .pytest_cache build *.egg-info
