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

# Toy data (generated on first use) -> a short CPU training run of the tiny SCVideo -> one sample video, scored.
DEMO_RUN := logs/train/runs/demo
demo: $(STAMP)
	$(PY) train.py experiment=toy_scvideo trainer.max_steps=300 trainer.max_time=null validate=false \
		callbacks.video_samples.every_n_steps=0 hydra.run.dir=$(DEMO_RUN)
	$(PY) sample.py experiment=toy_scvideo ckpt_path=$(DEMO_RUN)/checkpoints/last.ckpt prompt="a red circle moving left" \
		seeds=[0] output_dir=outputs/demo hydra.run.dir=outputs/demo/hydra
	$(PY) -m datamodules.toy_scorer outputs/demo/a-red-circle-moving-left_seed0.mp4

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
