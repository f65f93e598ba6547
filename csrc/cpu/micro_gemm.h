#pragma once
// The register tile that the fast convolution paths share: C[MB][NV vectors] accumulated over a
// reduction of `depth` steps, each step broadcasting MB values of A against NV vectors read from
// one row of B. Rows of B are given by offset, so the same tile serves a matrix product (rows
// evenly spaced) and a convolution read straight out of an image (row k starts where reduction
// step k, one tap of one input channel, reads).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// The vector registers of the instruction set this copy of the kernels is compiled for, which
// its isa/*.cpp defines: GCC keeps a vector extension type in registers only where the ISA has
// registers of its width; a wider one lives in memory, every operation split into loads and
// stores (on AVX2, 64-byte vectors ran the register tile 10 to 60 times slower than 32-byte ones).
// Not from __AVX2__ or __AVX512F__: g++ leaves those macros as the command line set them under
// `#pragma GCC target`, so every copy took the baseline's 16 bytes (NOTES, section 22).
constexpr int kVectorBytes = LENETX_VECTOR_BYTES, kVectorRegisters = LENETX_VECTOR_REGISTERS;

// Accumulators of a register tile: three quarters of the registers, the rest holding a step's
// vectors of B and the broadcast value of A.
constexpr int kTileAccumulators = kVectorRegisters * 3 / 4;

// Rows of a register tile NV vectors wide. One vector wide, the tile loads a vector per
// multiply-add, and two thirds of the accumulators (16 of AVX-512's 24) run it best (measured).
// Wider, as many rows as the accumulators allow while a step's NV vectors of B and the broadcast
// value still fit beside them: AVX2's 3x4 tile (17 registers) kept an accumulator on the stack,
// a store and a reload on its chain every step (benchmarks/NOTES.md, section 15).
constexpr int tile_rows(int nv) {
  return nv == 1 ? kTileAccumulators * 2 / 3
                 : std::max(1, std::min(kTileAccumulators, kVectorRegisters - nv - 1) / nv);
}

// A register of T, but never fewer than 8 lanes: the kernels' layouts (transposes, half-vector
// pooling) are written for 8 or 16. So doubles under AVX2, and the baseline build, use vectors
// of two registers: right, but slow (the fast paths are built for float on AVX2 and AVX-512).
// GCC's vector extensions keep a tile of these in registers, which it does not reliably do for
// plain arrays.
template <typename T>
struct Vec {
  static constexpr int kLanes = std::max<int>(kVectorBytes / sizeof(T), 8);
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
};

// Integers of T's size, and a vector of them: lane masks and shuffle indices for Vec<T>.
template <typename T>
struct LaneMask {
  using Lane = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef Lane type __attribute__((vector_size(sizeof(typename Vec<T>::type))));
};

// Unaligned load; by reference, since returning a vector wider than the ISA's registers by value
// changes the ABI (-Wpsabi).
template <typename V, typename T>
__attribute__((always_inline)) inline void load_vec(V& v, const T* p) {
  std::memcpy(&v, p, sizeof(V));
}

template <typename V, typename T>
__attribute__((always_inline)) inline void store_vec(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// A packed for one tile, step after step: the MB values of step k at a[k * MB .. k * MB + MB).
// One pointer with constant displacements: a tile whose A rows lie at a runtime stride apart
// needs a register per row, and the address moves that spill from them ran the 16x1 tile at
// about two thirds of its speed (benchmarks/NOTES.md, section 6).
template <typename T, int MB>
struct PackedRows {
  const T* a;
  T operator()(int m, int64_t k) const { return a[k * MB + m]; }
};

// A's rows for one tile each at its own address, steps contiguous: rows read in place.
template <typename T, int MB>
struct RowPointers {
  const T* row[MB];
  T operator()(int m, int64_t k) const { return row[m][k]; }
};

// A's rows Stride values apart, steps contiguous: one pointer with constant displacements, as
// PackedRows, for rows read in place.
template <typename T, int Stride>
struct StridedRows {
  const T* a;
  T operator()(int m, int64_t k) const { return a[m * Stride + k]; }
};

// A's rows for one tile each at its own address, every row read at the same offset per step:
// a window of the input per output pixel, read through the offsets of the kernel's taps.
template <typename T, int MB>
struct WindowRows {
  const T* row[MB];
  const int64_t* offsets;
  T operator()(int m, int64_t k) const { return row[m][offsets[k]]; }
};

// c[m * c_row + n] = sum over k < depth of a(m, k) * b[b_rows[k] + n], for n < NV *
// Vec<T>::kLanes and `a` one of the accessors above; by default the tile's rows are contiguous.
// The sum runs over k in order, so a tile is bit-identical run to run.
template <typename T, int MB, int NV, typename ARows>
void gemm_tile(const ARows& a, const T* __restrict b, const int64_t* __restrict b_rows,
               int64_t depth, T* __restrict c, int64_t c_row = NV * Vec<T>::kLanes) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[MB][NV];
  const auto step = [&](int64_t k, auto accumulate) __attribute__((always_inline)) {
    const T* row = b + b_rows[k];
    V x[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) load_vec(x[v], row + v * L);
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const T scale = a(m, k);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) accumulate(acc[m][v], scale * x[v]);
    }
  };
  // The first step's products start the sums, rather than multiply-adds onto zeroed registers
  // (the same sums, but for the sign of a zero one): LeNet-5's transposed grad_input, 16 steps a
  // tile, ran its tiles at 75 % of the multiply-add peak the one way and 90 % the other
  // (benchmarks/NOTES.md, section 24).
  if (depth > 0)
    step(0, [](V& sum, const V& product) __attribute__((always_inline)) { sum = product; });
  else
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] = V{};
  for (int64_t k = 1; k < depth; ++k)
    step(k, [](V& sum, const V& product) __attribute__((always_inline)) { sum += product; });
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) store_vec(c + m * c_row + v * L, acc[m][v]);
}

// acc[m * TB + t] += a[m * a_m + p] * b[b_offsets[t] + p] for p < len, a multiple of
// Vec<T>::kLanes, lane by lane: MB x TB dot products at once, vectorized along p, whose lanes the
// caller adds once all its images have run, in a fixed order. The sums stay in memory between
// calls, so that a caller can run every tap block over one image while that image's rows of a
// are in L1: run the other way round, with the sums in registers over all the images of a chunk,
// LeNet-5's fused conv1 backward read 172 KB of a from L2 once per tap block
// (benchmarks/NOTES.md, section 26).
template <typename T, int MB, int TB>
void dot_tile(const T* __restrict a, int64_t a_m, const T* __restrict b, const int64_t* __restrict b_offsets,
              int64_t len, typename Vec<T>::type* __restrict acc_memory) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[MB][TB];
  const T* b_tap[TB];
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) acc[m][t] = acc_memory[m * TB + t];
#pragma GCC unroll 8
  for (int t = 0; t < TB; ++t) b_tap[t] = b + b_offsets[t];
  for (int64_t p = 0; p < len; p += L) {
    V rows[MB];
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      load_vec(rows[m], a + m * a_m + p);
      // Held in a register for all TB taps on AVX-512: GCC folded each row's load into every
      // multiply-add that uses it, 21 loads against 18 multiply-adds for 6 x 3, and LeNet-5's
      // fused conv1 backward ran 1.1x as long. On AVX2, whose 3 x 4 tile fills all 16
      // registers, holding them ran it 1.1x longer (NOTES, section 25).
      if constexpr (kVectorRegisters == 32 && sizeof(V) == kVectorBytes) asm("" : "+v"(rows[m]));
    }
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      V x;
      load_vec(x, b_tap[t] + p);
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m) acc[m][t] += rows[m] * x;
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) acc_memory[m * TB + t] = acc[m][t];
}

}  // namespace lenetx::cpu::LENETX_ISA

