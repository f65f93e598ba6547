// The convolution and fully connected kernels for one instruction set. avx512.cpp, avx2.cpp and
// baseline.cpp each define LENETX_ISA, the namespace this copy of the kernels is compiled into (so
// the copies never meet at link time), and LENETX_ISA_TARGET, a pragma switching GCC to that ISA,
// then include this; register_kernels.cpp hands the dispatcher one copy.
//
// What the rest of the library shares (torch's and the standard headers, the shape checks, the
// thread and loop helpers) is included before the switch: their inline functions are emitted in
// every object and the linker keeps one, which must not hold instructions a CPU may lack.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../pooling_windows.h"
#include "../../shape_checks.h"
#include "../parallel.h"
#include "../simd.h"

#pragma GCC push_options
LENETX_ISA_TARGET

#include "../conv2d_ops.h"
#include "../conv2d_relu_pool2d_ops.h"
#include "../mlp_ops.h"

namespace lenetx::cpu::LENETX_ISA {

void register_kernels(torch::Library& m) {
  register_conv2d(m);
  register_conv2d_relu_pool2d(m);
  register_mlp(m);
}

}  // namespace lenetx::cpu::LENETX_ISA

#pragma GCC pop_options
