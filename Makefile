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

# The shipped weights are made by their recipes (recipes/<name>.toml: every step, its flags and why), run by
# `segicl train`: `make train-demo` (segicl-tiny, after the crossconv-tiny chain it reads), `make train-crossconv`,
# `make train-mvg`. Each recipe's model is exported to WEIGHTS_DIR/<name>, replacing the shipped weights.
# TRAIN_ARGS adds flags of `segicl train`: TRAIN_ARGS=--dry-run prints the commands, TRAIN_ARGS="--dataset DIR"
# trains on your data (then give another TRAIN_DIR and WEIGHTS_DIR).
TRAIN_DIR ?= runs/train-demo
WEIGHTS_DIR ?= weights
TRAIN_ARGS ?=

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
# passes there (docs: reference/dependencies).
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

# The reliability suite (docs: explanation/reliability): the bad-input corpus (tests/corpus) through every entry point,
# the fuzzing of the readers, the orientation rule, the importer and the metrics, and the fault and load tests; the
# tally it prints at the end is what the page reports. SEGICL_FUZZ_DEPTH=10 searches ten times longer.
.PHONY: reliability
reliability: install
	$(PY) -m pytest -q tests/reliability

# The web app (docs: how-to/web-app): http://127.0.0.1:7860, offline, on the shipped weights; SERVE_ARGS="--port 8000 ...".
SERVE_ARGS ?=
serve: install
	$(VENV)/bin/segicl serve $(SERVE_ARGS)

# The documentation site (mkdocs.yml, docs/): built offline into site/ with every warning an error. The command-line
# reference is rendered from the argument parser at build time; the results page by `segicl bench report`.
.PHONY: docs
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Long: hours on 2 CPU cores (segicl-tiny runs crossconv-tiny's chain first: about 205 min, then its own). Re-running
# resumes: an interrupted step continues from its last checkpoint, a finished one is skipped.
train-demo: install
	$(VENV)/bin/segicl train --recipe segicl-tiny --output-dir $(TRAIN_DIR) --weights-dir $(WEIGHTS_DIR) $(TRAIN_ARGS)

# The CrossConv peer / in-context module alone (recipes/crossconv-tiny.toml): weights/crossconv-tiny.
train-crossconv: install
	$(VENV)/bin/segicl train --recipe crossconv-tiny --output-dir $(TRAIN_DIR) --weights-dir $(WEIGHTS_DIR) $(TRAIN_ARGS)

clean-cache:
	rm -rf .cache/segicl

# ---------------------------------------------------------------- MVG engine (mvg_head/, stages/mvg_train.py)
# Shipped tiny weights: `make train-mvg` (recipes/mvg-tiny.toml; about 45 min on the 2-core CPU, one thread).
MVG_WEIGHTS ?= $(WEIGHTS_DIR)/mvg-tiny
MVG_TRAIN_DIR ?= runs/mvg
MVG_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: train-mvg demo-mvg mvg-ablation

train-mvg: install
	$(VENV)/bin/segicl train --recipe mvg-tiny --output-dir $(MVG_TRAIN_DIR) --weights-dir $(WEIGHTS_DIR) $(TRAIN_ARGS)

# Evaluates the shipped MVG weights on the test split beside the trivial baselines: runs/mvg/eval.json + report.md.
demo-mvg: install
	$(MVG_ENV) $(VENV)/bin/segicl mvg-eval --model $(MVG_WEIGHTS) --out-dir runs/mvg

# Random versus pre-defined label colouring (paper Table 5a): segmentation only, equal budgets, held-out structures.
# Measured twice (docs: research/mvg): with the paper's head and loss (the default MVG_ABLATION_HEAD) and with the shipped head
# (make mvg-ablation MVG_ABLATION_HEAD=--prompt-label-skip MVG_ABLATION_DIR=runs/mvg/ablation-label-skip).
MVG_ABLATION_HEAD ?= --no-pixel-skip --copy-weight 1
MVG_ABLATION_DIR ?= runs/mvg/ablation
MVG_ABLATION_STEPS ?= 200
MVG_LAUNCH := $(VENV)/bin/accelerate launch --quiet --config_file accelerate_config.yaml -m segicl_stages.mvg_train
mvg-ablation: install
	for colouring in random predefined; do \
		$(MVG_ENV) $(MVG_LAUNCH) --output-dir $(MVG_ABLATION_DIR)/$$colouring --colouring $$colouring \
			--tasks segmentation --steps $(MVG_ABLATION_STEPS) --warmup-steps 25 $(MVG_ABLATION_HEAD) \
			--batch-size 8 --learning-rate 1e-3 --checkpoint-every 50 --resume && \
		$(MVG_ENV) $(VENV)/bin/segicl mvg-eval --tasks segmentation --model $(MVG_ABLATION_DIR)/$$colouring/model \
			--out-dir $(MVG_ABLATION_DIR)/$$colouring || exit 1; \
	done
