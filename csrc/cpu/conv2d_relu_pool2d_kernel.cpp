// Convolution, ReLU and non-overlapping pooling as one operator on the CPU, a chunk of images at
// a time. The convolution's output, and in the backward its gradient, live only in a thread's
// buffer while still in cache, instead of as tensors the size of the layer's activations
// (2.4 MB for LeNet-5's conv1 at batch 128) written to memory by one operator and read back by
// the next. The forward saves one byte per convolution output, the mask: whether the gradient
// reaches it (relu passes it and, for max pooling, it is its window's maximum).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <tuple>
#include <vector>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "conv2d_paths.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

// The chunk is grad_weight's unit of partial sums, so that the fused grad_weight adds the same
// partials in the same order as conv2d_grad_weight, and whatever the thread count.
constexpr int64_t kImagesPerChunk = kImagesPerPartial;

// Runs fn(first_image, images, scratch) for each chunk of the batch, with `scratch` room for a
// chunk's convolution output, allocated once per thread. The threads share the chunks, and the
// convolution paths called inside run on one thread each; a batch of one chunk runs on the
// calling thread, where those paths may use every thread.
template <typename T, typename Fn>
void for_each_chunk(int64_t batch, int64_t conv_image, int64_t work_per_chunk, const Fn& fn) {
  parallel_for_ranges(blocks_of(batch, kImagesPerChunk), work_per_chunk, [&](int64_t first, int64_t last) {
    const std::unique_ptr<T[]> scratch(new T[std::min(kImagesPerChunk, batch) * conv_image]);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t n0 = chunk * kImagesPerChunk;
      fn(n0, std::min(kImagesPerChunk, batch - n0), scratch.get());
    }
  });
}

// Rows and columns that no window covers get no gradient.
inline void clear_uncovered_mask(uint8_t* mask, const ConvReluPoolShape& s) {
  const int64_t w = s.conv.out_w, covered_h = s.pooled_h * s.pool_h, covered_w = s.pooled_w * s.pool_w;
  for (int64_t r = 0; r < covered_h; ++r) std::fill(mask + r * w + covered_w, mask + (r + 1) * w, uint8_t{0});
  std::fill(mask + covered_h * w, mask + s.conv.out_h * w, uint8_t{0});
}

// One (image, channel) plane of the convolution's output pooled after relu, as torch's
// avg_pool2d/max_pool2d (floor mode, stride = kernel) would pool relu's output, and its mask.
// Max pooling scans each window in torch's order with its update rule (a NaN wins), starting
// from the first tap: what -inf becomes after one update.
template <typename T, bool MAX_POOL>
void pool_plane(const T* conv, T* output, uint8_t* mask, const ConvReluPoolShape& s) {
  const int64_t w = s.conv.out_w, pool_h = s.pool_h, pool_w = s.pool_w;
  const T divisor = static_cast<T>(pool_h * pool_w);
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    const T* rows = conv + ph * pool_h * w;
    uint8_t* mask_rows = mask + ph * pool_h * w;
    T* out = output + ph * s.pooled_w;
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      const int64_t corner = pw * pool_w;
      T best = relu(rows[corner]), sum = 0;
      int64_t best_tap = 0;
      for (int64_t kh = 0; kh < pool_h; ++kh) {
        for (int64_t kw = 0; kw < pool_w; ++kw) {
          const T value = rows[kh * w + corner + kw];
          if (MAX_POOL) {
            const T candidate = relu(value);
            const bool take = candidate > best || candidate != candidate;
            best = take ? candidate : best;
            best_tap = take ? kh * pool_w + kw : best_tap;
          } else {
            sum += relu(value);
            mask_rows[kh * w + corner + kw] = !(value <= T(0));
          }
        }
      }
      if (MAX_POOL) {
        const bool passes = !(best <= T(0));
        for (int64_t tap = 0; tap < pool_h * pool_w; ++tap)
          mask_rows[tap / pool_w * w + corner + tap % pool_w] = passes && tap == best_tap;
      }
      out[pw] = MAX_POOL ? best : sum / divisor;
    }
  }
  clear_uncovered_mask(mask, s);
}

// The gradient of one plane of the convolution's output: each window's grad_output (divided by
// the window's size for average pooling) where the mask lets it through, zero elsewhere.
template <typename T, bool MAX_POOL>
void unpool_plane(const T* grad_output, const uint8_t* mask, T* grad_conv, const ConvReluPoolShape& s) {
  const int64_t h = s.conv.out_h, w = s.conv.out_w;
  const int64_t pool_h = s.pool_h, pool_w = s.pool_w;
  const int64_t covered_w = s.pooled_w * pool_w;
  const T divisor = MAX_POOL ? T(1) : static_cast<T>(pool_h * pool_w);
  for (int64_t r = 0; r < h; ++r) {
    T* row = grad_conv + r * w;
    const uint8_t* passes = mask + r * w;
    const int64_t ph = r / pool_h;
    if (ph >= s.pooled_h) {
      std::fill_n(row, w, T(0));
      continue;
    }
    const T* go = grad_output + ph * s.pooled_w;
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      const T share = go[pw] / divisor;
      for (int64_t kw = 0; kw < pool_w; ++kw) row[pw * pool_w + kw] = passes[pw * pool_w + kw] ? share : T(0);
    }
    std::fill(row + covered_w, row + w, T(0));
  }
}

// pool_plane for the common 2x2 window, written so that the compiler vectorizes it, a piece of
// at most kPiece windows of a row at a time. Max pooling scans each window's raw values in
// torch's order and applies relu once, after the scan: relu is monotone, so relu's maximum is at
// the same tap unless the maximum is <= 0, and then every tap relus to zero (or -0.0), the first
// wins the tie and none passes the gradient. The winning taps go to a small array and from there
// to the mask: with the mask's stores in the same loop, GCC left it scalar. Average pooling adds
// the relu'd rows first along the whole piece, then the pairs of columns.
template <typename T, bool MAX_POOL>
LENETX_SIMD_CLONES void pool_plane_2x2(const T* __restrict conv, T* __restrict output, uint8_t* __restrict mask,
                                       const ConvReluPoolShape& s) {
  constexpr int64_t kPiece = 128;
  const int64_t w = s.conv.out_w;
  T row_sum[2 * kPiece];
  int32_t winner[kPiece];
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t first = 0; first < s.pooled_w; first += kPiece) {
      const int64_t count = std::min(kPiece, s.pooled_w - first);
      const T* top = conv + 2 * ph * w + 2 * first;
      const T* bottom = top + w;
      uint8_t* mask_top = mask + 2 * ph * w + 2 * first;
      uint8_t* mask_bottom = mask_top + w;
      T* out = output + ph * s.pooled_w + first;
      if (MAX_POOL) {
        for_each_in_blocks_of_8(count, [&](int64_t i) {
          T best = top[2 * i];
          int32_t tap = 0;
          const auto update = [&](T value, int32_t index) {
            const bool take = value > best || value != value;
            best = take ? value : best;
            tap = take ? index : tap;
          };
          update(top[2 * i + 1], 1);
          update(bottom[2 * i], 2);
          update(bottom[2 * i + 1], 3);
          const bool passes = !(best <= T(0));
          out[i] = passes ? best : relu(top[2 * i]);
          winner[i] = passes ? tap : 4;
        });
        for (int64_t i = 0; i < count; ++i) {
          mask_top[2 * i] = winner[i] == 0;
          mask_top[2 * i + 1] = winner[i] == 1;
          mask_bottom[2 * i] = winner[i] == 2;
          mask_bottom[2 * i + 1] = winner[i] == 3;
        }
      } else {
        for_each_in_blocks_of_8(2 * count, [&](int64_t i) {
          row_sum[i] = relu(top[i]) + relu(bottom[i]);
          mask_top[i] = !(top[i] <= T(0));
          mask_bottom[i] = !(bottom[i] <= T(0));
        });
        for_each_in_blocks_of_8(count, [&](int64_t i) { out[i] = (row_sum[2 * i] + row_sum[2 * i + 1]) / T(4); });
      }
    }
  }
  clear_uncovered_mask(mask, s);
}

template <typename T, bool MAX_POOL>
LENETX_SIMD_CLONES void unpool_plane_2x2(const T* __restrict grad_output, const uint8_t* __restrict mask,
                                         T* __restrict grad_conv, const ConvReluPoolShape& s) {
  const int64_t w = s.conv.out_w;
  const T divisor = MAX_POOL ? T(1) : T(4);
  for (int64_t r = 0; r < 2 * s.pooled_h; ++r) {
    T* row = grad_conv + r * w;
    const uint8_t* passes = mask + r * w;
    const T* go = grad_output + r / 2 * s.pooled_w;
    for_each_in_blocks_of_8(s.pooled_w, [&](int64_t pw) {
      const T share = go[pw] / divisor;
      row[2 * pw] = passes[2 * pw] ? share : T(0);
      row[2 * pw + 1] = passes[2 * pw + 1] ? share : T(0);
    });
    std::fill(row + 2 * s.pooled_w, row + w, T(0));
  }
  std::fill(grad_conv + 2 * s.pooled_h * w, grad_conv + s.conv.out_h * w, T(0));
}

// The pooling and unpooling functions for a shape: the 2x2 window has its own.
template <typename T>
struct PoolingKernels {
  using Pool = void (*)(const T*, T*, uint8_t*, const ConvReluPoolShape&);
  using Unpool = void (*)(const T*, const uint8_t*, T*, const ConvReluPoolShape&);
  Pool pool;
  Unpool unpool;
};

template <typename T>
PoolingKernels<T> pooling_kernels(const ConvReluPoolShape& s, bool max_pool) {
  const bool two = s.pool_h == 2 && s.pool_w == 2;
  if (max_pool)
    return two ? PoolingKernels<T>{pool_plane_2x2<T, true>, unpool_plane_2x2<T, true>}
               : PoolingKernels<T>{pool_plane<T, true>, unpool_plane<T, true>};
  return two ? PoolingKernels<T>{pool_plane_2x2<T, false>, unpool_plane_2x2<T, false>}
             : PoolingKernels<T>{pool_plane<T, false>, unpool_plane<T, false>};
}

std::tuple<at::Tensor, at::Tensor> conv2d_relu_pool2d(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      int64_t groups, at::IntArrayRef pool_size, bool max_pool) {
  const ConvReluPoolShape s = check_conv2d_relu_pool2d(input, weight, bias, stride, padding, dilation, groups,
                                                       pool_size, "lenetx.conv2d_relu_pool2d");
  const Conv2dShape& c = s.conv;
  const at::Tensor in = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty({c.batch, c.out_channels, s.pooled_h, s.pooled_w}, input.options());
  at::Tensor mask = at::empty({c.batch, c.out_channels, c.out_h, c.out_w}, input.options().dtype(at::kByte));
  const int64_t in_image = c.in_channels * c.in_h * c.in_w, conv_plane = c.out_h * c.out_w;
  const int64_t pooled_plane = s.pooled_h * s.pooled_w;
  const int64_t work_per_chunk =
      kImagesPerChunk * c.out_channels * conv_plane * c.in_channels_per_group() * c.kernel_h * c.kernel_w;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_relu_pool2d", [&] {
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const scalar_t* b_data = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    uint8_t* mask_data = mask.mutable_data_ptr<uint8_t>();
    const PoolingKernels<scalar_t> kernels = pooling_kernels<scalar_t>(s, max_pool);
    for_each_chunk<scalar_t>(c.batch, c.out_channels * conv_plane, work_per_chunk,
                             [&](int64_t n0, int64_t images, scalar_t* conv) {
      Conv2dShape chunk = c;
      chunk.batch = images;
      conv2d_forward<scalar_t>(in_data + n0 * in_image, w_data, b_data, conv, chunk);
      for (int64_t p = 0; p < images * c.out_channels; ++p) {
        const int64_t plane = n0 * c.out_channels + p;
        kernels.pool(conv + p * conv_plane, out_data + plane * pooled_plane, mask_data + plane * conv_plane, s);
      }
    });
  });
  return {output, mask};
}

// grad_input (when input_grad; else an empty tensor), grad_weight and grad_bias. Each chunk's
// convolution gradient is rebuilt from grad_output and the mask, then fed to the convolution's
// own backward paths. grad_weight and grad_bias add the chunks' and the images' partial sums in
// the order conv2d_grad_weight and conv2d_grad_bias do.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_relu_pool2d_backward(
    const at::Tensor& grad_output, const at::Tensor& mask, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_size, bool max_pool, bool input_grad) {
  const ConvReluPoolShape s = check_conv2d_relu_pool2d_backward(grad_output, mask, input, weight, stride, padding,
                                                                dilation, groups, pool_size);
  const Conv2dShape& c = s.conv;
  const at::Tensor go = grad_output.contiguous(), m = mask.contiguous();
  const at::Tensor in = input.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = at::empty(input_grad ? input.sizes() : at::IntArrayRef{0}, input.options());
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  at::Tensor grad_bias = at::empty({c.out_channels}, input.options());
  const int64_t in_image = c.in_channels * c.in_h * c.in_w, conv_plane = c.out_h * c.out_w;
  const int64_t pooled_plane = s.pooled_h * s.pooled_w, weight_count = weight.numel();
  const int64_t work_per_chunk = (input_grad ? 2 : 1) * kImagesPerChunk * c.out_channels * conv_plane *
                                 c.in_channels_per_group() * c.kernel_h * c.kernel_w;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_relu_pool2d_backward", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    const uint8_t* mask_data = m.const_data_ptr<uint8_t>();
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const PoolingKernels<scalar_t> kernels = pooling_kernels<scalar_t>(s, max_pool);
    std::vector<scalar_t> weight_partials(blocks_of(c.batch, kImagesPerChunk) * weight_count);
    std::vector<scalar_t> image_bias_sums(c.batch * c.out_channels);
    for_each_chunk<scalar_t>(c.batch, c.out_channels * conv_plane, work_per_chunk,
                             [&](int64_t n0, int64_t images, scalar_t* grad_conv) {
      Conv2dShape chunk = c;
      chunk.batch = images;
      for (int64_t p = 0; p < images * c.out_channels; ++p) {
        const int64_t plane = n0 * c.out_channels + p;
        kernels.unpool(go_data + plane * pooled_plane, mask_data + plane * conv_plane, grad_conv + p * conv_plane, s);
      }
      if (input_grad)
        conv2d_grad_input_paths<scalar_t>(grad_conv, w_data, grad_input.mutable_data_ptr<scalar_t>() + n0 * in_image,
                                          chunk);
      conv2d_grad_weight_paths<scalar_t>(grad_conv, in_data + n0 * in_image,
                                         weight_partials.data() + n0 / kImagesPerChunk * weight_count, chunk);
      for (int64_t n = 0; n < images; ++n)
        grad_bias_channels<scalar_t>(grad_conv + n * c.out_channels * conv_plane, 1, c.out_channels,
                                     conv_plane, 0, c.out_channels,
                                     image_bias_sums.data() + (n0 + n) * c.out_channels);
    });
    sum_chunk_partials(weight_partials, blocks_of(c.batch, kImagesPerChunk), weight_count,
                       grad_weight.mutable_data_ptr<scalar_t>());
    sum_chunk_partials(image_bias_sums, c.batch, c.out_channels, grad_bias.mutable_data_ptr<scalar_t>());
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("conv2d_relu_pool2d", &conv2d_relu_pool2d);
  m.impl("conv2d_relu_pool2d_backward", &conv2d_relu_pool2d_backward);
}

}  // namespace lenetx::cpu
