// The convolution kernels for AVX-512 (x86-64-v4), on x86-64 with GCC.
#include "../simd.h"

#if LENETX_X86_GCC
#define LENETX_ISA avx512
#define LENETX_VECTOR_BYTES 64
#define LENETX_VECTOR_REGISTERS 32
#define LENETX_ISA_TARGET _Pragma("GCC target(\"arch=x86-64-v4\")")
#include "kernels.h"
#endif
