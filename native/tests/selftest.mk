# Builds native/tests/selftest: the kernels as built for the target (every variant it compiles:
# AVX2 and portable on x86-64, NEON and portable on aarch64); the self-test compares them through
# the run-time dispatcher. CC selects the compiler (aarch64-linux-gnu-gcc to cross).
CC ?= cc
CFLAGS ?= -O2
LDFLAGS ?= -static
FLAGS = -std=c99 -Wall -Wextra -ffp-contract=off -Inative/include $(CFLAGS)
OUT ?= build/selftest
SRC = native/src/preprocess.c native/src/row_portable.c native/src/row_neon.c \
      native/src/row_gather.c native/src/dispatch.c

$(OUT)/selftest: native/tests/selftest.c native/src/*.c native/src/*.h native/include/lepton/*.h
	mkdir -p $(OUT)
	$(CC) $(FLAGS) $(LDFLAGS) native/tests/selftest.c $(SRC) -lm -o $@
