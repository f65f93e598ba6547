// Average pooling on the CPU, a run of (image, channel) planes per thread.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

// The windows along each axis and every output's divisor, worked out once per call rather than
// per output element. An empty window (all padding, with count_include_pad=False) sums nothing,
// so it outputs 0 and takes no gradient; its divisor is 1, so that no loop needs a branch.
template <typename T>
struct AvgPoolPlan {
  std::vector<AvgPoolSpan> rows, cols;
  std::vector<T> divisors;
  // Every column window is [ow * 2, ow * 2 + 2): the common 2x2/stride-2 pooling, which the
  // kernels do with contiguous loads instead of a loop per window.
  bool pairs_of_columns;

  AvgPoolPlan(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override) {
    for (int64_t oh = 0; oh < s.out_h; ++oh)
      rows.push_back(avg_pool_span(oh, s.kernel_h, s.stride_h, s.pad_h, s.in_h));
    pairs_of_columns = s.kernel_w == 2 && s.stride_w == 2 && s.pad_w == 0;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      cols.push_back(avg_pool_span(ow, s.kernel_w, s.stride_w, s.pad_w, s.in_w));
      pairs_of_columns = pairs_of_columns && cols.back().end - cols.back().begin == 2;
    }
    for (const AvgPoolSpan& r : rows)
      for (const AvgPoolSpan& c : cols) {
        const bool empty = r.begin >= r.end || c.begin >= c.end;
        divisors.push_back(empty ? T(1) : static_cast<T>(avg_pool_divisor(r, c, count_include_pad, divisor_override)));
      }
  }
};

// One plane: each output row first sums its window's input rows (contiguous, vectorized), then
// each output sums its columns of that row sum. RELU: sums relu of each input value.
template <typename T, bool RELU>
LENETX_SIMD_CLONES void forward_plane(const T* __restrict input, T* __restrict output,
                                      T* __restrict row_sum, const Pool2dShape& s,
                                      const AvgPoolPlan<T>& plan) {
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const AvgPoolSpan& r = plan.rows[oh];
    T* out = output + oh * s.out_w;
    const T* divisors = plan.divisors.data() + oh * s.out_w;
    std::fill_n(row_sum, s.in_w, T(0));
    for (int64_t ih = r.begin; ih < r.end; ++ih) {
      const T* in = input + ih * s.in_w;
#pragma omp simd
      for (int64_t iw = 0; iw < s.in_w; ++iw) row_sum[iw] += RELU ? relu(in[iw]) : in[iw];
    }
    if (plan.pairs_of_columns) {
#pragma omp simd
      for (int64_t ow = 0; ow < s.out_w; ++ow) out[ow] = (row_sum[2 * ow] + row_sum[2 * ow + 1]) / divisors[ow];
    } else {
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        T sum = 0;
        for (int64_t iw = plan.cols[ow].begin; iw < plan.cols[ow].end; ++iw) sum += row_sum[iw];
        out[ow] = sum / divisors[ow];
      }
    }
  }
}

// One plane: each output row spreads its shares over one input row's worth of columns, which is
// then added to every input row the row's windows cover. With `relu_of` (the plane's input, for
// relu_input) the finished plane, still in cache, drops its gradient where that input <= 0.
template <typename T>
LENETX_SIMD_CLONES void backward_plane(const T* __restrict grad_output, T* __restrict grad_input,
                                       T* __restrict spread, const Pool2dShape& s,
                                       const AvgPoolPlan<T>& plan, const T* __restrict relu_of) {
  std::fill_n(grad_input, s.in_h * s.in_w, T(0));
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const AvgPoolSpan& r = plan.rows[oh];
    if (r.begin >= r.end) continue;
    const T* go = grad_output + oh * s.out_w;
    const T* divisors = plan.divisors.data() + oh * s.out_w;
    std::fill_n(spread, s.in_w, T(0));
    if (plan.pairs_of_columns) {
#pragma omp simd
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        const T share = go[ow] / divisors[ow];
        spread[2 * ow] = share;
        spread[2 * ow + 1] = share;
      }
    } else {
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        const T share = go[ow] / divisors[ow];
        for (int64_t iw = plan.cols[ow].begin; iw < plan.cols[ow].end; ++iw) spread[iw] += share;
      }
    }
    for (int64_t ih = r.begin; ih < r.end; ++ih) {
      T* gi = grad_input + ih * s.in_w;
#pragma omp simd
      for (int64_t iw = 0; iw < s.in_w; ++iw) gi[iw] += spread[iw];
    }
  }
  if (relu_of) {
#pragma omp simd
    for (int64_t i = 0; i < s.in_h * s.in_w; ++i) grad_input[i] = relu_backward(grad_input[i], relu_of[i]);
  }
}

// condition ? 0 : value by masking the bits. The 2x2 loops below run a row's windows as one
// vector loop with loads and stores two apart, which GCC left scalar around relu's and
// relu_backward's ternaries, with a compare and jump that random signs mispredict half the time:
// relu_input ran 6-10x slower (benchmarks/NOTES.md, section 11). Elsewhere (the blocks of 8
// lanes in the max pooling) the ternaries vectorize and this does not.
template <typename T>
inline T zero_if(bool condition, T value) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const Bits keep = static_cast<Bits>(static_cast<Bits>(condition) - 1);  // all ones unless condition
  return __builtin_bit_cast(T, static_cast<Bits>(__builtin_bit_cast(Bits, value) & keep));
}

// The one divisor of windows that tile the input 2x2 (windows_tile_2x2: each whole, none in the
// padding), without the plan's table of every window's, whose building cost a batch-1 pooling
// as much as its kernel.
template <typename T>
T tiled_2x2_divisor(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override) {
  return static_cast<T>(avg_pool_divisor(avg_pool_span(0, s.kernel_h, s.stride_h, s.pad_h, s.in_h),
                                         avg_pool_span(0, s.kernel_w, s.stride_w, s.pad_w, s.in_w),
                                         count_include_pad, divisor_override));
}

// forward_plane for 2x2 windows at stride 2 that tile the input: adding in forward_plane's order
// (each column's two rows, then the pair of columns), then dividing the plane's sums in one loop.
// A row has fewer windows than a vector has lanes (14 at LeNet-5's pool1, 5 at its pool2), and
// dividing row by row left them to the loop's scalar tail, a divss each.
template <typename T, bool RELU>
LENETX_SIMD_CLONES void forward_plane_2x2(const T* __restrict input, T* __restrict output, const Pool2dShape& s,
                                          T divisor) {
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const T* top = input + 2 * oh * s.in_w;
    const T* bottom = top + s.in_w;
    T* out = output + oh * s.out_w;
#pragma omp simd
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const auto read = [](T value) { return RELU ? zero_if(value < T(0), value) : value; };  // relu
      const T left = T(0) + read(top[2 * ow]) + read(bottom[2 * ow]);
      const T right = T(0) + read(top[2 * ow + 1]) + read(bottom[2 * ow + 1]);
      out[ow] = left + right;
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < s.out_h * s.out_w; ++i) output[i] /= divisor;
}

// backward_plane for 2x2 windows at stride 2 that tile the input from its corner (no padding,
// no window past the edge): every input takes at most one share, so each is written once
// instead of zero-filled, then added to and then masked. The plane's shares are divided first,
// in one loop, for forward_plane_2x2's reason, into `shares` (a plane of grad_output's size).
// 0 + share, as the general path computes it, keeps its -0.0 -> +0.0.
template <typename T, bool RELU>
LENETX_SIMD_CLONES void backward_plane_2x2(const T* __restrict grad_output, T* __restrict grad_input,
                                           T* __restrict shares, const Pool2dShape& s, T divisor,
                                           const T* __restrict relu_of) {
#pragma omp simd
  for (int64_t i = 0; i < s.out_h * s.out_w; ++i) shares[i] = T(0) + grad_output[i] / divisor;
  for (int64_t r = 0; r < 2 * s.out_h; ++r) {
    T* gi = grad_input + r * s.in_w;
    const T* share = shares + r / 2 * s.out_w;
    const T* x = RELU ? relu_of + r * s.in_w : nullptr;
#pragma omp simd
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      // relu_backward
      gi[2 * ow] = RELU ? zero_if(x[2 * ow] <= T(0), share[ow]) : share[ow];
      gi[2 * ow + 1] = RELU ? zero_if(x[2 * ow + 1] <= T(0), share[ow]) : share[ow];
    }
    std::fill(gi + 2 * s.out_w, gi + s.in_w, T(0));
  }
  std::fill(grad_input + 2 * s.out_h * s.in_w, grad_input + s.in_h * s.in_w, T(0));
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override, bool relu_input) {
  const Pool2dShape s = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                         divisor_override, "lenetx.avg_pool2d");
  const at::Tensor in = input.contiguous();
  at::Tensor output = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_avg_pool2d", [&] {
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    if (windows_tile_2x2(s)) {
      const auto plane_kernel = relu_input ? forward_plane_2x2<scalar_t, true> : forward_plane_2x2<scalar_t, false>;
      const scalar_t divisor = tiled_2x2_divisor<scalar_t>(s, count_include_pad, divisor_override.value_or(0));
      parallel_for(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t plane) {
        plane_kernel(in_data + plane * s.in_h * s.in_w, out_data + plane * s.out_h * s.out_w, s, divisor);
      });
      return;
    }
    const AvgPoolPlan<scalar_t> plan(s, count_include_pad, divisor_override.value_or(0));
    const auto plane_kernel = relu_input ? forward_plane<scalar_t, true> : forward_plane<scalar_t, false>;
    parallel_for_ranges(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t first, int64_t last) {
      Scratch<scalar_t> row_sum(s.in_w, scalar_t(0));
      for (int64_t plane = first; plane < last; ++plane)
        plane_kernel(in_data + plane * s.in_h * s.in_w, out_data + plane * s.out_h * s.out_w, row_sum.data(), s,
                     plan);
    });
  });
  return output;
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override, bool relu_input) {
  constexpr const char* op = "lenetx.avg_pool2d_backward";
  const Pool2dShape s =
      check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override, op);
  check_pool2d_grad_output(grad_output, input, s, op);
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor in = relu_input ? input.contiguous() : at::Tensor();
  at::Tensor grad_input = at::empty({s.batch, s.channels, s.in_h, s.in_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_avg_pool2d_backward", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* gi_data = grad_input.mutable_data_ptr<scalar_t>();
    const scalar_t* relu_of = relu_input ? in.const_data_ptr<scalar_t>() : nullptr;
    if (windows_tile_2x2(s)) {
      const auto plane_kernel = relu_input ? backward_plane_2x2<scalar_t, true> : backward_plane_2x2<scalar_t, false>;
      const scalar_t divisor = tiled_2x2_divisor<scalar_t>(s, count_include_pad, divisor_override.value_or(0));
      parallel_for_ranges(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t first, int64_t last) {
        Scratch<scalar_t> shares(s.out_h * s.out_w);
        for (int64_t plane = first; plane < last; ++plane)
          plane_kernel(go_data + plane * s.out_h * s.out_w, gi_data + plane * s.in_h * s.in_w, shares.data(), s,
                       divisor, relu_input ? relu_of + plane * s.in_h * s.in_w : nullptr);
      });
      return;
    }
    const AvgPoolPlan<scalar_t> plan(s, count_include_pad, divisor_override.value_or(0));
    parallel_for_ranges(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t first, int64_t last) {
      Scratch<scalar_t> spread(s.in_w, scalar_t(0));
      for (int64_t plane = first; plane < last; ++plane)
        backward_plane<scalar_t>(go_data + plane * s.out_h * s.out_w, gi_data + plane * s.in_h * s.in_w,
                                 spread.data(), s, plan, relu_input ? relu_of + plane * s.in_h * s.in_w : nullptr);
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
}

}  // namespace lenetx::cpu
