# cserve: one Makefile.
#   make            build build/cserve
#   make test       build and run every test (unit + reference checks)
#   make asan       the same tests under AddressSanitizer + UBSan (build/asan/)
#   make deps       install build/test dependencies (Debian packages)
#   make models     regenerate the synthetic test checkpoints under build/models/
#   make reference  regenerate tests/data/ref with torch + transformers (developer machines only)

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2 -g
WARN     ?= -Wall -Wextra -Werror
SAN      ?=
PKGS     := jansson libpcre2-8
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -ljansson -lpcre2-8)
CFLAGS   += -std=c11 $(OPT) $(WARN) $(SAN) -D_GNU_SOURCE -Isrc $(PKG_CFLAGS) -MMD -MP
LDFLAGS  += $(SAN)
LDLIBS   += $(PKG_LIBS) -lm -lpthread

LIB_SRC  := $(wildcard src/engine/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC := $(wildcard tests/engine/test_*.c)
TEST_BIN := $(TEST_SRC:%.c=$(BUILD)/%)
TOOL_BIN := $(BUILD)/cs-synth

.PHONY: all test unit asan deps models reference clean
all: $(BUILD)/cserve $(TOOL_BIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/cserve: $(BUILD)/obj/src/main.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/cs-synth: $(BUILD)/obj/tools/synth_model.o $(BUILD)/obj/src/engine/err.o $(BUILD)/obj/src/engine/safetensors.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# Synthetic checkpoints are rebuilt from tests/data/ref/models.txt by the C generator
# (no torch needed); the reference outputs in tests/data/ref were computed on the same files.
models: $(TOOL_BIN)
	@CS_SYNTH=$(TOOL_BIN) sh tools/make_models.sh build/models

test: all $(TEST_BIN) models
	@BUILD=$(BUILD) sh tests/run_unit.sh $(TEST_BIN)

asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

deps:
	sh tools/deps.sh

reference: $(TOOL_BIN)
	CS_SYNTH=$(TOOL_BIN) sh tools/make_reference.sh

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
