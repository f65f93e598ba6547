// Direct 2-D convolution on the CPU: forward, grad_input, grad_weight and grad_bias.
//
// Small-channel convolutions (LeNet's 1->6, 6->16, 16->120) have rows too short to vectorize
// along the image, so the kernels vectorize across channels instead: weights are repacked with a
// block of output (or, for grad_input, input) channels innermost, and each input value is
// broadcast against a whole vector of channels. A tile of output pixels x channel block stays in
// registers for the whole reduction over input channels and kernel taps.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../shape_checks.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

// Images per grad_weight partial sum. Fixed (not tied to the thread count) so that the order of
// the final reduction, and so the result, never changes.
constexpr int64_t kImagesPerPartial = 8;

struct Span {
  int64_t begin, end;
};

// Output positions o in [0, out_size) whose input position o * stride - pad + tap_offset lies
// inside [0, in_size).
inline Span valid_outputs(int64_t in_size, int64_t out_size, int64_t stride, int64_t pad,
                          int64_t tap_offset) {
  const int64_t low = pad - tap_offset;
  const int64_t high = in_size - 1 + pad - tap_offset;
  const int64_t begin = low <= 0 ? 0 : (low + stride - 1) / stride;
  const int64_t end = high < 0 ? 0 : std::min(out_size, high / stride + 1);
  return {begin, std::max(begin, end)};
}

// Channel block width: the vector the kernels accumulate in.
inline int channel_block(int64_t channels) { return channels <= 8 ? 8 : channels <= 16 ? 16 : 32; }

inline int64_t blocks_of(int64_t count, int64_t block) { return (count + block - 1) / block; }

// Weights as [group][out block][in channel][kh][kw][out lane], zero-padded past out_channels.
template <typename T>
std::vector<T> pack_weight_by_output(const T* w, const Conv2dShape& s, int block) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, nblocks = blocks_of(ocg, block);
  std::vector<T> packed(s.groups * nblocks * icg * taps * block, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, b = oc % ocg / block, lane = oc % ocg % block;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t)
        packed[(((g * nblocks + b) * icg + ic) * taps + t) * block + lane] = w[(oc * icg + ic) * taps + t];
  }
  return packed;
}

// Weights as [group][in block][out channel][kh][kw][in lane], zero-padded past in_channels.
template <typename T>
std::vector<T> pack_weight_by_input(const T* w, const Conv2dShape& s, int block) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, nblocks = blocks_of(icg, block);
  std::vector<T> packed(s.groups * nblocks * ocg * taps * block, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, o = oc % ocg;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t)
        packed[(((g * nblocks + ic / block) * ocg + o) * taps + t) * block + ic % block] =
            w[(oc * icg + ic) * taps + t];
  }
  return packed;
}

// One output row (image n, row oh) for a block of B output channels, PW pixels at a time.
template <typename T, int B, int PW>
LENETX_SIMD_CLONES void forward_row(const T* __restrict input, const T* __restrict packed,
                                    const T* bias, T* __restrict output, int64_t oh,
                                    int64_t channels, const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), taps = s.kernel_h * s.kernel_w;
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += PW) {
    // Every tap of every pixel of the tile inside the row: no bounds checks needed.
    const bool interior = ow0 * s.stride_w - s.pad_w >= 0 &&
                          (ow0 + PW - 1) * s.stride_w - s.pad_w + (s.kernel_w - 1) * s.dilation_w < s.in_w;
    T acc[PW][B];
    for (int p = 0; p < PW; ++p)
#pragma omp simd
      for (int c = 0; c < B; ++c) acc[p][c] = (bias && c < channels) ? bias[c] : T(0);
    for (int64_t ic = 0; ic < icg; ++ic) {
      const T* in = input + ic * in_plane;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
        if (ih < 0 || ih >= s.in_h) continue;
        const T* in_row = in + ih * s.in_w;
        const T* w = packed + (ic * taps + kh * s.kernel_w) * B;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += B) {
          const int64_t iw0 = ow0 * s.stride_w - s.pad_w + kw * s.dilation_w;
          if (interior) {
            for (int p = 0; p < PW; ++p) {
              const T v = in_row[iw0 + p * s.stride_w];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          } else {
            for (int p = 0; p < PW; ++p) {
              const int64_t iw = iw0 + p * s.stride_w;
              const T v = (iw >= 0 && iw < s.in_w) ? in_row[iw] : T(0);
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          }
        }
      }
    }
    const int pixels = static_cast<int>(std::min<int64_t>(PW, s.out_w - ow0));
    for (int64_t c = 0; c < channels; ++c)
      for (int p = 0; p < pixels; ++p) output[c * out_plane + oh * s.out_w + ow0 + p] = acc[p][c];
  }
}

// One grad_input row (image n, row ih) for a block of B input channels: the forward's gather
// read backwards, each input pixel collecting the outputs its taps fed.
template <typename T, int B, int PW>
LENETX_SIMD_CLONES void grad_input_row(const T* __restrict grad_output, const T* __restrict packed,
                                       T* __restrict grad_input, int64_t ih, int64_t channels,
                                       const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), taps = s.kernel_h * s.kernel_w;
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  for (int64_t iw0 = 0; iw0 < s.in_w; iw0 += PW) {
    T acc[PW][B] = {};
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t t = ih + s.pad_h - kh * s.dilation_h;
      if (t < 0 || t % s.stride_h != 0 || t / s.stride_h >= s.out_h) continue;
      const int64_t oh = t / s.stride_h;
      for (int64_t oc = 0; oc < ocg; ++oc) {
        const T* go_row = grad_output + oc * out_plane + oh * s.out_w;
        const T* w = packed + (oc * taps + kh * s.kernel_w) * B;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += B) {
          const int64_t u0 = iw0 + s.pad_w - kw * s.dilation_w;
          if (s.stride_w == 1 && u0 >= 0 && u0 + PW <= s.out_w) {
            for (int p = 0; p < PW; ++p) {
              const T v = go_row[u0 + p];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          } else if (s.stride_w == 1) {
            for (int p = 0; p < PW; ++p) {
              const int64_t u = u0 + p;
              const T v = (u >= 0 && u < s.out_w) ? go_row[u] : T(0);
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          } else {
            for (int p = 0; p < PW; ++p) {
              const int64_t u = u0 + p;
              const bool hit = u >= 0 && u % s.stride_w == 0 && u / s.stride_w < s.out_w;
              const T v = hit ? go_row[u / s.stride_w] : T(0);
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          }
        }
      }
    }
    const int pixels = static_cast<int>(std::min<int64_t>(PW, s.in_w - iw0));
    for (int64_t c = 0; c < channels; ++c)
      for (int p = 0; p < pixels; ++p) grad_input[c * in_plane + ih * s.in_w + iw0 + p] = acc[p][c];
  }
}

// grad_output of a few images repacked as [image][oh][ow][out lane] for one block of B channels.
template <typename T>
void pack_grad_output(const T* grad_output, T* packed, int64_t images, int64_t first_channel,
                      int64_t channels, int B, const Conv2dShape& s) {
  const int64_t out_plane = s.out_h * s.out_w;
  std::fill_n(packed, images * out_plane * B, T(0));
  for (int64_t n = 0; n < images; ++n)
    for (int64_t c = 0; c < channels; ++c) {
      const T* go = grad_output + (n * s.out_channels + first_channel + c) * out_plane;
      for (int64_t i = 0; i < out_plane; ++i) packed[(n * out_plane + i) * B + c] = go[i];
    }
}

// Partial grad_weight of one input channel, one block of B output channels and a few images:
// taps[kh][kw][lane], each tap's vector kept in registers across all its output pixels.
template <typename T, int B>
LENETX_SIMD_CLONES void grad_weight_partial(const T* __restrict input, const T* __restrict packed_go,
                                            T* __restrict taps, int64_t images,
                                            const Conv2dShape& s) {
  const int64_t out_plane = s.out_h * s.out_w, in_image = s.in_channels * s.in_h * s.in_w;
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    const Span rows = valid_outputs(s.in_h, s.out_h, s.stride_h, s.pad_h, kh * s.dilation_h);
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const Span cols = valid_outputs(s.in_w, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
      T acc[B] = {};
      for (int64_t n = 0; n < images; ++n) {
        const T* in = input + n * in_image;
        for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
          const T* in_row = in + (oh * s.stride_h - s.pad_h + kh * s.dilation_h) * s.in_w +
                            kw * s.dilation_w - s.pad_w;
          const T* go = packed_go + (n * out_plane + oh * s.out_w) * B;
          for (int64_t ow = cols.begin; ow < cols.end; ++ow) {
            const T v = in_row[ow * s.stride_w];
#pragma omp simd
            for (int c = 0; c < B; ++c) acc[c] += v * go[ow * B + c];
          }
        }
      }
      std::copy_n(acc, B, taps + (kh * s.kernel_w + kw) * B);
    }
  }
}

template <typename T, int B, int PW>
void conv2d_forward_impl(const T* in, const T* w, const T* bias, T* out, const Conv2dShape& s) {
  const std::vector<T> packed = pack_weight_by_output(w, s, B);
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(ocg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  parallel_for(s.batch * s.groups * nblocks * s.out_h, [&](int64_t item) {
    const int64_t oh = item % s.out_h, b = item / s.out_h % nblocks;
    const int64_t g = item / (s.out_h * nblocks) % s.groups, n = item / (s.out_h * nblocks * s.groups);
    const int64_t oc = g * ocg + b * B;
    forward_row<T, B, PW>(in + (n * s.in_channels + g * icg) * in_plane,
                          packed.data() + (g * nblocks + b) * icg * taps * B,
                          bias ? bias + oc : nullptr, out + (n * s.out_channels + oc) * out_plane,
                          oh, std::min<int64_t>(B, ocg - b * B), s);
  });
}

template <typename T, int B, int PW>
void conv2d_grad_input_impl(const T* go, const T* w, T* gi, const Conv2dShape& s) {
  const std::vector<T> packed = pack_weight_by_input(w, s, B);
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(icg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  parallel_for(s.batch * s.groups * nblocks * s.in_h, [&](int64_t item) {
    const int64_t ih = item % s.in_h, b = item / s.in_h % nblocks;
    const int64_t g = item / (s.in_h * nblocks) % s.groups, n = item / (s.in_h * nblocks * s.groups);
    grad_input_row<T, B, PW>(go + (n * s.out_channels + g * ocg) * out_plane,
                             packed.data() + (g * nblocks + b) * ocg * taps * B,
                             gi + (n * s.in_channels + g * icg + b * B) * in_plane, ih,
                             std::min<int64_t>(B, icg - b * B), s);
  });
}

template <typename T, int B>
void conv2d_grad_weight_impl(const T* go, const T* in, T* gw, const Conv2dShape& s) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(ocg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial);
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  // partial[chunk][group][block][ic][tap][lane]
  const int64_t per_chunk = s.groups * nblocks * icg * taps * B;
  std::vector<T> partial(chunks * per_chunk);
  parallel_for(chunks * s.groups * nblocks, [&](int64_t item) {
    const int64_t b = item % nblocks, g = item / nblocks % s.groups, chunk = item / (nblocks * s.groups);
    const int64_t first = chunk * kImagesPerPartial;
    const int64_t images = std::min(kImagesPerPartial, s.batch - first);
    const int64_t oc = g * ocg + b * B;
    std::vector<T> packed_go(images * out_plane * B);
    pack_grad_output(go + first * s.out_channels * out_plane, packed_go.data(), images, oc,
                     std::min<int64_t>(B, ocg - b * B), B, s);
    for (int64_t ic = 0; ic < icg; ++ic) {
      grad_weight_partial<T, B>(in + (first * s.in_channels + g * icg + ic) * in_plane,
                                packed_go.data(),
                                partial.data() + chunk * per_chunk + ((g * nblocks + b) * icg + ic) * taps * B,
                                images, s);
    }
  });
  parallel_for(s.out_channels, [&](int64_t oc) {
    const int64_t g = oc / ocg, b = oc % ocg / B, lane = oc % ocg % B;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t) {
        acc_t sum = 0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk)
          sum += partial[chunk * per_chunk + (((g * nblocks + b) * icg + ic) * taps + t) * B + lane];
        gw[(oc * icg + ic) * taps + t] = static_cast<T>(sum);
      }
  });
}

template <typename T>
LENETX_SIMD_CLONES T grad_bias_channel(const T* __restrict grad_output, int64_t batch,
                                       int64_t image_stride, int64_t plane) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  acc_t total = 0;
  for (int64_t n = 0; n < batch; ++n) {
    const T* go = grad_output + n * image_stride;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < plane; ++i) sum += go[i];
    total += sum;
  }
  return static_cast<T>(total);
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const at::Tensor in = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d", [&] {
    const scalar_t* bias_data = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const auto run = [&](auto kernel) {
      kernel(in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data,
             output.mutable_data_ptr<scalar_t>(), s);
    };
    switch (channel_block(s.out_channels_per_group())) {
      case 8: run(conv2d_forward_impl<scalar_t, 8, 8>); break;
      case 16: run(conv2d_forward_impl<scalar_t, 16, 4>); break;
      default: run(conv2d_forward_impl<scalar_t, 32, 4>); break;
    }
  });
  return output;
}

at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding,
                                              dilation, groups, "lenetx.conv2d_grad_input");
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_grad_input", [&] {
    const auto run = [&](auto kernel) {
      kernel(go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
             grad_input.mutable_data_ptr<scalar_t>(), s);
    };
    switch (channel_block(s.in_channels_per_group())) {
      case 8: run(conv2d_grad_input_impl<scalar_t, 8, 8>); break;
      case 16: run(conv2d_grad_input_impl<scalar_t, 16, 4>); break;
      default: run(conv2d_grad_input_impl<scalar_t, 32, 4>); break;
    }
  });
  return grad_input;
}

at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                              const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding,
                                              dilation, groups, "lenetx.conv2d_grad_weight");
  const at::Tensor go = grad_output.contiguous(), in = input.contiguous();
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_grad_weight", [&] {
    const auto run = [&](auto kernel) {
      kernel(go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(),
             grad_weight.mutable_data_ptr<scalar_t>(), s);
    };
    switch (channel_block(s.out_channels_per_group())) {
      case 8: run(conv2d_grad_weight_impl<scalar_t, 8>); break;
      case 16: run(conv2d_grad_weight_impl<scalar_t, 16>); break;
      default: run(conv2d_grad_weight_impl<scalar_t, 32>); break;
    }
  });
  return grad_weight;
}

at::Tensor conv2d_grad_bias(const at::Tensor& grad_output) {
  check_conv2d_grad_bias(grad_output);
  const at::Tensor go = grad_output.contiguous();
  const int64_t batch = go.size(0), channels = go.size(1), plane = go.size(2) * go.size(3);
  at::Tensor grad_bias = at::empty({channels}, go.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "lenetx_conv2d_grad_bias", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* gb_data = grad_bias.mutable_data_ptr<scalar_t>();
    parallel_for(channels, [&](int64_t c) {
      gb_data[c] = grad_bias_channel<scalar_t>(go_data + c * plane, batch, channels * plane, plane);
    });
  });
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_grad_input", &conv2d_grad_input);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);
  m.impl("conv2d_grad_bias", &conv2d_grad_bias);
}

}  // namespace lenetx::cpu
