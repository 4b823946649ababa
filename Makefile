# The two commands README.md opens with. Each creates .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-python typecheck lint imports test-runtime-without-torch test-runtime-oldest check-device bench clean

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

test: test-python typecheck lint imports test-runtime-without-torch test-runtime-oldest  ## everything CI checks (GPU tests skip cleanly without a GPU)

# Two workers or more (pytest-xdist), a test file per worker: the suite is mostly single-threaded Python and
# export work, so it runs in about half the time on two cores.
test-python: $(STAMP)  ## the test suite
	$(BIN)/python -m pytest -q -x -n auto --dist loadfile --durations=10

typecheck: $(STAMP)  ## TensorRT and CUDA code paths against tensorrt-stubs, and the torch-free ONNX passes
	$(BIN)/python tools/trt_typings.py
	$(BIN)/mypy --config-file pyproject.toml engines runtime/backends export/passes

lint: $(STAMP)  ## ruff, lines at most 120 columns included
	$(BIN)/ruff check runtime export engines measure serving segrt tests benchmarks models tools examples

imports: $(STAMP)  ## architecture contracts (.importlinter): layers, no circles, no torch below export
	bash tools/check_imports.sh

# The runtime a robot installs: segrt without extras (numpy, OpenCV, ONNX Runtime) in its own venv, no torch,
# and the runtime's tests run there against the committed test model.
RT_VENV := .venv-runtime
$(RT_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(RT_VENV)
	$(RT_VENV)/bin/pip install -q --upgrade pip
	$(RT_VENV)/bin/pip install -q -e . pytest hypothesis onnx  # onnx: the tests build hostile models with it
	touch $@

test-runtime-without-torch: $(RT_VENV)/.installed
	$(RT_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit('torch is installed' if u.find_spec('torch') else 0)"
	$(RT_VENV)/bin/python -m pytest -q -x -p no:cacheprovider tests/runtime

# The same tests on the oldest ONNX Runtime segrt allows (pyproject: onnxruntime>=1.17; JetPack images carry older
# wheels): 1.17 reads IR <= 9, so exports are written at the lowest IR their opset needs. numpy 1 and OpenCV 4.11:
# onnxruntime 1.17 is built against numpy 1.
RT_OLD_VENV := .venv-runtime-oldest
$(RT_OLD_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(RT_OLD_VENV)
	$(RT_OLD_VENV)/bin/pip install -q --upgrade pip
	$(RT_OLD_VENV)/bin/pip install -q -e . "onnxruntime==1.17.3" "numpy<2" "opencv-python-headless<4.12" \
		"onnx>=1.16,<1.18" pytest hypothesis
	touch $@

# onnxruntime 1.17 has wheels up to Python 3.12: on a newer Python the step says so and is skipped.
test-runtime-oldest:  ## the runtime's tests on onnxruntime 1.17, the oldest segrt allows
	@if $(PY) -c "import sys; sys.exit(sys.version_info < (3, 13))"; then \
		echo "test-runtime-oldest skipped: onnxruntime 1.17 has no wheels for Python >= 3.13"; \
	else \
		$(MAKE) --no-print-directory $(RT_OLD_VENV)/.installed && \
		$(RT_OLD_VENV)/bin/python -c "import onnxruntime, sys; sys.exit(0 if onnxruntime.__version__.startswith('1.17.') else onnxruntime.__version__)" && \
		$(RT_OLD_VENV)/bin/python -m pytest -q -x -p no:cacheprovider tests/runtime; \
	fi

check-device: $(STAMP)  ## the device extras resolve, and the device path imports without torch
	bash tools/check_device_extras.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(RT_VENV) $(RT_OLD_VENV) out .pytest_cache .mypy_cache
