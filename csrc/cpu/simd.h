#pragma once
// The CPU kernels are built for baseline x86-64 and cloned for AVX2+FMA (x86-64-v3) and
// AVX-512 (x86-64-v4); the loader picks the widest clone the CPU runs, so one binary never
// executes an instruction the machine lacks.

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LENETX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LENETX_SIMD_CLONES
#endif

namespace lenetx::cpu {

inline const char* simd_capability() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
  return "x86-64";
#else
  return "default";
#endif
}

}  // namespace lenetx::cpu
