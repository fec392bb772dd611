# The two commands a user needs: `make demo` and `make test`. Both install on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch pin lives here, not in pyproject.toml: these two lie on the machine's disk (see ../shared/STACK.md).
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR := cpu

# Shipped demo weights: made by `make train-demo` (both stages with accelerate, single process).
WEIGHTS ?= weights/segicl-tiny
STAGE1_STEPS ?= 1200
STAGE2_STEPS ?= 2400
STAGE2_MINUTES ?= 50
# Stage 2b continues stage 2 on structures of >= 64 px (the evaluated range) with the frozen decoder's
# reconstruction loss on the predicted tokens added (runs/ab comparison in the README).
STAGE2B_STEPS ?= 1400
STAGE2B_MINUTES ?= 85
TRAIN_DIR ?= runs/train-demo
LAUNCH := $(VENV)/bin/accelerate launch --config_file accelerate_config.yaml

.PHONY: install system-data demo test clean-cache train-demo

install: $(VENV)/.installed system-data

# The stamp depends on pyproject.toml: editing dependencies reinstalls, a second `make install` only checks.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[dev]' $(TORCH_PIN)
	touch $@

# Debian's mricron-data carries the Colin27 head and its atlases (../shared/DATA.md).
system-data:
	@if [ ! -f /usr/share/mricron/templates/ch2.nii.gz ]; then \
		echo "installing Debian package mricron-data (Colin27 + atlases)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mricron-data >/dev/null; \
	fi

demo: install
	$(VENV)/bin/segicl demo

test: install
	$(PY) -m pytest -q tests

# Long: hours on 2 CPU cores. Re-running resumes both stages from their last checkpoints.
train-demo: install
	$(LAUNCH) stages/stage1_decoder.py --output-dir $(TRAIN_DIR)/stage1 --steps $(STAGE1_STEPS) --resume
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage1/model --output-dir $(TRAIN_DIR)/stage2 \
		--steps $(STAGE2_STEPS) --max-minutes $(STAGE2_MINUTES) --resume
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage2/model --output-dir $(TRAIN_DIR)/stage2b \
		--min-area 64 --decoder-loss-weight 1 --warmup-steps 20 \
		--steps $(STAGE2B_STEPS) --max-minutes $(STAGE2B_MINUTES) --resume
	$(PY) -m segicl.export $(TRAIN_DIR)/stage2b/model $(WEIGHTS)

clean-cache:
	rm -rf .cache/segicl
