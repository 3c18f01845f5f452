# Two entry points: `make demo` sets up and runs the main job, `make test`
# sets up and runs the test suite. Each creates the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
NUM_WORKERS ?= 4
AUDIO_DIR ?=
DEMO_DIR := var/demo-audio
PYTEST_ARGS ?=

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,silero]"
	# The Silero VAD model file for the tests; --no-deps keeps torch out.
	$(BIN)/python -m pip install --quiet --no-deps silero-vad
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/python manage.py migrate --no-input --verbosity 0
ifeq ($(strip $(AUDIO_DIR)),)
	$(BIN)/python manage.py make_demo_audio $(DEMO_DIR)
	$(BIN)/python manage.py import_audio $(DEMO_DIR)
else
	$(BIN)/python manage.py import_audio "$(AUDIO_DIR)"
endif
	$(BIN)/python manage.py prepare_audio --num_workers $(NUM_WORKERS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var/output var/demo-audio var/*.sqlite3*
