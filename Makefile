# Jetson transformer toolkit. `make demo` runs the whole flow on generated sample data;
# `make test` runs the CPU test suite. Both create .venv on first use.
#
# Data: DATA=sample (default, generated, offline) | DATA=hub (Hugging Face) | DATA_DIR=folder
#       IMDB_DATA / STORIES_DATA override per model (e.g. ../shared/data/imdb).
# Device suite: make test-device PYTHON=python3.8 NUMPY="numpy<2" (JetPack 5.1), PYTHON=python3.10
#               (JetPack 6): .venv-device from requirements/device.txt only, no torch.
# Passthrough: EPOCHS=, TRAIN_ARGS= (any train option), MODEL=imdb|stories, PRECISION=, SPLIT=,
#              MAX_DROP= (INT8 accuracy gate), BENCH_ARGS=, PROMPT=

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements/host.txt requirements/test.txt | cksum | cut -d' ' -f1)

DATA ?= sample
DATA_DIR ?=
IMDB_DATA ?= $(or $(DATA_DIR),$(DATA))
STORIES_DATA ?= $(or $(DATA_DIR),$(DATA))
MODEL ?= imdb
PRECISION ?= fp16
MAX_DROP ?= 0.5
EPOCHS ?=
TRAIN_ARGS ?=
PROMPT ?= Once upon a time
BENCH_ARGS ?=
DEMO_MAX_DROP ?= 5
SPLIT ?= $(if $(filter stories,$(MODEL)),valid,test)
MODEL_DATA = $(if $(filter stories,$(MODEL)),$(STORIES_DATA),$(IMDB_DATA))
EPOCH_ARG = $(if $(EPOCHS),--epochs $(EPOCHS))

# Small models for the sample-data demo: minutes on 2 CPU cores.
DEMO_IMDB_ARGS ?= --epochs 6 --d-model 64 --n-layers 2 --n-heads 4 --d-ff 128 --max-seq-len 256 --vocab-size 2000 --val-size 200
DEMO_STORIES_ARGS ?= --epochs 2 --d-model 128 --n-layers 2 --n-heads 4 --d-ff 256 --max-seq-len 256 --vocab-size 2000 --seq-len 128 --val-stories 100

.PHONY: setup demo train-imdb train-stories validate generate onnx calibrate engine bench test \
	test-device fixtures gpu-check device-check jetson-setup triton-repo \
	test-triton triton-server bench-all bench-peers baseline regress export-hf lint clean \
	demo-features train-features train-run

setup: $(STAMP)

$(STAMP): requirements/host.txt requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/host.txt -r requirements/test.txt
	rm -f $(VENV)/.installed-* && touch $@

train-imdb: setup
	$(PY) -m train.imdb --data $(IMDB_DATA) $(EPOCH_ARG) $(TRAIN_ARGS)

train-stories: setup
	$(PY) -m train.tinystories --data $(STORIES_DATA) $(EPOCH_ARG) $(TRAIN_ARGS)

validate: setup
	$(PY) -m train.validate --checkpoint checkpoints/$(MODEL)/best.pt --split $(SPLIT) \
		--data $(MODEL_DATA) --output-dir results/$(MODEL)-validate

generate: setup
	$(PY) -m train.generate --checkpoint checkpoints/stories/best.pt --prompt "$(PROMPT)"

# TRT=8.5: a graph TensorRT 8.5 (JetPack 5.1) parses (LayerNorm decomposed); 8.6: LayerNormalization.
TRT ?= 8.6
onnx: setup
	$(PY) -m export.onnx_model --checkpoint checkpoints/$(MODEL)/best.pt --output models/$(MODEL).onnx \
		--trt-target $(TRT)

calibrate: setup
	$(PY) -m calibration.dataset --onnx models/$(MODEL).onnx --data $(MODEL_DATA) \
		--output calibration/$(MODEL).calib.npz
	$(PY) -m calibration.qdq --onnx models/$(MODEL).onnx --calib calibration/$(MODEL).calib.npz \
		--output models/$(MODEL).qdq.onnx
	$(PY) -m calibration.fp16 --onnx models/$(MODEL).onnx --output models/$(MODEL).fp16.onnx
	$(PY) -m calibration.gate --fp32 models/$(MODEL).onnx --int8 models/$(MODEL).qdq.onnx \
		--data $(MODEL_DATA) --split $(SPLIT) --report reports/$(MODEL).int8.json --fp16 \
		--max-drop $(MAX_DROP)

engine: setup
	$(PY) -m engines.build --onnx models/$(MODEL).onnx --precision $(PRECISION) \
		--output engines/$(MODEL).$(PRECISION).plan \
		$(if $(filter fp16,$(PRECISION)),--fp16-onnx models/$(MODEL).fp16.onnx) \
		$(if $(filter int8 best,$(PRECISION)),--qdq-onnx models/$(MODEL).qdq.onnx \
		--accuracy-report reports/$(MODEL).int8.json --max-drop $(MAX_DROP))

bench: setup
	$(PY) runtime/bench.py --onnx models/$(MODEL).onnx --output results/bench_$(MODEL).json $(BENCH_ARGS)

DEMO_TEXTS = "A wonderful film, the acting was superb and I loved every minute." \
	"Dull, predictable and far too long. I want my two hours back."
demo: setup
	@echo "== demo (DATA=$(DATA)): train, validate, export, calibrate, engine, classify, generate, bench, features =="
	$(PY) -m train.imdb --data $(IMDB_DATA) $(DEMO_IMDB_ARGS) $(TRAIN_ARGS)
	$(PY) -m train.tinystories --data $(STORIES_DATA) $(DEMO_STORIES_ARGS) $(TRAIN_ARGS)
	$(MAKE) --no-print-directory validate MODEL=imdb
	$(MAKE) --no-print-directory validate MODEL=stories
	$(MAKE) --no-print-directory onnx MODEL=imdb
	$(MAKE) --no-print-directory onnx MODEL=stories
	$(MAKE) --no-print-directory calibrate MODEL=imdb MAX_DROP=$(DEMO_MAX_DROP)
	$(MAKE) --no-print-directory calibrate MODEL=stories MAX_DROP=$(DEMO_MAX_DROP)
	@if $(PY) -c "import tensorrt" 2>/dev/null; then \
		$(MAKE) --no-print-directory engine MODEL=imdb PRECISION=int8; \
	else echo "engine: skipped: TensorRT is not installed here (engines are built on the device: make engine MODEL=imdb PRECISION=int8); the ONNX, Q/DQ ONNX and calibration set are ready"; fi
	$(PY) runtime/classify.py --model models/imdb.onnx $(DEMO_TEXTS)
	$(PY) runtime/generate.py --model models/stories.onnx --prompt "$(PROMPT)" --max-new-tokens 80
	$(MAKE) --no-print-directory bench MODEL=imdb BENCH_ARGS="--batch 1,8 --seq 64,256 --iterations 30"
	$(MAKE) --no-print-directory bench MODEL=stories BENCH_ARGS="--batch 1 --seq 16 --new-tokens 64 --iterations 3"
	$(MAKE) --no-print-directory demo-features
	@echo "== demo figures (sample data: not comparable to real runs) =="
	@$(PY) -m benchmarks.demo_summary

test: setup
	$(PY) -m pytest -q

# Continuous features end to end on the generated noisy-wave sample (train.feature_sample):
# train -> export (normalization in the graph) -> calibrate + INT8 gate -> classify with the
# runtime (ONNX Runtime) -> the same windows through the bundled tritonserver (CPU, python
# backend), compared with the runtime. FEATURES_DATA=folder with train/valid/test .npz files.
FEATURES_NAME ?= waves
FEATURES_DATA ?= data/features_sample
FEATURES_TRITON_REPO ?= triton_models/features
FEATURES_PORT ?= 8030
DEMO_FEATURES_ARGS ?=
FN = $(FEATURES_NAME)
# Your own feature data (FEATURES_DATA=folder of train/valid/test .npz|.csv|.parquet), and any
# run described by a config file (configs/*.toml; torchrun works with both, see README).
CONFIG ?= configs/features.toml
train-features: setup
	$(PY) -m train.features --data $(FEATURES_DATA) --out-dir checkpoints/$(FN) $(EPOCH_ARG) $(TRAIN_ARGS)

train-run: setup
	$(PY) -m train.run --config $(CONFIG)

demo-features: setup
	@echo "== demo-features: sample, train, export, calibrate + gate, classify, bench, triton =="
	test -f $(FEATURES_DATA)/train.npz || $(PY) -m train.feature_sample --out $(FEATURES_DATA)
	$(PY) -m train.features --data $(FEATURES_DATA) --out-dir checkpoints/$(FN) \
		$(DEMO_FEATURES_ARGS) $(TRAIN_ARGS)
	$(PY) -m export.onnx_model --checkpoint checkpoints/$(FN)/best.pt --output models/$(FN).onnx \
		--trt-target $(TRT)
	$(PY) -m calibration.dataset --onnx models/$(FN).onnx --data $(FEATURES_DATA)/train.npz \
		--output calibration/$(FN).calib.npz
	$(PY) -m calibration.qdq --onnx models/$(FN).onnx --calib calibration/$(FN).calib.npz \
		--output models/$(FN).qdq.onnx
	$(PY) -m calibration.fp16 --onnx models/$(FN).onnx --output models/$(FN).fp16.onnx
	$(PY) -m calibration.gate --fp32 models/$(FN).onnx --int8 models/$(FN).qdq.onnx \
		--data $(FEATURES_DATA)/test.npz --report reports/$(FN).int8.json --fp16 \
		--max-drop $(DEMO_MAX_DROP)
	@mkdir -p results
	$(PY) runtime/classify.py --model models/$(FN).onnx --features $(FEATURES_DATA)/test.npz \
		--batch-size 32 > results/$(FN).classify.txt && tail -n 3 results/$(FN).classify.txt
	$(PY) runtime/bench.py --model models/$(FN).onnx --batch 1,8 --seq 32,128 --iterations 20
	$(PY) -m triton_repo.build --target cpu --output $(FEATURES_TRITON_REPO) \
		--features-model models/$(FN).onnx --force
	@eval "$$($(PY) -m triton_repo.dev_server)" && pidfile=$$(mktemp) && \
	TRITON_HTTP_PORT=$(FEATURES_PORT) TRITON_GRPC_PORT=$$(($(FEATURES_PORT) + 1)) \
	TRITON_METRICS_PORT=$$(($(FEATURES_PORT) + 2)) \
		jetson/run_triton.sh --background $$pidfile $(FEATURES_TRITON_REPO) >/dev/null && \
	{ $(PY) -m triton_repo.feature_client --url 127.0.0.1:$(FEATURES_PORT) \
		--features $(FEATURES_DATA)/test.npz --compare models/$(FN).onnx \
		> results/$(FN).triton.txt; status=$$?; tail -n 3 results/$(FN).triton.txt; \
	  kill $$(cat $$pidfile); rm -f $$pidfile; exit $$status; }

# A Triton model repository from the artifacts: TRITON_TARGET=cpu serves the ONNX files through
# ONNX Runtime (python backend), TRITON_TARGET=jetson the TensorRT plan (make engine first).
TRITON_TARGET ?= cpu
TRITON_REPO ?= triton_models
IMDB_SERVE ?= $(if $(filter jetson,$(TRITON_TARGET)),engines/imdb.$(PRECISION).plan,models/imdb.onnx)
STORIES_SERVE ?= models/stories.onnx
triton-repo: setup
	$(PY) -m triton_repo.build --target $(TRITON_TARGET) --output $(TRITON_REPO) \
		--imdb $(IMDB_SERVE) --stories $(STORIES_SERVE) --force

# The device-side tests alone, in a venv a bare JetPack could have (tests/device/make_venv.sh).
DEVICE_VENV ?= .venv-device
NUMPY ?=
test-device:
	tests/device/make_venv.sh $(PYTHON) $(DEVICE_VENV) '$(NUMPY)'
	$(DEVICE_VENV)/bin/python -m pytest -q tests/device

# x86 + NVIDIA GPU + CUDA toolkit: TensorRT wheels in a fresh venv, then device-check in it and
# the device suite's trt/gpu tests, results/gpu-check/summary.json. On a Jetson: jetson-setup,
# then device-check.
gpu-check:
	bash jetson/gpu_check.sh

# The first-device check, <= 15 minutes: versions, parse check against the table, fp32/fp16/int8
# engines of the tiny fixtures (and models/), classify/generate/bench against the references,
# Triton, regress; results/device-check/report.{json,md}. Runs in the device venv (no torch).
DEVICE_CHECK_PYTHON ?= $(firstword $(wildcard .venv-jetson/bin/python .venv-gpu-check/bin/python) python3)
DEVICE_CHECK_ARGS ?=
device-check:
	$(DEVICE_CHECK_PYTHON) -m benchmarks.device_check $(DEVICE_CHECK_ARGS)

jetson-setup:
	bash jetson/setup.sh

# The real-server Triton tests alone (make test runs them too); triton-server prints the
# TRITON_HOME / TRITON_PYTHON_ENV that jetson/run_triton.sh needs on an x86 box.
test-triton: setup
	$(PY) -m pytest -q tests/serving
triton-server: setup
	$(PY) -m triton_repo.dev_server

# Every backend on this machine side by side (accuracy, latency, memory, energy on a Jetson).
# On a fresh clone with DATA=sample it first makes the sample-data demo model (about a minute).
BASELINES ?= benchmarks/baselines
SUITE_CHECKPOINT = $$(test -f checkpoints/$(MODEL)/best.pt && echo --checkpoint checkpoints/$(MODEL)/best.pt)
bench-all: setup
	@test -f models/$(MODEL).onnx || test -f checkpoints/$(MODEL)/best.pt || \
		{ test "$(MODEL_DATA)" = sample || { echo "error: no models/$(MODEL).onnx nor checkpoints/$(MODEL)/best.pt: train and export first (make train-$(MODEL) onnx MODEL=$(MODEL)), or DATA=sample for the demo model"; exit 2; }; \
		echo "models/$(MODEL).onnx does not exist: training the sample-data demo model first"; \
		$(PY) -m train.$(if $(filter stories,$(MODEL)),tinystories,imdb) --data sample \
			$(if $(filter stories,$(MODEL)),$(DEMO_STORIES_ARGS),$(DEMO_IMDB_ARGS)); }
	test -f models/$(MODEL).onnx || { $(MAKE) --no-print-directory onnx MODEL=$(MODEL) && \
		$(MAKE) --no-print-directory calibrate MODEL=$(MODEL) MAX_DROP=$(DEMO_MAX_DROP); }
	$(PY) -m benchmarks.suite --model $(MODEL) --data $(MODEL_DATA) --out-dir results/suite \
		$(SUITE_CHECKPOINT) $(BENCH_ARGS)
# Our runtime against transformers, Optimum and onnxruntime-genai on the same weights; each
# peer gets its own venv (their transformers pins conflict).
.venv-optimum/.installed: requirements/peers-optimum.txt
	$(PYTHON) -m venv .venv-optimum && .venv-optimum/bin/pip install -q -r $< && touch $@
.venv-genai/.installed: requirements/peers-genai.txt
	$(PYTHON) -m venv .venv-genai && .venv-genai/bin/pip install -q -r $< && touch $@
bench-peers: setup .venv-optimum/.installed .venv-genai/.installed
	$(PY) -m benchmarks.peers --out-dir results/peers --optimum-python .venv-optimum/bin/python \
		--genai-python .venv-genai/bin/python $(BENCH_ARGS)
baseline: setup
	$(PY) -m benchmarks.baseline --report results/suite/$(MODEL).json --dir $(BASELINES)
# The ratio tests, the Jetson test, then MODEL measured now against this machine's baseline
# (none here: a message saying how to record one, exit 0).
regress: setup
	$(PY) -m pytest -q tests/device/test_regress_cpu.py tests/host/test_regress_int8_cpu.py
	$(PY) -m pytest -q -rs -m jetson tests/device/test_regress_jetson.py
	$(PY) -m benchmarks.regress --model $(MODEL) --data $(MODEL_DATA) --dir $(BASELINES) \
		$(SUITE_CHECKPOINT)

# A Hugging Face folder (save_pretrained) through the project's ONNX interface.
HF_MODEL ?= ../shared/data/hf/all-MiniLM-L6-v2
HF_NAME ?= minilm
export-hf: setup
	$(PY) -m export.hf --model $(HF_MODEL) --output models/$(HF_NAME).onnx --trt-target $(TRT)

# Rewrite the committed tiny models of the device suite (after a change to train/ or export/).
fixtures: setup
	$(PY) tests/fixtures/make_fixtures.py

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf checkpoints models results reports engines/*.plan engines/*.plan.json \
		engines/*.timing.cache calibration/*.npz calibration/*.cache .pytest_cache .venv-device .venv-triton triton_models
