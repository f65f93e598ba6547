#pragma once
// PyTorch's pooling windows, shared by the CPU and CUDA kernels (callable on host and device),
// so that both follow one definition of which input positions each output reads.
#include <c10/macros/Macros.h>

#include <cstdint>

#include "shape_checks.h"

namespace lenetx {

C10_HOST_DEVICE inline int64_t min_of(int64_t a, int64_t b) { return a < b ? a : b; }
C10_HOST_DEVICE inline int64_t max_of(int64_t a, int64_t b) { return a > b ? a : b; }

// 2x2 windows at stride 2, without padding or dilation, none past the input's edge: the windows
// tile the input from its corner and each input lies in at most one, which the CPU kernels' one-
// pass paths rely on.
inline bool windows_tile_2x2(const Pool2dShape& s) {
  return s.kernel_h == 2 && s.kernel_w == 2 && s.stride_h == 2 && s.stride_w == 2 && s.pad_h == 0 && s.pad_w == 0 &&
         s.dilation_h == 1 && s.dilation_w == 1 && 2 * s.out_h <= s.in_h && 2 * s.out_w <= s.in_w;
}

// relu as torch computes it, NaN staying NaN: what a pooling with relu_input reads, and the fully
// connected layers' ReLU (cpu/linear.h).
template <typename T>
C10_HOST_DEVICE inline T relu(T value) { return value < T(0) ? T(0) : value; }

// relu's backward, as torch's threshold_backward: the gradient is dropped where input <= 0 (a NaN
// input keeps it).
template <typename T>
C10_HOST_DEVICE inline T relu_backward(T grad, T input) { return input <= T(0) ? T(0) : grad; }

// Average pooling along one dimension: output o reads input [begin, end); `extent` is the
// window's length counting padding (what count_include_pad divides by), never the part of a
// ceil_mode window that hangs past the padding.
struct AvgPoolSpan {
  int64_t begin, end, extent;
};

C10_HOST_DEVICE inline AvgPoolSpan avg_pool_span(int64_t o, int64_t kernel, int64_t stride,
                                                 int64_t pad, int64_t in) {
  const int64_t start = o * stride - pad;
  const int64_t stop = min_of(start + kernel, in + pad);
  return {max_of(start, 0), min_of(stop, in), stop - start};
}

// The divisor of a window whose spans are `rows` x `cols`; divisor_override == 0 means none.
C10_HOST_DEVICE inline int64_t avg_pool_divisor(const AvgPoolSpan& rows, const AvgPoolSpan& cols,
                                                bool count_include_pad, int64_t divisor_override) {
  return divisor_override != 0 ? divisor_override
         : count_include_pad   ? rows.extent * cols.extent
                               : (rows.end - rows.begin) * (cols.end - cols.begin);
}

// Average pooling: the input rectangle [h0, h1) x [w0, w1) and its divisor.
struct AvgPoolWindow {
  int64_t h0, h1, w0, w1, divisor;
  C10_HOST_DEVICE bool empty() const { return h0 >= h1 || w0 >= w1; }
};

C10_HOST_DEVICE inline AvgPoolWindow avg_pool_window(const Pool2dShape& s, int64_t oh, int64_t ow,
                                                     bool count_include_pad, int64_t divisor_override) {
  const AvgPoolSpan rows = avg_pool_span(oh, s.kernel_h, s.stride_h, s.pad_h, s.in_h);
  const AvgPoolSpan cols = avg_pool_span(ow, s.kernel_w, s.stride_w, s.pad_w, s.in_w);
  return {rows.begin, rows.end, cols.begin, cols.end,
          avg_pool_divisor(rows, cols, count_include_pad, divisor_override)};
}

// Max pooling along one dimension: the input positions first, first + dilation, ... below end
// that output o reads. When the window starts in the padding, `first` is its first tap inside
// the input; PyTorch reports that position when no tap beats -inf.
struct MaxPoolTaps {
  int64_t first, end;
};

C10_HOST_DEVICE inline MaxPoolTaps max_pool_taps(int64_t o, int64_t kernel, int64_t stride,
                                                 int64_t pad, int64_t dilation, int64_t in) {
  const int64_t start = o * stride - pad;
  const int64_t first = start >= 0 ? start : start + (-start + dilation - 1) / dilation * dilation;
  return {first, min_of(start + (kernel - 1) * dilation + 1, in)};
}

// Whether a window can hold no input element at all: only a dilated one that starts in the
// padding can step over the whole input (2 rows, padding 1, dilation 3: taps at rows -1 and 2).
inline bool max_pool_windows_may_be_empty(const Pool2dShape& s) {
  return (s.pad_h > 0 && s.dilation_h > 1) || (s.pad_w > 0 && s.dilation_w > 1);
}

// Such a window's output is -inf whatever the input, so it has no gradient to give; the index
// the forward reports for it, PyTorch's, lies past its last tap and may name another element or
// none (torch's backward adds the gradient there: pytorch/pytorch#114216).
C10_HOST_DEVICE inline bool max_pool_window_empty(const Pool2dShape& s, int64_t oh, int64_t ow) {
  const MaxPoolTaps rows = max_pool_taps(oh, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.in_h);
  const MaxPoolTaps cols = max_pool_taps(ow, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.in_w);
  return rows.first >= rows.end || cols.first >= cols.end;
}

// Adaptive average pooling: cell o of `out` covers input [floor(o * in / out),
// ceil((o + 1) * in / out)), so windows overlap when the sizes do not divide.
C10_HOST_DEVICE inline int64_t adaptive_start(int64_t o, int64_t in, int64_t out) { return o * in / out; }
C10_HOST_DEVICE inline int64_t adaptive_end(int64_t o, int64_t in, int64_t out) {
  return ((o + 1) * in + out - 1) / out;
}

}  // namespace lenetx
