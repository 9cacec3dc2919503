# duet: one GNU Makefile. `make help` lists the targets.
CC      ?= cc
O       ?= build
PORTABLE ?= 0
ifeq ($(PORTABLE),1)
ARCH    := -march=x86-64-v2
else
ARCH    := -march=native
endif
# OPT and SAN are the knobs for variant builds (debug, fuzz); CFLAGS/LDFLAGS from the
# command line are added on top, never replace the project's own flags.
OPT     ?= -O3
SAN     ?=
BASE_CFLAGS := $(OPT) $(SAN) $(ARCH) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter \
           -pthread -Iinclude -Isrc -MMD -MP -g
LDLIBS  := -ljansson -lpcre2-8 -lmicrohttpd -lcurl -lm -pthread $(SAN)

# Debian packages the build, tests and demo need (installed by `make deps`).
DEPS_PKGS := gcc make python3 python3-numpy libjansson-dev libpcre2-dev libmicrohttpd-dev libcurl4-openssl-dev
FUZZ_PKGS := clang libclang-rt-14-dev

# the library: one folder per layer (src/base, src/format, ... src/serve)
LIB_SRC  := $(wildcard src/*/*.c)
CMD_SRC  := $(wildcard cmd/*.c)
TEST_SRC := $(wildcard tests/*.c)
BENCH_SRC := $(wildcard bench/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(O)/%.o)
CMD_OBJ  := $(CMD_SRC:%.c=$(O)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(O)/%.o)

# ISA-specific kernel files get their own flags; dispatch happens at run time.
$(O)/src/engine/kernels_avx2.o:   XFLAGS := -mavx2 -mfma -mf16c
$(O)/src/engine/kernels_avx512.o: XFLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c
$(O)/src/engine/attn_avx2.o:      XFLAGS := -mavx2 -mfma -mf16c
$(O)/src/engine/act_avx2.o:       XFLAGS := -mavx2 -mfma
$(O)/src/engine/attn_avx512.o:    XFLAGS := -mavx512f -mavx512vl -mavx2 -mfma -mf16c

.PHONY: all deps deps-long test test-long demo serve bench debug fuzz clean help models mutation

all: $(O)/duet $(O)/run_tests

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(XFLAGS) $(CFLAGS) -c $< -o $@

# the web page is embedded with .incbin, which the compiler's dependency files do not see
$(O)/src/serve/web_page.o: web/index.html

$(O)/libduet.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(O)/duet: $(CMD_OBJ) $(O)/libduet.a
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(CMD_OBJ) $(O)/libduet.a $(LDLIBS)

$(O)/run_tests: $(TEST_OBJ) $(O)/libduet.a
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(O)/libduet.a $(LDLIBS)

$(O)/bench_collab: bench/bench_collab.c $(O)/libduet.a include/duet.h
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ bench/bench_collab.c $(O)/libduet.a $(LDLIBS)

# the serving load generator talks HTTP only: it does not link the library
$(O)/bench_serve: bench/bench_serve.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ bench/bench_serve.c $(LDLIBS)

$(O)/gen_demo_task: tools/gen_demo_task.c src/base/common.h
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ tools/gen_demo_task.c

deps:
	@tools/deps.sh $(DEPS_PKGS)

## test: build and run the unit and model tests (the README's test command)
test: deps all
	DUET_BIN=$(O)/duet $(O)/run_tests

## test-long: slower checks (real models, longer generations) and the web page in a browser
test-long: deps deps-long all
	DUET_BIN=$(O)/duet DUET_LONG=1 $(O)/run_tests
	sh tests/browser/run.sh $(O)/duet $(O)/browser-screenshot.png
	sh tests/openai/run.sh $(O)/duet

# Only test-long needs a browser: Debian's chromium and playwright-core from npm
# (version pinned in tests/browser/package.json, installed under tests/browser/node_modules),
# and the official openai client (pinned in tests/openai/package.json) for its API test.
# (node and npm from Debian unless some other node install is already on the PATH)
deps-long:
	@tools/deps.sh chromium
	@command -v npm >/dev/null || tools/deps.sh nodejs npm
	@[ -d tests/browser/node_modules/playwright-core ] || \
	    (cd tests/browser && npm install --no-audit --no-fund --silent)
	@[ -d tests/openai/node_modules/openai ] || \
	    (cd tests/openai && npm install --no-audit --no-fund --silent)

## demo: Co-LLM on the embedded demo models (models/), then the held-out evaluation table
demo: deps $(O)/duet
	@sh tools/demo.sh $(O)/duet

## serve: the demo models (models/: the jointly trained base and head, as make demo shows them,
## with the expert) behind duet serve's web page on loopback; PORT=9000 moves it
PORT ?= 8080
serve: deps $(O)/duet
	@echo "make serve: open http://127.0.0.1:$(PORT)/ in a browser (Ctrl-C stops the server)"
	$(O)/duet serve -m models/demo-joint.gguf --expert models/demo-expert.gguf \
	    --head models/demo-joint.head.gguf --host 127.0.0.1 --port $(PORT)

## models: retrain the embedded demo models under models/ from seeds (bit for bit)
models: deps $(O)/duet $(O)/gen_demo_task
	@sh tools/make_models.sh $(O)/duet $(O)/gen_demo_task models

## bench: benchmarks, results written under bench/results/ (bench_serve is built for
## bench/serve_side_by_side.sh, which needs a llama-server binary and runs on its own)
bench: deps $(O)/duet $(O)/bench_collab $(O)/bench_serve
	@sh bench/run.sh $(O)/duet

## mutation: plant each bug of tests/mutations.txt in a scratch copy and report the kill rate
## (not part of make test: it rebuilds once per mutation; MUTATION_ARGS=--full runs every test)
mutation: deps
	python3 tools/mutation.py $(MUTATION_ARGS)

## debug: build with ASan + UBSan into build-debug/ and run the unit tests there
debug:
	$(MAKE) O=build-debug OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	DUET_BIN=build-debug/duet ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-debug/run_tests

## fuzz: build libFuzzer harnesses into build-fuzz/ (run: build-fuzz/fuzz_gguf -max_total_time=600;
## fuzz_tokenizer reads ../shared/tokenizers/vocab, or DUET_FUZZ_VOCAB=a.gguf:b.gguf)
fuzz:
	@tools/deps.sh $(FUZZ_PKGS)
	$(MAKE) O=build-fuzz CC=clang OPT=-O1 SAN="-fsanitize=fuzzer-no-link,address,undefined" build-fuzz/libduet.a
	@for f in fuzz/*.c; do n=$$(basename $$f .c); \
	    echo "clang fuzz $$n"; \
	    clang -O1 -g -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Isrc \
	        $$f build-fuzz/libduet.a -ljansson -lpcre2-8 -lmicrohttpd -lcurl -lm -pthread \
	        -o build-fuzz/$$n || exit 1; done

clean:
	rm -rf build build-debug build-fuzz

help:
	@echo "make            build build/duet and build/run_tests"
	@echo "make deps       install missing Debian packages ($(DEPS_PKGS))"
	@echo "make deps-long  chromium and playwright-core for the browser test of make test-long"
	@echo "make test       run the tests (ends with 'N passed, N failed')"
	@echo "make test-long  also the slow checks and the browser test (screenshot in build/)"
	@echo "make demo       run the demo"
	@echo "make serve      the demo models behind the web page on http://127.0.0.1:8080/ (PORT=N)"
	@echo "make models     retrain the embedded demo models (models/) from seeds"
	@echo "make bench      run benchmarks, CSV under bench/results/"
	@echo "make mutation   plant the bugs of tests/mutations.txt one by one; kill rate and survivors"
	@echo "make debug      ASan+UBSan build in build-debug/ and run the tests"
	@echo "make fuzz       libFuzzer harnesses in build-fuzz/"
	@echo "make clean      remove build outputs"
	@echo "PORTABLE=1      build for x86-64-v2 instead of -march=native"

-include $(LIB_OBJ:.o=.d) $(CMD_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
