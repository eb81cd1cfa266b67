# blkstack — the two set-up commands:
#
#   make demo   install what is missing, build, and run the main job: ext4 on a
#               blkstack RAM disk (serve, FUSE export, loop device; needs root)
#   make test   install what is missing, build, and run every test: all ctest
#               labels, then the unit tests under ASan+UBSan with the optional
#               modules off, then the fuzzers
#
# Helpers: make build | install | tour (a short tour of the CLI) | bench | format | clean.
# Knobs: JOBS (build parallelism, default 2), FUZZ_SECONDS (per fuzz target),
# PREFIX (where make install puts the library, headers, blkstack.pc and the CLI).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.NOTPARALLEL:
.DEFAULT_GOAL := help

JOBS ?= 2
PREFIX ?= /usr/local
FUZZ_SECONDS ?= 20
CMAKE_COMMON := -G Ninja -DBLKSTACK_WERROR=ON --log-level=WARNING

BUILD := build
# The ASan build is also the proof that the core builds, and its unit tests
# pass, with every optional module switched off.
MODULES_OFF := -DBLKSTACK_WITH_FUSE=OFF -DBLKSTACK_WITH_RBD=OFF -DBLKSTACK_WITH_NBD_CLIENT=OFF
BUILD_ASAN := build-asan
BUILD_FUZZ := build-fuzz

# $(call phase,TITLE): a visible header for each step of `make test`.
phase = @printf '\n==== %s\n' "$(1)"
# $(call configure_build,DIR,CMAKE ARGS[,TARGET]): configure (Ninja) and build
# DIR (everything, or TARGET).
configure_build = cmake -S . -B $(1) $(CMAKE_COMMON) $(2) && \
                  cmake --build $(1) -j $(JOBS) $(if $(3),--target $(3))
# $(call ctest,DIR,ARGS): runs ctest, keeping its output for the summary.
ctest = ctest --test-dir $(1) --output-on-failure --no-tests=error --parallel $(JOBS) $(2) \
          2>&1 | tee $(1)/ctest.log
# $(call timed,DIR,COMMANDS): runs COMMANDS, prints and records their time
# (in DIR/phase-time), and fails if they did.
timed = start=$$(date +%s); rc=0; $(2) || rc=$$?; t=$$(( $$(date +%s) - start )); \
        mkdir -p $(1); echo $$t > $(1)/phase-time; echo "---- $(1): $$t s, exit status $$rc"; \
        exit $$rc

.PHONY: help deps build install demo tour test test-all test-asan test-fuzz test-summary bench format clean

help:
	@echo "make demo   build and run the main job: ext4 on a blkstack RAM disk (root)"
	@echo "make tour   build and take a short tour of the blkstack CLI"
	@echo "make test   build and run all tests (ctest, ASan+UBSan unit tests, fuzzers)"

deps:
	@scripts/install-deps.sh

build: deps
	@$(call configure_build,$(BUILD),)

# The library, the headers for applications and drivers, pkg-config's
# blkstack.pc and the CLI (examples/tinyram builds against them).
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

demo: build
	@scripts/demo.sh $(BUILD)/blkstack

tour: build
	@scripts/tour.sh $(BUILD)/blkstack

test: deps
	@$(MAKE) --no-print-directory test-all test-asan test-fuzz
	@$(MAKE) --no-print-directory test-summary

test-all:
	$(call phase,[1/3] build and run every ctest test (all labels) in $(BUILD)/)
	@$(call timed,$(BUILD),$(call configure_build,$(BUILD),) && $(call ctest,$(BUILD),))

test-asan:
	$(call phase,[2/3] ASan + UBSan build and unit tests in $(BUILD_ASAN)/ (optional modules off))
	@$(call timed,$(BUILD_ASAN),\
	   $(call configure_build,$(BUILD_ASAN),-DBLKSTACK_SANITIZE=ON -DBLKSTACK_BENCH=OFF \
	                                        $(MODULES_OFF),unit_tests blkstack_cli) && \
	   ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	   $(call ctest,$(BUILD_ASAN),-L unit))

test-fuzz:
	$(call phase,[3/3] libFuzzer build with clang in $(BUILD_FUZZ)/; each target runs $(FUZZ_SECONDS) s)
	@$(call timed,$(BUILD_FUZZ),\
	   export CC=clang CXX=clang++ && \
	   $(call configure_build,$(BUILD_FUZZ),-DBLKSTACK_WERROR=OFF -DBLKSTACK_FUZZ=ON \
	                                        -DBLKSTACK_FUZZ_SECONDS=$(FUZZ_SECONDS)) && \
	   $(call ctest,$(BUILD_FUZZ),-L fuzz))

# One closing line over all three ctest runs, with the time of each phase.
test-summary:
	$(call phase,summary)
	@passed=0; failed=0; \
	 for d in $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ); do \
	   line=$$(grep -E 'tests passed, [0-9]+ tests failed out of' $$d/ctest.log | tail -1); \
	   printf '%-11s %4s s   %s\n' "$$d:" "$$(cat $$d/phase-time)" "$$line"; \
	   total=$$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$$line"); \
	   bad=$$(sed -E 's/.* ([0-9]+) tests failed.*/\1/' <<<"$$line"); \
	   passed=$$((passed + total - bad)); failed=$$((failed + bad)); \
	 done; \
	 echo "make test: $$passed passed, $$failed failed"; \
	 [[ $$failed -eq 0 ]]

bench: deps
	@bench/core-null.sh

format:
	@command -v clang-format >/dev/null || { echo "clang-format is not installed (apt-get install clang-format)"; exit 1; }; git ls-files "*.cc" "*.h" | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ) build-bench
