#pragma once
// Loops over blocks of whole vectors. Templates only, so that each instantiation takes the
// instruction set of the code it is included into: the convolution kernels include this after
// switching ISA (isa/kernels.h), and GCC inlines the loop bodies, ISA code, only into ISA code.
#include <algorithm>
#include <cstdint>

namespace lenetx::cpu {

// block(start) for blocks [start, start + size) that cover [0, count), count >= size, with no
// remainder: the last block ends at count and may redo part of the one before, so block must be
// idempotent.
template <typename Block>
inline __attribute__((always_inline)) void for_each_block(int64_t count, int64_t size, const Block& block) {
  for (int64_t start = 0;; start += size) {
    start = std::min(start, count - size);
    block(start);
    if (start + size >= count) break;
  }
}

// body(i) for i in [0, count), in blocks of exactly 8 vector lanes (simdlen(8)), so that no
// scalar remainder runs: a row of LeNet's windows is 14 wide, which a plain vector loop runs as
// 8 lanes and 6 scalar iterations with branches (16 lanes under AVX-512 leave it all scalar).
// Blocks as for_each_block's, so body must be idempotent; a count under 8 runs as a plain loop.
template <typename Body>
inline __attribute__((always_inline)) void for_each_in_blocks_of_8(int64_t count, const Body& body) {
  constexpr int64_t kBlock = 8;
  if (count < kBlock) {
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
  for_each_block(count, kBlock, [&](int64_t start) __attribute__((always_inline)) {
#pragma omp simd simdlen(8)
    for (int64_t i = start; i < start + kBlock; ++i) body(i);
  });
}

}  // namespace lenetx::cpu
