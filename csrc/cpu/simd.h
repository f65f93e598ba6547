#pragma once
// Two ways the CPU kernels run on the widest instructions a CPU has, with one binary that never
// executes an instruction the machine lacks:
// - the pooling kernels, plain loops that GCC vectorizes, are cloned for AVX-512 (x86-64-v4),
//   AVX2+FMA (x86-64-v3) and baseline x86-64, and the loader picks the clone per function;
// - the convolution kernels are written with vector types whose width is the ISA's register
//   (micro_gemm.h's Vec), a type a clone cannot change, so they are compiled once per ISA into
//   their own namespace (isa/) and the dispatcher is given one set (register_kernels.cpp).

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LENETX_X86_GCC 1
#define LENETX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LENETX_X86_GCC 0
#define LENETX_SIMD_CLONES
#endif

namespace lenetx::cpu {

// The instruction sets the convolution kernels are compiled for, lowest first.
enum class Isa { baseline, avx2, avx512 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

// The widest ISA this CPU runs that the kernels are compiled for.
inline Isa best_isa() {
#if LENETX_X86_GCC
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::avx2;
#endif
  return Isa::baseline;
}

// The convolution kernels' ISA in this process: best_isa(), or a lower one that the environment
// variable LENETX_CPU_ISA names (lenetx/_extension.py rejects other names), to test or measure
// each build on one machine. Read once, when the kernels are registered (register_kernels.cpp).
Isa convolution_isa();

}  // namespace lenetx::cpu
