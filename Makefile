# One-command set-up: every target installs first when .venv is missing or stale.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow demo lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Toy data (generated on first use) -> 7 minutes of CPU training of the toy ART-V (conf/experiment/demo.yaml) ->
# four prompts (four directions, four colours) -> mp4s, a captioned contact sheet and the scorer's table.
DEMO_RUN := logs/train/runs/demo
DEMO_OUT := outputs/demo
DEMO_PROMPTS := ["a red circle moving left","a green square moving right","a blue circle moving up","a yellow square moving down"]
demo: $(STAMP)
	rm -rf $(DEMO_RUN) $(DEMO_OUT)
	$(PY) train.py experiment=demo validate=false hydra.run.dir=$(DEMO_RUN)
	$(PY) sample.py ckpt_path=$(DEMO_RUN)/checkpoints/last.ckpt 'prompt=$(DEMO_PROMPTS)' seeds=[0] \
		sampler.progress=false output_dir=$(DEMO_OUT) hydra.run.dir=$(DEMO_OUT)/hydra
	$(PY) -m datamodules.toy_report $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) outputs logs data
