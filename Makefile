# The two commands README.md opens with. Each creates .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test typecheck lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e ".[export,dev]"
	# Type stubs only: the real TensorRT cannot be installed without NVIDIA's download host.
	$(BIN)/pip install -q --no-deps tensorrt-stubs
	touch $(STAMP)

demo: $(STAMP)  ## the main job: segment the bundled street video with the bundled model on the CPU
	$(BIN)/segrt demo examples/media/bikes.mp4 --headless --output out/demo.mp4

test: $(STAMP)  ## the test suite (GPU tests skip cleanly without a GPU)
	$(BIN)/python -m pytest -q -x --durations=10
	$(MAKE) typecheck

typecheck: $(STAMP)  ## TensorRT and CUDA code paths against tensorrt-stubs
	$(BIN)/python tools/trt_typings.py
	$(BIN)/mypy --config-file pyproject.toml engines runtime/backends

lint: $(STAMP)
	$(BIN)/ruff check runtime export engines measure segrt tests benchmarks models tools

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache
