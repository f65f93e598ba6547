// Hands the dispatcher the convolution and fully connected kernels compiled for the ISA
// convolution_isa() picks.
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "simd.h"

namespace lenetx::cpu {

namespace baseline {
void register_kernels(torch::Library& m);
}
#if LENETX_X86_GCC
namespace avx2 {
void register_kernels(torch::Library& m);
}
namespace avx512 {
void register_kernels(torch::Library& m);
}
#endif

Isa convolution_isa() {
  static const Isa isa = [] {
    const Isa best = best_isa();
    const char* requested = std::getenv("LENETX_CPU_ISA");
    if (requested != nullptr)
      for (const Isa lower : {Isa::baseline, Isa::avx2})
        if (std::strcmp(requested, isa_name(lower)) == 0 && lower < best) return lower;
    return best;
  }();
  return isa;
}

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  switch (convolution_isa()) {
#if LENETX_X86_GCC
    case Isa::avx512: avx512::register_kernels(m); break;
    case Isa::avx2: avx2::register_kernels(m); break;
#endif
    default: baseline::register_kernels(m); break;
  }
}

}  // namespace lenetx::cpu
