#pragma once
// Fully connected layers as gemm's products, and their bias and ReLU: LeNet-5's conv3 (a kernel
// that covers its whole input, conv2d_unfolded.h) and the fused stack of them (mlp_ops.h). x holds `rows` rows of
// in_features values, x_stride apart; weight is [out_features][in_features], contiguous; the
// outputs' rows lie out_stride apart. Every product reads and writes the tensors in place.
#include <cstdint>

#include "../pooling_windows.h"
#include "gemm.h"

namespace lenetx::cpu::LENETX_ISA {

// out = x weight^T.
template <typename T>
void linear_forward(int64_t rows, int64_t in_features, int64_t out_features, const T* x, int64_t x_stride,
                    const T* weight, T* out, int64_t out_stride) {
  const RowMajor<T> w{weight, in_features, in_features}, a{x, x_stride, in_features};
  // One row: the weight times the row's column, the weight's rows read in place. The product by
  // the weight transposed packs all of it for one row of outputs: LeNet-5's conv3 at batch 1 took
  // 39-40 us hot, 55-72 after a sweep of the cache (benchmarks/NOTES.md, section 21).
  if (rows == 1)
    gemm(out_features, int64_t{1}, in_features, w, transpose(a), out, int64_t{1});
  else
    gemm(rows, out_features, in_features, a, transpose(w), out, out_stride);
}

// out[n][j] += bias[j] (when there is one), then relu(out) when with_relu.
template <typename T>
void add_bias_relu(T* out, int64_t rows, int64_t features, const T* bias, bool with_relu) {
  if (!bias && !with_relu) return;
  for (int64_t n = 0; n < rows; ++n) {
    T* row = out + n * features;
#pragma omp simd
    for (int64_t j = 0; j < features; ++j) {
      const T value = bias ? row[j] + bias[j] : row[j];
      row[j] = with_relu ? relu(value) : value;
    }
  }
}

// grad_x = grad_out weight.
template <typename T>
void linear_grad_input(int64_t rows, int64_t in_features, int64_t out_features, const T* grad_out,
                       int64_t grad_out_stride, const T* weight, T* grad_x, int64_t grad_x_stride) {
  gemm(rows, in_features, out_features, RowMajor<T>{grad_out, grad_out_stride, out_features},
       RowMajor<T>{weight, in_features, in_features}, grad_x, grad_x_stride);
}

// grad_weight = grad_out^T x, [out_features][in_features].
template <typename T>
void linear_grad_weight(int64_t rows, int64_t in_features, int64_t out_features, const T* grad_out,
                        int64_t grad_out_stride, const T* x, int64_t x_stride, T* grad_weight) {
  const RowMajor<T> go{grad_out, grad_out_stride, out_features};
  gemm(out_features, in_features, rows, transpose(go), RowMajor<T>{x, x_stride, in_features}, grad_weight,
       in_features);
}

}  // namespace lenetx::cpu::LENETX_ISA
