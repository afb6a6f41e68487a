# tokenmix: the two set-up commands of the README.
#   make demo   installs missing packages, builds Release, replays every shipped reference case
#   make test   installs missing packages (and the Python venv), builds Release with the Python
#               extension, runs the test suite (CTest: GoogleTest, the fuzz replays and pytest)
# Also: make test-generic (the suite on the plain-loop kernels), make bench-compare (tokenmix vs PyTorch
# vs ONNX Runtime), make bench-precision (fp32 / bf16 / int8 side by side), make sanitize (ASan+UBSan test run),
# make clang-test (the suite built with clang), make fuzz
# (libFuzzer harnesses, FUZZ_TIME seconds each), make bench, make install PREFIX=..., make example,
# make venv (the Python test environment), make python-sanitize (pytest through an ASan + UBSan
# build of the extension), make differential [N=2000 SEED=...] (random configurations
# against the upstream modules), make pip-check (`pip install .` into a fresh venv + the
# Python quick start).
BUILD ?= build
JOBS ?= $(shell nproc)
PREFIX ?= /usr/local

FUZZ_TIME ?= 60
# The Python test environment: Debian's python3 with its numpy / torch (--system-site-packages;
# pip is held to those versions by a constraints file made from them, so PyPI's CUDA torch never
# comes in) plus python/requirements-*.txt.
VENV ?= .venv
PY = $(VENV)/bin/python

.PHONY: setup build demo test test-generic sanitize clang-test fuzz bench example install clean venv pip-check python-build differential bench-python python-sanitize bench-precision bench-compare

setup:
	@./scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/tokenmix run tests/data/reference

test: python-build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The same suite on the plain-loop kernels (TOKENMIX_ISA=generic; oneDNN capped at SSE4.1): CI runs
# every kernel set this machine has.
test-generic: python-build
	cd $(BUILD) && TOKENMIX_ISA=generic ctest --output-on-failure -j $(JOBS)

# The build with the Python extension (build/python/package/tokenmix), for make test / differential.
python-build: setup venv
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DTOKENMIX_PYTHON=ON -DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build $(BUILD) -j $(JOBS)

# The randomized differential suite against the live upstream modules (python/tests/differential.py):
# N cases per family from SEED (a fresh one by default); prints a table per family and writes every
# miss as a reference case file into $(BUILD)/differential.
N ?= 2000
SEED ?= $(shell date +%s)
differential: python-build
	PYTHONPATH=$(BUILD)/python/package $(PY) python/tests/differential.py --n $(N) --seed $(SEED) --out $(BUILD)/differential

venv: $(VENV)/.installed
$(VENV)/.installed: python/requirements-test.txt python/requirements-nodeps.txt scripts/setup.sh
	@./scripts/setup.sh python
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -c 'import numpy, torch, torchaudio; [print(f"{m.__name__}=={m.__version__}") for m in (numpy, torch, torchaudio)]' > $(VENV)/constraints.txt
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt -r python/requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r python/requirements-nodeps.txt
	touch $@

# fp32 / bf16 / int8 on oneDNN and fp32 on the OpenBLAS reference, side by side, 1 and 2 threads, and
# the table of BENCHMARKS.md "Reduced precision" (bench/precision_table.py).
bench-precision: build
	./$(BUILD)/tokenmix bench --threads 1 2 --precision fp32,bf16,int8 --gemm onednn,reference --json $(BUILD)/precision.json
	python3 bench/precision_table.py $(BUILD)/precision.json

# tokenmix bench vs PyTorch (bench/torch_baseline.py) vs ONNX Runtime (bench/ort_baseline.py) at
# every shape of the sweep, 1 and 2 threads: the table and plot of BENCHMARKS.md "Results", into
# $(BUILD)/bench-run (docs/bench-run holds the published run).
bench-compare: build venv
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt -r python/requirements-bench.txt
	mkdir -p $(BUILD)/bench-run && $(PY) bench/compare --threads 1 2 --sweep --repeats 3 --ort --markdown --save $(BUILD)/bench-run | tee $(BUILD)/bench-run/compare.txt
	$(PY) bench/plot.py $(BUILD)/bench-run/ours.json $(BUILD)/bench-run/torch.json $(BUILD)/bench-run/ort.json -o $(BUILD)/bench-run/bench.png

# The upstream modules vs tokenmix.from_torch vs ONNX Runtime, side by side from Python (BENCHMARKS.md).
bench-python: python-build
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt -r python/requirements-bench.txt
	PYTHONPATH=$(BUILD)/python/package $(PY) bench/python_bench.py --threads 1 2 --ort --ort-int8 --precision fp32 bf16 int8

# What a user does: `pip install .` (scikit-build-core builds the extension) into a fresh venv, then
# the README's Python quick start (which starts from a SpeechBrain module) against the installed package.
pip-check: venv
	rm -rf $(BUILD)-pip && /usr/bin/python3 -m venv --system-site-packages $(BUILD)-pip
	$(BUILD)-pip/bin/python -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt . speechbrain==0.5.16
	cd $(BUILD)-pip && $(abspath $(BUILD))-pip/bin/python $(abspath examples/python/quickstart.py)

sanitize: setup
	cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DTOKENMIX_SANITIZE=ON -DTOKENMIX_BUILD_BENCHMARKS=OFF
	cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# The Python extension built with ASan + UBSan and the pytest suite run through it (the sanitizer
# runtimes preloaded into the venv's python; leak checking off, as CPython keeps memory to exit).
python-sanitize: setup venv
	cmake -S . -B $(BUILD)-pyasan -DCMAKE_BUILD_TYPE=Debug -DTOKENMIX_SANITIZE=ON -DTOKENMIX_PYTHON=ON \
	  -DTOKENMIX_BUILD_TESTS=OFF -DTOKENMIX_BUILD_BENCHMARKS=OFF -DTOKENMIX_BUILD_CLI=OFF -DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build $(BUILD)-pyasan -j $(JOBS) --target tokenmix_core tokenmix_python_files
	cd python/tests && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH=$(abspath $(BUILD))-pyasan/python/package TOKENMIX_REQUIRE_UPSTREAM=1 OMP_NUM_THREADS=2 \
	  $(abspath $(PY)) -m pytest -q -p no:cacheprovider .

# The library, CLI and suite built with clang (Debian's clang 14) and run.
clang-test:
	@./scripts/setup.sh clang
	cmake -S . -B $(BUILD)-clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release -DTOKENMIX_BUILD_BENCHMARKS=OFF
	cmake --build $(BUILD)-clang -j $(JOBS)
	cd $(BUILD)-clang && ctest --output-on-failure -j $(JOBS)

# libFuzzer harnesses (clang, ASan + UBSan), each run for FUZZ_TIME seconds from seed corpora made
# from the reference cases; a finding is written to $(BUILD)-fuzz/findings/ and fails the target.
FUZZ_HARNESSES = safetensors state_dict stream_restore run_case
fuzz:
	@./scripts/setup.sh clang
	cmake -S . -B $(BUILD)-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOKENMIX_FUZZ=ON \
	  -DTOKENMIX_BUILD_TESTS=OFF -DTOKENMIX_BUILD_BENCHMARKS=OFF
	cmake --build $(BUILD)-fuzz -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_HARNESSES))
	./fuzz/make_corpus.sh $(BUILD)-fuzz
	mkdir -p $(BUILD)-fuzz/findings
	for h in $(FUZZ_HARNESSES); do \
	  echo "== fuzz_$$h for $(FUZZ_TIME) s"; \
	  OMP_NUM_THREADS=1 ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(BUILD)-fuzz/fuzz/fuzz_$$h -max_total_time=$(FUZZ_TIME) -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=2048 \
	    -dict=fuzz/safetensors.dict -print_final_stats=1 -artifact_prefix=$(BUILD)-fuzz/findings/$$h- \
	    $(BUILD)-fuzz/corpus/$$h 2>&1 | grep -E "^#[0-9]+ +DONE|ERROR|WARNING|SUMMARY|==[0-9]+==|stat::number_of_executed_units|Test unit written" ; \
	  test -z "$$(ls $(BUILD)-fuzz/findings/$$h-* 2>/dev/null)" || { echo "fuzz_$$h: finding(s) in $(BUILD)-fuzz/findings"; exit 1; }; \
	done

bench: build
	./$(BUILD)/tokenmix bench

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

# Builds examples/consumer against an installed copy (proves find_package(tokenmix) works).
example: build
	cmake --install $(BUILD) --prefix $(BUILD)/stage
	cmake -S examples/consumer -B $(BUILD)/consumer -DCMAKE_PREFIX_PATH=$(abspath $(BUILD)/stage)
	cmake --build $(BUILD)/consumer -j $(JOBS)
	./$(BUILD)/consumer/tokenmix_consumer tests/data/reference/espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-clang $(BUILD)-fuzz $(BUILD)-pip $(BUILD)-pyasan
