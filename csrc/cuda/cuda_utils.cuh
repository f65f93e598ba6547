#pragma once
// Launch helpers shared by the CUDA kernels: every kernel runs on the current stream of the
// input's device, uses 64-bit indices, and is checked right after launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace lenetx::cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t work) {
  // Grid-stride loops cover the rest when work exceeds the grid.
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 1 << 20)));
}

#define LENETX_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Sum of `value` over the block, valid in thread 0. The tree order is fixed, so the result is
// the same from run to run (no atomics).
template <typename acc_t>
__device__ acc_t block_sum(acc_t value) {
  __shared__ acc_t partial[kThreads];
  partial[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  return partial[0];
}

}  // namespace lenetx::cuda
