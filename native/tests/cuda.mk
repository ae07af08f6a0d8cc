# Builds build/cuda/bench (native/tests/cuda_bench.cu): the CUDA preprocess timed and checked
# against the CPU kernel. CUDA_ARCH: sm_87 for Jetson Orin, sm_90 for an H100.
NVCC ?= nvcc
CC ?= cc
CUDA_ARCH ?= sm_87
OUT ?= build/cuda
C_SOURCES = preprocess row_portable row_neon row_gather dispatch
C_OBJECTS = $(C_SOURCES:%=$(OUT)/%.o)

$(OUT)/bench: native/tests/cuda_bench.cu native/cuda/preprocess.cu $(C_OBJECTS)
	$(NVCC) -O3 -arch=$(CUDA_ARCH) -std=c++17 --fmad=false -Inative/include -o $@ native/tests/cuda_bench.cu \
	    native/cuda/preprocess.cu $(C_OBJECTS)

$(OUT)/%.o: native/src/%.c native/src/*.h native/include/lepton/*.h
	mkdir -p $(OUT)
	$(CC) -std=c99 -O3 -ffp-contract=off -Inative/include -c $< -o $@
