# The whole set-up: `make demo` and `make test` each create .venv if missing,
# install the package (pins in constraints.txt) and run. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt

.PHONY: demo test test-quick lint install install-dev install-video clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files make repeated runs skip the install unless setup.cfg or the pins changed.
$(VENV)/.installed: $(BIN)/python setup.cfg setup.py constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev,video]'
	touch $@

$(VENV)/.installed-video: $(VENV)/.installed
	$(PIP) -e '.[video]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-video: $(VENV)/.installed-video

# The demo trains on real images, Debian's colour emoji (apt-get install fonts-noto-color-emoji), when the
# font is installed, and on synthetic shapes otherwise.
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
ifneq ($(wildcard $(EMOJI_FONT)),)
DEMO_SOURCE := emoji:noto?bg=white
DEMO_DATA := data/demo-emoji.lmdb
DEMO_HOLDOUT := 128
else
DEMO_SOURCE := synthetic:shapes?n=4096&seed=0
DEMO_DATA := data/demo-shapes.lmdb
DEMO_HOLDOUT := 256
endif

# The demo: a 4 -> 32 progressive run on CPU (about five minutes) on that LMDB,
# built on first use (`--resume` makes a second build a no-op and finishes an interrupted one),
# then an interpolation video and the evaluation JSON of that run (both in its run directory).
demo: $(VENV)/.installed-video
	@echo "demo data: $(DEMO_SOURCE)"
	$(BIN)/python -m datasets_prep build '$(DEMO_SOURCE)' $(DEMO_DATA) --max-res 32 --holdout $(DEMO_HOLDOUT) --resume
	$(BIN)/python launch/train.py --preset demo --res 32 --data $(DEMO_DATA) --out runs
	$(BIN)/python launch/export_video.py runs --grid 3x2 --seconds 8 --fps 24
	$(BIN)/python launch/evaluate.py runs --metrics recon,swd,energy,diversity --images 256

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

# The inner loop: the tests not marked slow (about a minute on 2 cores); `make test` runs them all.
test-quick: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
