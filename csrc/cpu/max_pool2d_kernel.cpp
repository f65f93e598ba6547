// Max pooling with indices on the CPU, one (image, channel) plane per work item. The window scan
// order and the NaN rule follow PyTorch's, so the indices are identical to torch's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "block_loops.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

// RELU: the window's values are relu of the input's (relu_input).
template <typename T, bool RELU>
void forward_plane(const T* input, T* output, int64_t* indices, const Pool2dShape& s) {
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const MaxPoolTaps rows = max_pool_taps(oh, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.in_h);
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const MaxPoolTaps cols = max_pool_taps(ow, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.in_w);
      int64_t best_index = rows.first * s.in_w + cols.first;
      T best = -std::numeric_limits<T>::infinity();
      for (int64_t ih = rows.first; ih < rows.end; ih += s.dilation_h) {
        for (int64_t iw = cols.first; iw < cols.end; iw += s.dilation_w) {
          const int64_t index = ih * s.in_w + iw;
          const T value = RELU ? relu(input[index]) : input[index];
          // A NaN wins over any number, and a later NaN over an earlier one, as in PyTorch.
          if (value > best || std::isnan(value)) {
            best = value;
            best_index = index;
          }
        }
      }
      output[oh * s.out_w + ow] = best;
      indices[oh * s.out_w + ow] = best_index;
    }
  }
}

// The common 2x2 window at stride 2 without padding or dilation, every window inside the input:
// the four taps in the same scan order and with the same update rule as forward_plane, written
// without branches and run in blocks of 8 lanes (for_each_in_blocks_of_8), so that no scalar
// remainder with data-dependent branches runs. A row of fewer than 8 windows (the improved
// LeNet's pool2: 7) runs a block in place where it stays inside the plane, its results past the
// row overwritten by the next row's, and through a block of scratch, taps and results, where it
// would reach past the plane: through scratch, every row took about 110 cycles.
// RELU: relu is monotone, so the maximum of the relu'd taps is relu of the
// maximum, at the same tap, unless that maximum is <= 0: then all four relu to zeros (or -0.0)
// and the first tap wins the tie. Applied once per window, after the scan, the loop stays
// vectorized (relu on each tap's read did not).
template <typename T, bool RELU>
LENETX_SIMD_CLONES void forward_plane_2x2(const T* __restrict input, T* __restrict output,
                                          int64_t* __restrict indices, const Pool2dShape& s) {
  constexpr int64_t kBlock = 8;
  const bool short_rows = s.out_w < kBlock;
  alignas(64) T scratch_taps[2][2 * kBlock] = {};
  alignas(64) T scratch_output[kBlock];
  alignas(64) int64_t scratch_indices[kBlock];
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const int64_t row = 2 * oh * s.in_w;
    const T* top = input + row;
    const T* bottom = top + s.in_w;
    T* out = output + oh * s.out_w;
    int64_t* index_of = indices + oh * s.out_w;
    const bool scratch = short_rows && ((2 * oh + 1) * s.in_w + 2 * kBlock > s.in_h * s.in_w ||
                                        oh * s.out_w + kBlock > s.out_h * s.out_w);
    if (scratch) {
      std::copy_n(top, 2 * s.out_w, scratch_taps[0]);
      std::copy_n(bottom, 2 * s.out_w, scratch_taps[1]);
      top = scratch_taps[0], bottom = scratch_taps[1], out = scratch_output, index_of = scratch_indices;
    }
    for_each_in_blocks_of_8(std::max(s.out_w, kBlock), [&](int64_t ow) {
      const int64_t first = row + 2 * ow;
      // best starts at the first tap: what -inf with that tap's index becomes after one update.
      T best = top[2 * ow];
      int64_t best_index = first;
      const auto update = [&](T value, int64_t index) {
        const bool take = value > best || value != value;
        best = take ? value : best;
        best_index = take ? index : best_index;
      };
      update(top[2 * ow + 1], first + 1);
      update(bottom[2 * ow], first + s.in_w);
      update(bottom[2 * ow + 1], first + s.in_w + 1);
      if (RELU) {
        const bool none_positive = best <= T(0);
        best = none_positive ? relu(top[2 * ow]) : best;
        best_index = none_positive ? first : best_index;
      }
      out[ow] = best;
      index_of[ow] = best_index;
    });
    if (scratch) {
      std::copy_n(scratch_output, s.out_w, output + oh * s.out_w);
      std::copy_n(scratch_indices, s.out_w, indices + oh * s.out_w);
    }
  }
}

// Returns false when a window's index points outside the plane: only a hand-made indices tensor
// can, but for windows that hold no input element, which give no gradient whatever their index
// (checked only where `may_be_empty`). With `relu_of` (the plane's input, for relu_input) the
// finished plane, still in cache, drops its gradient where that input <= 0.
template <typename T>
bool backward_plane(const T* grad_output, const int64_t* indices, T* grad_input, const Pool2dShape& s,
                    bool may_be_empty, const T* relu_of) {
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  std::fill_n(grad_input, in_plane, T(0));
  for (int64_t i = 0; i < out_plane; ++i) {
    if (may_be_empty && max_pool_window_empty(s, i / s.out_w, i % s.out_w)) continue;
    const int64_t index = indices[i];
    if (index < 0 || index >= in_plane) return false;
    grad_input[index] += grad_output[i];
  }
  if (relu_of) {
#pragma omp simd
    for (int64_t i = 0; i < in_plane; ++i) grad_input[i] = relu_backward(grad_input[i], relu_of[i]);
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, bool relu_input) {
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                                     "lenetx.max_pool2d");
  const at::Tensor in = input.contiguous();
  at::Tensor output = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  at::Tensor indices = at::empty(output.sizes(), input.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_max_pool2d", [&] {
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    int64_t* idx_data = indices.mutable_data_ptr<int64_t>();
    const int64_t out_plane = s.out_h * s.out_w;
    using PlaneKernel = void (*)(const scalar_t*, scalar_t*, int64_t*, const Pool2dShape&);
    const PlaneKernel plane_kernel =
        windows_tile_2x2(s) ? (relu_input ? forward_plane_2x2<scalar_t, true> : forward_plane_2x2<scalar_t, false>)
                         : (relu_input ? forward_plane<scalar_t, true> : forward_plane<scalar_t, false>);
    parallel_for(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t plane) {
      plane_kernel(in_data + plane * s.in_h * s.in_w, out_data + plane * out_plane,
                   idx_data + plane * out_plane, s);
    });
  });
  return {output, indices};
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& indices, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode, bool relu_input) {
  constexpr const char* op = "lenetx.max_pool2d_backward";
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, op);
  check_pool2d_grad_output(grad_output, input, s, op);
  check_max_pool2d_indices(indices, grad_output, input, op);
  const at::Tensor go = grad_output.contiguous(), idx = indices.contiguous();
  const at::Tensor in = relu_input ? input.contiguous() : at::Tensor();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  std::atomic<bool> indices_valid{true};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_max_pool2d_backward", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    const int64_t* idx_data = idx.const_data_ptr<int64_t>();
    scalar_t* gi_data = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
    const bool may_be_empty = max_pool_windows_may_be_empty(s);
    parallel_for(s.batch * s.channels, in_plane, [&](int64_t plane) {
      if (!backward_plane<scalar_t>(go_data + plane * out_plane, idx_data + plane * out_plane,
                                    gi_data + plane * in_plane, s, may_be_empty,
                                    relu_input ? in.const_data_ptr<scalar_t>() + plane * in_plane : nullptr)) {
        indices_valid = false;
      }
    });
  });
  TORCH_CHECK(indices_valid, op, ": indices must lie in [0, H*W) = [0, ",
              input.size(2) * input.size(3), ") for input of size ", input.sizes());
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
}

}  // namespace lenetx::cpu
