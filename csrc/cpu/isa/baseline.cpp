// The convolution kernels for the instructions every CPU of the build's target runs (SSE2 on
// x86-64): the only copy on other compilers and architectures.
#define LENETX_ISA baseline
#define LENETX_VECTOR_BYTES 16
#define LENETX_VECTOR_REGISTERS 16
#define LENETX_ISA_TARGET
#include "kernels.h"
