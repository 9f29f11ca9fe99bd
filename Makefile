# The whole setup on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/facesortd.yaml
# glibc returns torch's large activation buffers to the kernel after every forward and faults them
# back in on the next one; these tunables keep them mapped (big batches run ~4x faster on CPU).
export GLIBC_TUNABLES := glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184

.PHONY: run test lint install install-test chromium exiftool bench clean-state

$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dlib]'   # dlib: the model that works offline (embedder.name: auto)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dlib,test]'
	touch $@

# The browser test drives Debian's chromium through Playwright (never `playwright install`: no
# internet). As root with apt (CI), install it when missing; elsewhere say how.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends chromium fonts-liberation \
	      || { apt-get update && apt-get install -y --no-install-recommends chromium fonts-liberation; }; \
	  else \
	    echo "chromium is missing: apt-get install chromium (the browser test needs it)" >&2; \
	  fi; \
	fi

# The XMP sidecar test reads the sidecars with exiftool (Debian's libimage-exiftool-perl), a reader
# facesortd did not write; as root with apt (CI), install it when missing; elsewhere say how.
exiftool:
	@if ! command -v exiftool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends libimage-exiftool-perl \
	      || { apt-get update && apt-get install -y --no-install-recommends libimage-exiftool-perl; }; \
	  else \
	    echo "exiftool is missing: apt-get install libimage-exiftool-perl (the XMP test needs it)" >&2; \
	  fi; \
	fi

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test chromium exiftool

run: install
	$(VENV)/bin/facesortd run --config $(CONFIG)

# The layering (pyproject's import-linter contracts: no import cycle, no upward import) and the lint
# (ruff: pyflakes, import order, bugbear) run before the tests; either failing fails `make test`.
lint: install-test
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check facesortd tests tools

test: install-test lint
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	  exit $$rc

bench: install
	$(VENV)/bin/facesortd bench ingest --mode aligned --embedder facenet
