# tokenmix: the two set-up commands of the README.
#   make demo   installs missing packages, builds Release, replays every shipped reference case
#   make test   installs missing packages, builds Release, runs the test suite (CTest)
# Also: make sanitize (ASan+UBSan test run), make bench, make install PREFIX=..., make example.
BUILD ?= build
JOBS ?= $(shell nproc)
PREFIX ?= /usr/local

.PHONY: setup build demo test sanitize bench example install clean

setup:
	@./scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/tokenmix run tests/data/reference

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

sanitize: setup
	cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DTOKENMIX_SANITIZE=ON -DTOKENMIX_BUILD_BENCHMARKS=OFF
	cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

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
	rm -rf $(BUILD) $(BUILD)-asan
