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
# Stage 2c switches the example prior on (a gate, predicted by the LLM, over the condition tokens of the
# union of the example masks) and names the structure with a made-up name in half the episodes that have
# examples, so that the examples are the only cue there (README: "Reading the examples").
STAGE2C_STEPS ?= 1500
STAGE2C_MINUTES ?= 60
# Stage 2d makes the in-context module (a UniverSeg-style CrossConv network, trained alone by `make train-crossconv`:
# the peer of `segicl bench quality`) the example prior's source instead of the union of the examples, and adds
# queries without the structure (ABSENT_PROB) so that whole volumes' empty slices stay empty (README: "Peers").
STAGE2D_STEPS ?= 700
STAGE2D_MINUTES ?= 30
# Stage 2i: the stage-2d recipe again with the peer trained for the chain's CPU time (train-crossconv's last export)
# as the prior, registered examples entering it from 4 examples on (chosen on training structures: README "Peers").
STAGE2I_STEPS ?= 700
STAGE2I_MINUTES ?= 30
ABSENT_PROB ?= 0.15
CROSSCONV_STEPS ?= 9000
CROSSCONV_MINUTES ?= 80
# Its two continuations on fresh episodes (seeds 2 and 3) to the CPU time of SegICL's stage-2 chain.
CROSSCONV2_STEPS ?= 6500
CROSSCONV2_MINUTES ?= 92
CROSSCONV3_STEPS ?= 2300
CROSSCONV3_MINUTES ?= 33
CROSSCONV_WEIGHTS ?= weights/crossconv-tiny
TRAIN_DIR ?= runs/train-demo
CROSSCONV_80MIN ?= $(TRAIN_DIR)/crossconv-80min
LAUNCH := $(VENV)/bin/accelerate launch --quiet --config_file accelerate_config.yaml

.PHONY: install upgrade-lock system-data system-browser demo test serve clean-cache train-demo train-crossconv

install: $(VENV)/.installed system-data system-browser

# Every install goes through the lock (requirements/constraints.txt: the exact versions the suite passed with), so a
# fresh machine gets what CI tested, not last night's releases. The stamp depends on pyproject.toml and the lock:
# editing either reinstalls, a second `make install` only checks.
LOCK := requirements/constraints.txt
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet $$(grep '^pip==' $(LOCK))
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet --constraint $(LOCK) -e '.[dev]' $(TORCH_PIN)
	touch $@

# Newest releases that pyproject.toml allows, in a throwaway venv; the lock is rewritten only if the whole suite
# passes there (README: "Dependencies and the lock").
upgrade-lock: system-data system-browser
	bash requirements/upgrade-lock.sh "$(TORCH_PIN)"

# $(call apt_install,FILE,PACKAGE,WHY): the Debian package, only when FILE is missing (needs root or sudo).
apt_install = @if [ ! -e $(1) ]; then \
		echo "installing Debian package $(2) ($(3))"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2) >/dev/null; \
	fi

# Debian's mricron-data carries the Colin27 head and its atlases (../shared/DATA.md).
system-data:
	$(call apt_install,/usr/share/mricron/templates/ch2.nii.gz,mricron-data,Colin27 + atlases)

# Debian's chromium runs the web app's browser test (tests/commands/test_serve.py, driven by Playwright from PyPI;
# `playwright install`, which downloads a browser, is never needed).
system-browser:
	$(call apt_install,/usr/bin/chromium,chromium,the web app's browser test)

demo: install
	$(VENV)/bin/segicl demo

test: install
	$(PY) -m pytest -q tests

# The web app (README "Web app"): http://127.0.0.1:7860, offline, on the shipped weights; SERVE_ARGS="--port 8000 ...".
SERVE_ARGS ?=
serve: install
	$(VENV)/bin/segicl serve $(SERVE_ARGS)

# Long: hours on 2 CPU cores. Re-running resumes both stages from their last checkpoints.
train-demo: install train-crossconv
	$(LAUNCH) stages/stage1_decoder.py --output-dir $(TRAIN_DIR)/stage1 --steps $(STAGE1_STEPS) --resume
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage1/model --output-dir $(TRAIN_DIR)/stage2 \
		--steps $(STAGE2_STEPS) --max-minutes $(STAGE2_MINUTES) --resume
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage2/model --output-dir $(TRAIN_DIR)/stage2b \
		--min-area 64 --decoder-loss-weight 1 --warmup-steps 20 \
		--steps $(STAGE2B_STEPS) --max-minutes $(STAGE2B_MINUTES) --resume
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage2b/model --output-dir $(TRAIN_DIR)/stage2c \
		--example-prior --anonymous-name-prob 0.5 --min-area 64 --decoder-loss-weight 1 --warmup-steps 20 \
		--steps $(STAGE2C_STEPS) --max-minutes $(STAGE2C_MINUTES) --checkpoint-every 250 --resume
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage2c/model --output-dir $(TRAIN_DIR)/stage2d \
		--crossconv $(CROSSCONV_80MIN) --absent-prob $(ABSENT_PROB) --anonymous-name-prob 0.5 --min-area 64 \
		--decoder-loss-weight 1 --warmup-steps 20 --steps $(STAGE2D_STEPS) --max-minutes $(STAGE2D_MINUTES) \
		--checkpoint-every 100 --prior-registration-weight 0.5 --examples-check-the-llm --resume
	$(VENV)/bin/segicl export $(TRAIN_DIR)/stage2d/model $(TRAIN_DIR)/stage2d-export
	$(LAUNCH) stages/stage2_encoder.py --init $(TRAIN_DIR)/stage2d-export --output-dir $(TRAIN_DIR)/stage2i \
		--crossconv $(CROSSCONV_WEIGHTS) --absent-prob $(ABSENT_PROB) --anonymous-name-prob 0.5 --min-area 64 \
		--decoder-loss-weight 1 --warmup-steps 20 --steps $(STAGE2I_STEPS) --max-minutes $(STAGE2I_MINUTES) \
		--checkpoint-every 100 --prior-registration-weight 0.5 --prior-registration-min-examples 4 \
		--examples-check-the-llm --resume
	$(VENV)/bin/segicl export $(TRAIN_DIR)/stage2i/model $(WEIGHTS)

# The CrossConv peer / in-context module, on one thread for the CPU time of SegICL's stage-2 chain (about 205 min):
# 80 min, exported (float16: the 80-min network is stage 2d's prior), then continued twice on fresh episodes (seeds
# 2 and 3, 92 and 33 min), exported to weights/crossconv-tiny (float16), stage 2i's prior and the benchmarks' peer.
train-crossconv: install
	OMP_NUM_THREADS=1 $(LAUNCH) stages/crossconv_train.py --output-dir $(TRAIN_DIR)/crossconv \
		--steps $(CROSSCONV_STEPS) --max-minutes $(CROSSCONV_MINUTES) --absent-prob $(ABSENT_PROB) --log-every 50 --resume
	$(VENV)/bin/segicl export $(TRAIN_DIR)/crossconv/model $(CROSSCONV_80MIN)
	OMP_NUM_THREADS=1 $(LAUNCH) stages/crossconv_train.py --init $(CROSSCONV_80MIN) --output-dir $(TRAIN_DIR)/crossconv2 \
		--steps $(CROSSCONV2_STEPS) --max-minutes $(CROSSCONV2_MINUTES) --seed 2 --absent-prob $(ABSENT_PROB) \
		--log-every 50 --resume
	OMP_NUM_THREADS=1 $(LAUNCH) stages/crossconv_train.py --init $(TRAIN_DIR)/crossconv2/model \
		--output-dir $(TRAIN_DIR)/crossconv3 --steps $(CROSSCONV3_STEPS) --max-minutes $(CROSSCONV3_MINUTES) --seed 3 \
		--absent-prob $(ABSENT_PROB) --log-every 50 --resume
	$(VENV)/bin/segicl export $(TRAIN_DIR)/crossconv3/model $(CROSSCONV_WEIGHTS)

clean-cache:
	rm -rf .cache/segicl

# ---------------------------------------------------------------- MVG engine (mvg_head/, stages/mvg_train.py)
# Shipped tiny weights: `make train-mvg` (about 45 min on the 2-core CPU, one thread), then a float16 export:
# 2400 steps of the tiny preset, then 1200 steps from them with the prompt-label skip switched on.
# Mix (README, MVG section, measured): segmentation 0.4 of episodes, the rest denoising : inpainting : synthesis
# = 2 : 2 : 1; the head's pixel skip and copy weighting are the tiny preset's defaults.
MVG_WEIGHTS ?= weights/mvg-tiny
MVG_TRAIN_DIR ?= runs/mvg/train
MVG_STEPS ?= 2400
MVG_MINUTES ?= 34
MVG_ABLATION_STEPS ?= 200
MVG_LABEL_SKIP_STEPS ?= 1200
MVG_LABEL_SKIP_MINUTES ?= 20
MVG_MIX := --other-autoregressive 0.8 --segmentation-probability 0.4 --task-weight denoising 2 --task-weight inpainting 2
MVG_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MVG_TRAIN_ARGS := --batch-size 8 --learning-rate 1e-3 --checkpoint-every 50 --resume

.PHONY: train-mvg demo-mvg mvg-ablation

train-mvg: install
	$(MVG_ENV) $(LAUNCH) stages/mvg_train.py --output-dir $(MVG_TRAIN_DIR) --steps $(MVG_STEPS) \
		--warmup-steps 30 --max-minutes $(MVG_MINUTES) $(MVG_MIX) $(MVG_TRAIN_ARGS)
	$(MVG_ENV) $(LAUNCH) stages/mvg_train.py --init $(MVG_TRAIN_DIR)/model --prompt-label-skip \
		--output-dir $(MVG_TRAIN_DIR)-label-skip --steps $(MVG_LABEL_SKIP_STEPS) --warmup-steps 30 \
		--max-minutes $(MVG_LABEL_SKIP_MINUTES) $(MVG_MIX) $(MVG_TRAIN_ARGS) --learning-rate 5e-4
	$(VENV)/bin/segicl export $(MVG_TRAIN_DIR)-label-skip/model $(MVG_WEIGHTS)

# Evaluates the shipped MVG weights on the test split beside the trivial baselines: runs/mvg/eval.json + report.md.
demo-mvg: install
	$(MVG_ENV) $(VENV)/bin/segicl mvg-eval --model $(MVG_WEIGHTS) --out-dir runs/mvg

# Random versus pre-defined label colouring (paper Table 5a): segmentation only, equal budgets, held-out structures.
# Measured twice (README): with the paper's head and loss (the default MVG_ABLATION_HEAD) and with the shipped head
# (make mvg-ablation MVG_ABLATION_HEAD=--prompt-label-skip MVG_ABLATION_DIR=runs/mvg/ablation-label-skip).
MVG_ABLATION_HEAD ?= --no-pixel-skip --copy-weight 1
MVG_ABLATION_DIR ?= runs/mvg/ablation
mvg-ablation: install
	for colouring in random predefined; do \
		$(MVG_ENV) $(LAUNCH) stages/mvg_train.py --output-dir $(MVG_ABLATION_DIR)/$$colouring --colouring $$colouring \
			--tasks segmentation --steps $(MVG_ABLATION_STEPS) --warmup-steps 25 $(MVG_ABLATION_HEAD) $(MVG_TRAIN_ARGS) && \
		$(MVG_ENV) $(VENV)/bin/segicl mvg-eval --tasks segmentation --model $(MVG_ABLATION_DIR)/$$colouring/model \
			--out-dir $(MVG_ABLATION_DIR)/$$colouring || exit 1; \
	done
