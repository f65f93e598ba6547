// The convolution kernels for AVX2 and FMA (x86-64-v3), on x86-64 with GCC.
#include "../simd.h"

#if LENETX_X86_GCC
#define LENETX_ISA avx2
#define LENETX_VECTOR_BYTES 32
#define LENETX_VECTOR_REGISTERS 16
#define LENETX_ISA_TARGET _Pragma("GCC target(\"arch=x86-64-v3\")")
#include "kernels.h"
#endif
