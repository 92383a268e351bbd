# One command each for a fresh machine:  make demo  (train + evaluate on real data)  /  make test
#   make test       the whole suite with the CPU speed layer, then the numerical tests (marker both_paths) again on
#                   the portable path that GPU and Ascend run (SOFT_CPU_KERNELS=0): what CI runs
#   make test-fast  the unit and parity tiers without the slow tests (pytest -m "(unit or parity) and not slow")
PYTHON ?= python3
DIGITS_DIR ?= data/digits
DEMO_OUT ?= output/demo

.PHONY: install install-test kernels test test-fast demo clean

install:
	$(PYTHON) -m pip install -q -r requirements.txt

install-test:
	$(PYTHON) -m pip install -q -r requirements-test.txt

# the C++ kernels of the CPU speed layer (models/cpu/kernels/build/; CPU only: GPU and Ascend never use them;
# without g++ it says so and goes on)
kernels:
	$(PYTHON) models/cpu/kernels/build.py

# two test processes (pytest-xdist), each test file in one of them
PYTEST_PAR ?= -n 2 --dist loadfile

test: install-test kernels
	@echo "== whole suite, CPU speed layer on (SOFT_CPU_KERNELS=1) =="
	$(PYTHON) -m pytest -q $(PYTEST_PAR) tests
	@echo "== numerical tests (both_paths) on the portable path that GPU and Ascend run (SOFT_CPU_KERNELS=0) =="
	SOFT_CPU_KERNELS=0 $(PYTHON) -m pytest -q $(PYTEST_PAR) -m both_paths tests

test-fast: install-test kernels
	$(PYTHON) -m pytest -q $(PYTEST_PAR) -m "(unit or parity) and not slow" tests

demo: install kernels
	$(PYTHON) -m pip install -q scikit-learn
	$(PYTHON) tools/prepare_digits.py --output $(DIGITS_DIR)
	$(PYTHON) train.py --config_path config/SOFT_tiny_demo_cpu.yml --dataset_path $(DIGITS_DIR) --output_path $(DEMO_OUT)
	$(PYTHON) eval.py --config_path config/SOFT_tiny_demo_cpu.yml --dataset_path $(DIGITS_DIR) --checkpoint_file_path $(DEMO_OUT)/best.ckpt

clean:
	rm -rf output rank_* kernel_meta *.ir abnormal_image.jpg
