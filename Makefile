# One virtual environment at .venv/, made by `make install`. `make test` is what CI runs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
PROFILE ?= tiny
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-fast lint bench-model bench-train bench-face bench-gateway bench-worker bench-inference bench-e2e bench-quality bench-watermark demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip==25.3 setuptools==80.9.0 wheel -q
	$(BIN)/pip install -e '.[dev]'
	# invisible-watermark pins an old opencv/numpy in its metadata; its real needs are installed above.
	$(BIN)/pip install --no-deps invisible-watermark==0.2.0
	# mediapipe 0.10.21 ships the Apache-2.0 face/segmentation models (1.x ships none); its metadata asks
	# for protobuf<5, jax, jaxlib, opencv-contrib-python, sentencepiece, sounddevice, none of which the
	# face graphs use; its real runtime deps are absl-py + matplotlib (pinned) and attrs, flatbuffers, protobuf.
	$(BIN)/pip install --no-deps mediapipe==0.10.21
	# pip check, ignoring only the metadata of those two --no-deps packages (docs/face-analysis.md).
	$(BIN)/pip check | grep -v '^invisible-watermark .* requires opencv-python' \
	  | grep -Ev '^mediapipe 0\.10\.21 (requires (jax|jaxlib|opencv-contrib-python|sentencepiece|sounddevice)|has requirement protobuf)' \
	  | (! grep .)
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow and not integration"

lint: install
	$(BIN)/ruff check goha shared services tests migrations
	$(BIN)/ruff format --check goha shared services tests migrations

bench-model: install
	$(PYTHON) -m shared.model.bench --profile $(PROFILE)

bench-train: install
	$(PYTHON) -m shared.training bench --profile $(PROFILE) --checkpoint models/goha-$(PROFILE).pt

bench-face: install
	$(PYTHON) -m shared.face.bench

bench-gateway: install
	$(PYTHON) -m services.gateway.bench

bench-inference: install
	$(PYTHON) -m services.inference.bench --profile $(PROFILE)

bench-e2e: install
	$(PYTHON) -m services.worker.bench --seconds 10 --fps 25

# Watermark robustness (11 attacks, 50 payloads, 1,000 unmarked sets) on the shipped model's output through
# the worker pipeline, and its cost; slow on 2 cores (docs/media.md gives the duration). Last line JSON.
bench-watermark: install
	$(PYTHON) -m services.worker.bench_watermark --payloads 50 --negatives 1000

# The served output's quality (face rate, identity, mouth/yaw following, holdout PSNR); last line JSON.
bench-quality: install
	$(PYTHON) -m services.worker.bench_quality --checkpoint models/goha-$(PROFILE).pt --frames-dir runs/quality

# The main job end to end on the embedded stack (no servers to install); files land in var/demo/.
demo: install
	$(PYTHON) -m services.embedded.demo

clean:
	rm -rf $(VENV) .pytest_cache
