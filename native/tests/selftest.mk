# Builds native/tests/selftest: the kernels as built for the target (NEON on aarch64) plus the
# portable reference under ref_* names. CC selects the compiler (aarch64-linux-gnu-gcc to cross).
CC ?= cc
CFLAGS ?= -O2
LDFLAGS ?= -static
FLAGS = -std=c99 -Wall -Wextra -ffp-contract=off -Inative/include $(CFLAGS)
REF = -DLK_FORCE_PORTABLE -Dlk_row_accumulate=ref_row_accumulate -Dlk_yuv_to_rgb=ref_yuv_to_rgb \
      -Dlk_preprocess=ref_preprocess -Dlk_row_bilerp=ref_row_bilerp -Dlk_row_bilerp_uv=ref_row_bilerp_uv \
      -Dlk_row_pack3=ref_row_pack3 -Dlk_row_area_h=ref_row_area_h -Dlk_row_area_h8=ref_row_area_h8 \
      -Dlk_row_area_v=ref_row_area_v -Dlk_pair_plan_build=ref_pair_plan_build \
      -Dlk_row_bilerp_planned=ref_row_bilerp_planned -Dlk_row_nv12_rgb_planned=ref_row_nv12_rgb_planned \
      -Dlk_row_yuv_rgb_pack=ref_row_yuv_rgb_pack \
      -Dlk_row_div_round_i32=ref_row_div_round_i32
OUT ?= build/selftest

$(OUT)/selftest: native/tests/selftest.c native/src/*.c native/src/*.h native/include/lepton/*.h
	mkdir -p $(OUT)
	$(CC) $(FLAGS) $(REF) -c native/src/row_portable.c -o $(OUT)/ref_rows.o
	$(CC) $(FLAGS) $(REF) -c native/src/preprocess.c -o $(OUT)/ref_preprocess.o
	$(CC) $(FLAGS) $(REF) -c native/src/row_gather.c -o $(OUT)/ref_gather.o
	$(CC) $(FLAGS) $(LDFLAGS) native/tests/selftest.c native/src/preprocess.c native/src/row_portable.c \
	    native/src/row_neon.c native/src/row_gather.c native/src/variant.c $(OUT)/ref_rows.o \
	    $(OUT)/ref_gather.o $(OUT)/ref_preprocess.o -lm -o $@
