# The two commands the README promises: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first at the pinned CPU-friendly version: a bare `torch` requirement would pull a
# multi-GB CUDA build. GPU users install their CUDA torch before `pip install -e .[gpu]`.
TORCH ?= torch==2.13.0

.PHONY: demo test test-fast lint format lab venv clean train-lite book

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[course,dev]"
	# rfc3987-syntax costs 2-3 s on every nbformat import and nothing needs it (DESIGN.md 4).
	-$(BIN)/python -m pip uninstall -q -y rfc3987-syntax
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/progemu-lite demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check progemu_lite tests benchmarks book jupyterhub
	$(BIN)/ruff format --check progemu_lite tests benchmarks book jupyterhub

format: $(STAMP)
	$(BIN)/ruff format progemu_lite tests benchmarks book jupyterhub
	$(BIN)/ruff check --fix progemu_lite tests benchmarks book jupyterhub

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

# The course site: lessons executed with their fast settings, offline, warnings as errors
# (book/build_book.py; opens at book/_build/html/index.html).
book: $(STAMP)
	$(BIN)/python book/build_book.py

clean:
	rm -rf $(VENV) outputs book/_build book/generated

# The shipped `lite` model from scratch on simulated data (docs/model_card.md records the run):
# about 9 hours on 2 idle CPU cores. Every stage resumes where it stopped when rerun. The
# decoder's visual-token embeddings start from the VQ codebook; it stops at step 3000 of its
# 8-epoch schedule (validation loss rose after it: 2,000 patients get memorised), a short
# fine-tune weights the interpretation's tokens 5x, then a long one on 6,000 patients (the
# first 2,000 are the same ones: each patient has its own random stream) weights them 10x, a
# fourth goes on with 12,000 patients (more steps on the same 6,000 made it worse), stopping at
# step 10000 of a 12000-step schedule, a fifth, from the fourth's float16 export, goes on
# with 24,000 patients for a short 3000-step schedule, and a sixth, from the fifth's float16
# export, with 48,000 patients for 6000 steps in bf16 autocast (1.3-1.8x the steps per second
# of float32 on a CPU with native bf16; docs/training.md). A stage copies the image codes its
# predecessor made with the same VQ (--reuse-codes) and encodes only its new patients' images;
# the fifth encodes all of its own: its --init, a float16 export, rounds the VQ to float16.
# VISUAL_TOKEN_INIT=random gives the independent random embeddings of the random start (the
# weights shipped two versions ago; docs/training.md, "What the decoder can read").
LITE_RUNS ?= runs
VISUAL_TOKEN_INIT ?= codebook
train-lite: $(STAMP)
	$(BIN)/progemu-lite phantom --patients 2000 --pairs-per-patient 3 --size 128 --seed 0 \
		--out $(LITE_RUNS)/lite-data
	$(BIN)/progemu-lite train-vq --data $(LITE_RUNS)/lite-data --preset lite --steps 1000 \
		--out $(LITE_RUNS)/vq-lite $(if $(wildcard $(LITE_RUNS)/vq-lite/training_state),--resume)
	$(BIN)/progemu-lite train --data $(LITE_RUNS)/lite-data --vq $(LITE_RUNS)/vq-lite --preset lite \
		--visual-token-init $(VISUAL_TOKEN_INIT) --epochs 8 --until 3000 --batch-size 8 --lr 8e-4 \
		--warmup-steps 100 --eval-every 600 \
		--max-val-pairs 96 --save-every 600 --out $(LITE_RUNS)/lm-lite \
		$(if $(wildcard $(LITE_RUNS)/lm-lite/checkpoints),--resume)
	$(BIN)/progemu-lite train --data $(LITE_RUNS)/lite-data \
		--init $(LITE_RUNS)/lm-lite/checkpoints/step-0003000/pipeline \
		--steps 800 --batch-size 8 --lr 3e-4 --warmup-steps 50 --interpretation-loss-weight 5 \
		--eval-every 200 --max-val-pairs 96 --save-every 200 --out $(LITE_RUNS)/lm-lite-text \
		--reuse-codes $(LITE_RUNS)/lm-lite \
		$(if $(wildcard $(LITE_RUNS)/lm-lite-text/checkpoints),--resume)
	$(BIN)/progemu-lite phantom --patients 6000 --pairs-per-patient 3 --size 128 --seed 0 \
		--out $(LITE_RUNS)/lite-data-6k
	$(BIN)/progemu-lite train --data $(LITE_RUNS)/lite-data-6k \
		--init $(LITE_RUNS)/lm-lite-text/pipeline \
		--steps 7000 --batch-size 8 --lr 4e-4 --warmup-steps 100 --interpretation-loss-weight 10 \
		--eval-every 500 --max-val-pairs 96 --save-every 500 --out $(LITE_RUNS)/lm-lite-6k \
		--reuse-codes $(LITE_RUNS)/lm-lite-text \
		$(if $(wildcard $(LITE_RUNS)/lm-lite-6k/checkpoints),--resume)
	$(BIN)/progemu-lite phantom --patients 12000 --pairs-per-patient 3 --size 128 --seed 0 \
		--out $(LITE_RUNS)/lite-data-12k
	$(BIN)/progemu-lite train --data $(LITE_RUNS)/lite-data-12k \
		--init $(LITE_RUNS)/lm-lite-6k/pipeline \
		--steps 12000 --until 10000 --batch-size 8 --lr 2.5e-4 --warmup-steps 100 \
		--interpretation-loss-weight 10 --eval-every 500 --max-val-pairs 96 --save-every 500 \
		--out $(LITE_RUNS)/lm-lite-12k --reuse-codes $(LITE_RUNS)/lm-lite-6k \
		$(if $(wildcard $(LITE_RUNS)/lm-lite-12k/checkpoints),--resume)
	$(BIN)/progemu-lite export $(LITE_RUNS)/lm-lite-12k/checkpoints/step-0010000/pipeline \
		$(LITE_RUNS)/lite-stage4-float16
	$(BIN)/progemu-lite phantom --patients 24000 --pairs-per-patient 3 --size 128 --seed 0 \
		--out $(LITE_RUNS)/lite-data-24k
	$(BIN)/progemu-lite train --data $(LITE_RUNS)/lite-data-24k \
		--init $(LITE_RUNS)/lite-stage4-float16 \
		--steps 3000 --batch-size 8 --lr 2e-4 --warmup-steps 100 --interpretation-loss-weight 10 \
		--eval-every 500 --max-val-pairs 96 --save-every 500 --out $(LITE_RUNS)/lm-lite-24k \
		$(if $(wildcard $(LITE_RUNS)/lm-lite-24k/checkpoints),--resume)
	$(BIN)/progemu-lite export $(LITE_RUNS)/lm-lite-24k/pipeline $(LITE_RUNS)/lite-stage5-float16
	$(BIN)/progemu-lite phantom --patients 48000 --pairs-per-patient 3 --size 128 --seed 0 \
		--out $(LITE_RUNS)/lite-data-48k
	$(BIN)/progemu-lite train --data $(LITE_RUNS)/lite-data-48k \
		--init $(LITE_RUNS)/lite-stage5-float16 \
		--steps 6000 --batch-size 8 --lr 2e-4 --warmup-steps 100 --interpretation-loss-weight 10 \
		--seed 7 --mixed-precision bf16 \
		--eval-every 500 --max-val-pairs 96 --save-every 500 --out $(LITE_RUNS)/lm-lite-48k \
		--reuse-codes $(LITE_RUNS)/lm-lite-24k \
		$(if $(wildcard $(LITE_RUNS)/lm-lite-48k/checkpoints),--resume)
	$(BIN)/progemu-lite export $(LITE_RUNS)/lm-lite-48k/pipeline $(LITE_RUNS)/lite-float16
