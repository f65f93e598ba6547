// Direct 2-D convolution on the CPU: forward, grad_input, grad_weight and grad_bias.
//
// Three ways to compute a convolution, picked by shape (see benchmarks/NOTES.md for the numbers):
// - Stride 1 (most layers, and every grad_input of a stride-1 layer, which is the stride-1
//   correlation of the padded grad_output with the flipped weights): positions are numbered
//   along the rows of a zero-padded copy of the input, so that each kernel tap reads one
//   contiguous run of positions, and micro_gemm.h's register tile multiplies a block of output
//   channels by a run of positions.
// - Layers with few output pixels (LeNet's conv3, 16x5x5 -> 120x1x1; VGG's 4x4 and 2x2 blocks)
//   unfold the input into one row per output pixel and run matrix products on the same tile.
// - Anything else (strides) vectorizes across channels: weights repacked with a block of output
//   (or, for grad_input, input) channels innermost, each input value broadcast against a vector
//   of channels, a tile of pixels x channels kept in registers over the whole reduction.
// grad_weight is a matrix product per kernel tap over a channels-last copy of the input when
// there are enough input channels to fill a vector; otherwise it vectorizes across output
// channels, several kernel taps at a time.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

// Images per grad_weight partial sum. Fixed (not tied to the thread count) so that the order of
// the final reduction, and so the result, never changes.
constexpr int64_t kImagesPerPartial = 8;

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

// Every (image, channel) plane inside a zero border of pad_h rows and pad_w columns, planes back
// to back, then `slack` zeros. Without border or slack the input itself serves, uncopied.
template <typename T>
struct PaddedPlanes {
  std::unique_ptr<T[]> storage;
  const T* data;
  int64_t h, w, plane;
};

// all_finite, when given, is set to whether every value of x is finite (checked while copying).
template <typename T>
PaddedPlanes<T> pad_planes(const T* x, int64_t planes, int64_t h, int64_t w, int64_t pad_h,
                           int64_t pad_w, int64_t slack, bool* all_finite = nullptr) {
  const int64_t padded_h = h + 2 * pad_h, padded_w = w + 2 * pad_w, plane = padded_h * padded_w;
  if (pad_h == 0 && pad_w == 0 && slack == 0 && !all_finite) return {nullptr, x, h, w, plane};
  // Uninitialized, then each value written once: border zeros, copied rows, slack zeros.
  std::unique_ptr<T[]> storage(new T[planes * plane + slack]);
  T* out = storage.get();
  std::atomic<bool> finite{true};
  parallel_for(planes, h * w, [&](int64_t p) {
    T* dst = out + p * plane;
    std::fill_n(dst, pad_h * padded_w + pad_w, T(0));
    T zero_if_finite = 0;  // x * 0 is NaN for an infinite or NaN x
    for (int64_t r = 0; r < h; ++r) {
      T* row = dst + (r + pad_h) * padded_w;
      const T* src = x + (p * h + r) * w;
      std::copy_n(src, w, row + pad_w);
      if (all_finite) {
#pragma omp simd reduction(+ : zero_if_finite)
        for (int64_t c = 0; c < w; ++c) zero_if_finite += src[c] * T(0);
      }
      // The right border of this row and the left border of the next are adjacent.
      std::fill_n(row + pad_w + w, r + 1 < h ? 2 * pad_w : pad_w, T(0));
    }
    std::fill_n(dst + (h + pad_h) * padded_w, pad_h * padded_w, T(0));
    if (zero_if_finite != T(0)) finite = false;
  });
  std::fill_n(out + planes * plane, slack, T(0));
  if (all_finite) *all_finite = finite;
  return {std::move(storage), out, padded_h, padded_w, plane};
}

// Stride-1 correlation worth running on padded rows: at least half of the positions computed
// along a padded row are real outputs.
bool worth_padded_rows(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && 2 * s.out_w >= s.in_w + 2 * s.pad_w;
}

// The register tile for `rows` rows of A against `columns` columns of output: of the shapes that
// fit the registers, the one with the least work counting the padding it computes. The 16x1
// tile loads a value per multiply-add and runs about 1.35x slower per value (measured), so its
// work counts that much more; ties go to the wider tile.
template <typename T, typename Fn>
void with_tile(int64_t rows, int64_t columns, const Fn& fn) {
  const auto work = [&](int64_t mb, int64_t nv) {
    const int64_t n = nv * Vec<T>::kLanes;
    const double padded = static_cast<double>(blocks_of(rows, mb) * mb * blocks_of(columns, n) * n);
    return nv == 1 ? 1.35 * padded : padded;
  };
  const double least = std::min({work(6, 4), work(8, 3), work(12, 2), work(16, 1)});
  if (work(6, 4) == least)
    fn.template operator()<6, 4>();
  else if (work(8, 3) == least)
    fn.template operator()<8, 3>();
  else if (work(12, 2) == least)
    fn.template operator()<12, 2>();
  else
    fn.template operator()<16, 1>();
}

// Stride-1 convolution over padded rows. Output position p = oh * padded_w + ow reads tap
// (kh, kw) of input channel ic at p + ic * plane + kh * dilation_h * padded_w + kw * dilation_w:
// the same offset for every position, so a run of positions is a contiguous load. Columns
// ow >= out_w of that numbering are computed and dropped.
template <typename T, int MB, int NV>
void correlate_padded_rows(const T* input, const T* weight, const T* bias, T* output,
                           const Conv2dShape& s) {
  constexpr int64_t N = NV * Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps;
  const PaddedPlanes<T> x = pad_planes(input, s.batch * s.in_channels, s.in_h, s.in_w, s.pad_h,
                                       s.pad_w, N + s.kernel_w * s.dilation_w);
  const int64_t positions = s.out_h * x.w, tiles = blocks_of(positions, N);
  const int64_t blocks = blocks_of(ocg, MB), out_plane = s.out_h * s.out_w;
  // Weights as [group][block][ic, kh, kw][MB output channels], zero past ocg.
  std::vector<T> packed(s.groups * blocks * depth * MB, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, o = oc % ocg;
    for (int64_t k = 0; k < depth; ++k)
      packed[((g * blocks + o / MB) * depth + k) * MB + o % MB] = weight[oc * depth + k];
  }
  std::vector<int64_t> tap_offsets;
  for (int64_t ic = 0; ic < icg; ++ic)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw)
        tap_offsets.push_back(ic * x.plane + kh * s.dilation_h * x.w + kw * s.dilation_w);
  parallel_for_ranges(s.batch * s.groups * blocks * tiles, depth * MB * N, [&](int64_t first, int64_t last) {
    alignas(64) T tile[MB * N];
    for (int64_t item = first; item < last; ++item) {
      const int64_t t = item % tiles, b = item / tiles % blocks;
      const int64_t g = item / (tiles * blocks) % s.groups, n = item / (tiles * blocks * s.groups);
      const int64_t p0 = t * N, p_end = std::min(positions, p0 + N);
      gemm_tile<T, MB, NV>(packed.data() + (g * blocks + b) * depth * MB, 1, MB,
                           x.data + (n * s.in_channels + g * icg) * x.plane + p0,
                           tap_offsets.data(), depth, tile);
      const int64_t channels = std::min<int64_t>(MB, ocg - b * MB);
      for (int64_t m = 0; m < channels; ++m) {
        const int64_t oc = g * ocg + b * MB + m;
        const T shift = bias ? bias[oc] : T(0);
        T* out = output + (n * s.out_channels + oc) * out_plane;
        for (int64_t p = p0; p < p_end;) {
          const int64_t oh = p / x.w, ow = p % x.w, row_end = std::min(p_end, (oh + 1) * x.w);
          const T* src = tile + m * N + (p - p0);
          T* dst = out + oh * s.out_w;
          for (int64_t c = ow; c < std::min(s.out_w, ow + row_end - p); ++c) dst[c] = src[c - ow] + shift;
          p = row_end;
        }
      }
    }
  });
}

template <typename T>
void conv2d_padded_rows(const T* input, const T* weight, const T* bias, T* output,
                        const Conv2dShape& s) {
  with_tile<T>(s.out_channels_per_group(), s.out_h * (s.in_w + 2 * s.pad_w), [&]<int MB, int NV>() {
    correlate_padded_rows<T, MB, NV>(input, weight, bias, output, s);
  });
}

// The grad_input of a stride-1 convolution is itself a stride-1 convolution: of grad_output,
// padded by dilation * (kernel - 1) - padding, with the kernel flipped and its input and output
// channels swapped. Needs padding <= dilation * (kernel - 1), true of every "same" or "valid" layer.
Conv2dShape grad_input_as_correlation(const Conv2dShape& s) {
  Conv2dShape t = s;
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.in_h = s.out_h, t.in_w = s.out_w, t.out_h = s.in_h, t.out_w = s.in_w;
  t.pad_h = s.dilation_h * (s.kernel_h - 1) - s.pad_h;
  t.pad_w = s.dilation_w * (s.kernel_w - 1) - s.pad_w;
  return t;
}

bool grad_input_is_correlation(const Conv2dShape& s) {
  const Conv2dShape t = grad_input_as_correlation(s);
  return s.stride_h == 1 && s.stride_w == 1 && t.pad_h >= 0 && t.pad_w >= 0 && worth_padded_rows(t);
}

template <typename T>
void conv2d_grad_input_by_correlation(const T* grad_output, const T* weight, T* grad_input,
                                      const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t kh_n = s.kernel_h, kw_n = s.kernel_w;
  // flipped[g * icg + ic][oc][kh][kw] = weight[g * ocg + oc][ic][K_h - 1 - kh][K_w - 1 - kw]
  std::vector<T> flipped(s.in_channels * ocg * kh_n * kw_n);
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t oc = 0; oc < ocg; ++oc)
      for (int64_t ic = 0; ic < icg; ++ic)
        for (int64_t kh = 0; kh < kh_n; ++kh)
          for (int64_t kw = 0; kw < kw_n; ++kw)
            flipped[(((g * icg + ic) * ocg + oc) * kh_n + kh) * kw_n + kw] =
                weight[(((g * ocg + oc) * icg + ic) * kh_n + kh_n - 1 - kh) * kw_n + kw_n - 1 - kw];
  conv2d_padded_rows<T>(grad_output, flipped.data(), nullptr, grad_input, grad_input_as_correlation(s));
}

// Layers with few output pixels (VGG's last blocks, LeNet's conv3) as matrix products over the
// unfolded input: row (n, p) of `unfolded` holds every value output pixel p of image n reads, in
// the weight's (ic, kh, kw) order and zero where it reads padding, so that
// output[n][oc][p] = sum over k of unfolded[(n, p)][k] * weight[oc][k] per group. Tiles run over
// whole rows; 16 zero rows and a vector of slack follow the last, so that no tile reads outside.
bool few_output_pixels(const Conv2dShape& s) { return s.out_h * s.out_w <= 32; }

// Reduction steps per pass over a weight panel in the unfolded forward.
constexpr int64_t kDepthBlock = 512;

// Each group's columns are stored in panels of `panel` columns, [group][column / panel][row]
// [column % panel], with 16 zero rows after the last of each panel: a tile reading `panel`
// columns of successive rows then walks memory contiguously (reads striding whole rows of a wide
// matrix miss the TLB on every row).
template <typename T>
struct Unfolded {
  std::vector<T> data;
  int64_t rows, group_width, panel;
  int64_t panel_size() const { return (rows + 16) * panel; }
  int64_t offset(int64_t row, int64_t group, int64_t column) const {
    return (group * blocks_of(group_width, panel) + column / panel) * panel_size() + row * panel + column % panel;
  }
  const T* at(int64_t row, int64_t group, int64_t column) const { return data.data() + offset(row, group, column); }
};

template <typename T>
Unfolded<T> unfold(const T* input, const Conv2dShape& s, int64_t panel) {
  const int64_t pixels = s.out_h * s.out_w, taps = s.kernel_h * s.kernel_w;
  const int64_t icg = s.in_channels_per_group();
  Unfolded<T> u{{}, s.batch * pixels, icg * taps, panel};
  u.data.assign(s.groups * blocks_of(u.group_width, panel) * u.panel_size() + 64, T(0));
  // Where column k of row 0 of each group lies: one table, not a division per value.
  std::vector<int64_t> column_offsets(s.in_channels * taps);
  for (int64_t c = 0; c < s.in_channels * taps; ++c) column_offsets[c] = u.offset(0, c / u.group_width, c % u.group_width);
  parallel_for(u.rows, s.in_channels * taps, [&](int64_t row) {
    const int64_t n = row / pixels, oh = row % pixels / s.out_w, ow = row % s.out_w;
    T* dst = u.data.data() + row * panel;
    const int64_t* column = column_offsets.data();
    for (int64_t ic = 0; ic < s.in_channels; ++ic) {
      const T* plane = input + (n * s.in_channels + ic) * s.in_h * s.in_w;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, ++column) {
          const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dilation_w;
          if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) dst[*column] = plane[ih * s.in_w + iw];
        }
      }
    }
  });
  return u;
}

// [rows][channels] -> [channels][rows] per image, and back: grad_output as one row per pixel.
template <typename T>
std::vector<T> pixels_by_channel(const T* grad_output, const Conv2dShape& s, int64_t extra_columns) {
  const int64_t pixels = s.out_h * s.out_w, width = s.out_channels + extra_columns;
  std::vector<T> out((s.batch * pixels + 16) * width + 64, T(0));
  parallel_for(s.batch, s.out_channels * pixels, [&](int64_t n) {
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t p = 0; p < pixels; ++p)
        out[(n * pixels + p) * width + oc] = grad_output[(n * s.out_channels + oc) * pixels + p];
  });
  return out;
}

template <typename T>
void conv2d_unfolded(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t depth = icg * s.kernel_h * s.kernel_w, pixels = s.out_h * s.out_w;
  const Unfolded<T> u = unfold(input, s, depth);
  with_tile<T>(u.rows, ocg, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const int64_t blocks = blocks_of(u.rows, MB), tiles = blocks_of(ocg, N);
    // Weights transposed into panels of N output channels, [group][panel][k][N], zero past ocg.
    std::vector<T> wt(s.groups * tiles * depth * N, T(0));
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t k = 0; k < depth; ++k)
        wt[((oc / ocg * tiles + oc % ocg / N) * depth + k) * N + oc % ocg % N] = weight[oc * depth + k];
    std::vector<int64_t> rows(kDepthBlock);
    for (int64_t k = 0; k < kDepthBlock; ++k) rows[k] = k * N;
    // The reduction runs in blocks of kDepthBlock (a 128 KB weight panel, which stays in L2
    // across all row blocks); sums[group][block][tile][MB][N] adds the blocks in order.
    std::vector<T> sums(s.groups * blocks * tiles * MB * N);
    for (int64_t k0 = 0; k0 < depth; k0 += kDepthBlock) {
      const int64_t steps = std::min(kDepthBlock, depth - k0);
      // Row blocks vary fastest: each thread keeps its weight panel across many of them.
      parallel_for_ranges(s.groups * blocks * tiles, steps * MB * N, [&](int64_t first, int64_t last) {
        alignas(64) T tile[MB * N];
        for (int64_t item = first; item < last; ++item) {
          const int64_t b = item % blocks, t = item / blocks % tiles, g = item / (tiles * blocks);
          gemm_tile<T, MB, NV>(u.at(b * MB, g, k0), u.panel, 1,
                               wt.data() + ((g * tiles + t) * depth + k0) * N, rows.data(), steps, tile);
          T* sum = sums.data() + ((g * blocks + b) * tiles + t) * MB * N;
          for (int64_t i = 0; i < MB * N; ++i) sum[i] = k0 == 0 ? tile[i] : sum[i] + tile[i];
        }
      });
    }
    parallel_for(s.groups * blocks * tiles, MB * N, [&](int64_t item) {
      const int64_t t = item % tiles, b = item / tiles % blocks, g = item / (tiles * blocks);
      const T* sum = sums.data() + ((g * blocks + b) * tiles + t) * MB * N;
      for (int64_t m = 0; m < std::min<int64_t>(MB, u.rows - b * MB); ++m) {
        const int64_t n = (b * MB + m) / pixels, p = (b * MB + m) % pixels;
        for (int64_t c = t * N; c < std::min(ocg, (t + 1) * N); ++c) {
          const int64_t oc = g * ocg + c;
          output[(n * s.out_channels + oc) * pixels + p] = sum[m * N + c - t * N] + (bias ? bias[oc] : T(0));
        }
      }
    });
  });
}

// The gradient of the unfolded input, a matrix product, folded back: each input value sums the
// gradients of the unfolded copies of it, in (pixel, tap) order.
template <typename T>
void conv2d_grad_input_unfolded(const T* grad_output, const T* weight, T* grad_input,
                                const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps, pixels = s.out_h * s.out_w;
  const int64_t rows = s.batch * pixels, unfolded_width = s.in_channels * taps;
  std::vector<T> unfolded_grad(rows * unfolded_width);
  with_tile<T>(rows, depth, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const int64_t blocks = blocks_of(rows, MB), tiles = blocks_of(depth, N);
    const std::vector<T> go = pixels_by_channel(grad_output, s, 0);
    // Weights in panels of N columns, [group][panel][oc][N], zero past depth.
    std::vector<T> w(s.groups * tiles * ocg * N, T(0));
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t k = 0; k < depth; ++k)
        w[((oc / ocg * tiles + k / N) * ocg + oc % ocg) * N + k % N] = weight[oc * depth + k];
    std::vector<int64_t> w_rows(ocg);
    for (int64_t oc = 0; oc < ocg; ++oc) w_rows[oc] = oc * N;
    parallel_for_ranges(s.groups * blocks * tiles, ocg * MB * N, [&](int64_t first, int64_t last) {
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        const int64_t t = item % tiles, b = item / tiles % blocks, g = item / (tiles * blocks);
        gemm_tile<T, MB, NV>(go.data() + b * MB * s.out_channels + g * ocg, s.out_channels, 1,
                             w.data() + (g * tiles + t) * ocg * N, w_rows.data(), ocg, tile);
        for (int64_t m = 0; m < std::min<int64_t>(MB, rows - b * MB); ++m) {
          T* dst = unfolded_grad.data() + (b * MB + m) * unfolded_width + g * depth;
          for (int64_t j = t * N; j < std::min(depth, (t + 1) * N); ++j) dst[j] = tile[m * N + j - t * N];
        }
      }
    });
  });
  parallel_for(s.batch * s.in_channels, pixels * taps, [&](int64_t plane) {
    const int64_t n = plane / s.in_channels, ic = plane % s.in_channels;
    T* gi = grad_input + plane * s.in_h * s.in_w;
    std::fill_n(gi, s.in_h * s.in_w, T(0));
    for (int64_t p = 0; p < pixels; ++p) {
      const int64_t oh = p / s.out_w, ow = p % s.out_w;
      const T* src = unfolded_grad.data() + (n * pixels + p) * unfolded_width + ic * taps;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dilation_w;
          if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) gi[ih * s.in_w + iw] += src[kh * s.kernel_w + kw];
        }
      }
    }
  });
}

// grad_weight[oc][k] = sum over rows (n, p) of grad_output[n][oc][p] * unfolded[(n, p)][k]: each
// tile sums over the whole batch in order, so the result does not depend on the thread count.
template <typename T>
void conv2d_grad_weight_unfolded(const T* grad_output, const T* input, T* grad_weight,
                                 const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group();
  const int64_t depth = s.in_channels_per_group() * s.kernel_h * s.kernel_w;
  with_tile<T>(ocg, depth, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const Unfolded<T> u = unfold(input, s, N);
    const int64_t blocks = blocks_of(ocg, MB), tiles = blocks_of(depth, N), go_width = s.out_channels + MB;
    const std::vector<T> go = pixels_by_channel(grad_output, s, MB);
    std::vector<int64_t> rows(u.rows);
    for (int64_t r = 0; r < u.rows; ++r) rows[r] = r * N;
    // Channel blocks vary fastest, so that each thread keeps one column panel of the unfolded
    // input in cache across many of them.
    parallel_for_ranges(s.groups * blocks * tiles, u.rows * MB * N, [&](int64_t first, int64_t last) {
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        const int64_t b = item % blocks, t = item / blocks % tiles, g = item / (tiles * blocks);
        gemm_tile<T, MB, NV>(go.data() + g * ocg + b * MB, 1, go_width,
                             u.at(0, g, t * N), rows.data(), u.rows, tile);
        for (int64_t m = 0; m < std::min<int64_t>(MB, ocg - b * MB); ++m) {
          T* gw = grad_weight + (g * ocg + b * MB + m) * depth;
          for (int64_t j = t * N; j < std::min(depth, (t + 1) * N); ++j) gw[j] = tile[m * N + j - t * N];
        }
      }
    });
  });
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

// grad_output of a few images repacked as [image][oh][ow][out lane] for one block of NV vectors
// of channels, lanes past `channels` zero. Written pixel by pixel, so that stores are contiguous.
template <typename T, int NV>
LENETX_SIMD_CLONES void pack_grad_output(const T* __restrict grad_output, T* __restrict packed,
                                         int64_t images, int64_t first_channel, int64_t channels,
                                         const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, B = NV * L;
  const int64_t out_plane = s.out_h * s.out_w;
  for (int64_t n = 0; n < images; ++n) {
    const T* go = grad_output + (n * s.out_channels + first_channel) * out_plane;
    T* dst = packed + n * out_plane * B;
    for (int64_t i = 0; i < out_plane; ++i, dst += B) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) store_vec(dst + v * L, V{});
      for (int64_t c = 0; c < channels; ++c) dst[c] = go[c * out_plane + i];
    }
  }
}

template <typename T, int B, int PW>
void conv2d_forward_impl(const T* in, const T* w, const T* bias, T* out, const Conv2dShape& s) {
  const std::vector<T> packed = pack_weight_by_output(w, s, B);
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(ocg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  parallel_for(s.batch * s.groups * nblocks * s.out_h, s.out_w * icg * taps * B, [&](int64_t item) {
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
  parallel_for(s.batch * s.groups * nblocks * s.in_h, s.in_w * ocg * taps * B, [&](int64_t item) {
    const int64_t ih = item % s.in_h, b = item / s.in_h % nblocks;
    const int64_t g = item / (s.in_h * nblocks) % s.groups, n = item / (s.in_h * nblocks * s.groups);
    grad_input_row<T, B, PW>(go + (n * s.out_channels + g * ocg) * out_plane,
                             packed.data() + (g * nblocks + b) * ocg * taps * B,
                             gi + (n * s.in_channels + g * icg + b * B) * in_plane, ih,
                             std::min<int64_t>(B, icg - b * B), s);
  });
}

// Partial grad_weight of one input channel, one block of NV vectors of output channels and a few
// images, for TW taps of one kernel row: the TW accumulators are independent, which hides the
// latency of each multiply-add. `input` is the image's zero-padded plane, so every tap of every
// output pixel reads inside it.
template <typename T, int NV, int TW>
LENETX_SIMD_CLONES void grad_weight_taps(const T* __restrict input, int64_t image_stride,
                                         const PaddedPlanes<T>& x, const T* __restrict packed_go,
                                         T* __restrict taps, int64_t images, int64_t kh,
                                         int64_t kw0, const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, B = NV * L;
  // Even and odd pixels accumulate apart: twice the independent chains of multiply-adds.
  V acc[2][TW][NV];
#pragma GCC unroll 2
  for (int e = 0; e < 2; ++e)
#pragma GCC unroll 8
    for (int t = 0; t < TW; ++t)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[e][t][v] = V{};
  const auto accumulate = [&](V(&sum)[TW][NV], const T* go, const T* in) __attribute__((always_inline)) {
    V g[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) load_vec(g[v], go + v * L);
#pragma GCC unroll 8
    for (int t = 0; t < TW; ++t) {
      const T value = in[t * s.dilation_w];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) sum[t][v] += value * g[v];
    }
  };
  const int64_t out_plane = s.out_h * s.out_w;
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const T* row = input + n * image_stride + (oh * s.stride_h + kh * s.dilation_h) * x.w +
                     kw0 * s.dilation_w;
      const T* go = packed_go + (n * out_plane + oh * s.out_w) * B;
      int64_t ow = 0;
      for (; ow + 1 < s.out_w; ow += 2) {
        accumulate(acc[0], go + ow * B, row + ow * s.stride_w);
        accumulate(acc[1], go + (ow + 1) * B, row + (ow + 1) * s.stride_w);
      }
      if (ow < s.out_w) accumulate(acc[0], go + ow * B, row + ow * s.stride_w);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < TW; ++t)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      store_vec(taps + (kh * s.kernel_w + kw0 + t) * B + v * L, acc[0][t][v] + acc[1][t][v]);
}

// Up to this many taps of a kernel row share one pass over the pixels.
constexpr int64_t kTapsPerPass = 5;

template <typename T, int NV>
void grad_weight_partial(const T* input, int64_t image_stride, const PaddedPlanes<T>& x,
                         const T* packed_go, T* taps, int64_t images, const Conv2dShape& s) {
  for (int64_t kh = 0; kh < s.kernel_h; ++kh)
    for (int64_t kw0 = 0; kw0 < s.kernel_w; kw0 += kTapsPerPass) {
      const auto pass = [&]<int TW>() {
        grad_weight_taps<T, NV, TW>(input, image_stride, x, packed_go, taps, images, kh, kw0, s);
      };
      switch (std::min(kTapsPerPass, s.kernel_w - kw0)) {
        case 1: pass.template operator()<1>(); break;
        case 2: pass.template operator()<2>(); break;
        case 3: pass.template operator()<3>(); break;
        case 4: pass.template operator()<4>(); break;
        default: pass.template operator()<5>(); break;
      }
    }
}

template <typename T, int NV>
void conv2d_grad_weight_impl(const T* go, const T* in, T* gw, const Conv2dShape& s) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  constexpr int B = NV * Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(ocg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial);
  const int64_t out_plane = s.out_h * s.out_w;
  const PaddedPlanes<T> x = pad_planes(in, s.batch * s.in_channels, s.in_h, s.in_w, s.pad_h, s.pad_w, 0);
  // partial[chunk][group][block][ic][tap][lane]
  const int64_t per_chunk = s.groups * nblocks * icg * taps * B;
  std::vector<T> partial(chunks * per_chunk);
  parallel_for(chunks * s.groups * nblocks, kImagesPerPartial * out_plane * icg * taps * B, [&](int64_t item) {
    const int64_t b = item % nblocks, g = item / nblocks % s.groups, chunk = item / (nblocks * s.groups);
    const int64_t first = chunk * kImagesPerPartial;
    const int64_t images = std::min(kImagesPerPartial, s.batch - first);
    const int64_t oc = g * ocg + b * B;
    const std::unique_ptr<T[]> packed_go(new T[images * out_plane * B]);  // all written by the packing
    pack_grad_output<T, NV>(go + first * s.out_channels * out_plane, packed_go.get(), images, oc,
                            std::min<int64_t>(B, ocg - b * B), s);
    for (int64_t ic = 0; ic < icg; ++ic) {
      grad_weight_partial<T, NV>(x.data + (first * s.in_channels + g * icg + ic) * x.plane,
                                 s.in_channels * x.plane, x, packed_go.get(),
                                 partial.data() + chunk * per_chunk + ((g * nblocks + b) * icg + ic) * taps * B,
                                 images, s);
    }
  });
  parallel_for(s.out_channels, icg * taps * chunks, [&](int64_t oc) {
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

// grad_weight of a stride-1 layer with few output channels (LeNet's conv1: 6), as dot products
// along the padded rows of worth_padded_rows: grad_output is laid out on the same rows, with
// zeros in the columns past out_w, so that every tap is a dot product of two contiguous runs.
// Those zeros meet real input values, which is exact only for finite input: an input with an
// infinity or NaN goes to the channel-vector kernel instead.
template <typename T>
void conv2d_grad_weight_by_rows(const T* grad_output, const T* input, T* grad_weight,
                                const Conv2dShape& s) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  constexpr int MB = 6, TB = 3;
  constexpr int64_t L = Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps;
  bool finite = true;
  const PaddedPlanes<T> x = pad_planes(input, s.batch * s.in_channels, s.in_h, s.in_w, s.pad_h,
                                       s.pad_w, (s.kernel_w - 1) * s.dilation_w + L, &finite);
  if (!finite) return conv2d_grad_weight_impl<T, 1>(grad_output, input, grad_weight, s);
  const int64_t positions = s.out_h * x.w, len = blocks_of(positions, L) * L;
  // grad_output as [image][channel (MB zero ones after the last)][len], each value written once.
  const int64_t go_rows = s.out_channels + MB;
  const std::unique_ptr<T[]> go(new T[s.batch * go_rows * len]);
  parallel_for(s.batch * go_rows, len, [&](int64_t row) {
    const int64_t n = row / go_rows, oc = row % go_rows;
    T* dst = go.get() + row * len;
    if (oc >= s.out_channels) {
      std::fill_n(dst, len, T(0));
      return;
    }
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      std::copy_n(grad_output + ((n * s.out_channels + oc) * s.out_h + oh) * s.out_w, s.out_w, dst + oh * x.w);
      std::fill(dst + oh * x.w + s.out_w, dst + (oh + 1) * x.w, T(0));
    }
    std::fill(dst + positions, dst + len, T(0));
  });
  std::vector<int64_t> tap_offsets;
  for (int64_t ic = 0; ic < icg; ++ic)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw)
        tap_offsets.push_back(ic * x.plane + kh * s.dilation_h * x.w + kw * s.dilation_w);
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial), blocks = blocks_of(ocg, MB);
  const int64_t tap_blocks = blocks_of(depth, TB);
  // partial[chunk][oc][k]
  std::vector<T> partial(chunks * s.out_channels * depth);
  parallel_for(chunks * s.groups * blocks * tap_blocks, kImagesPerPartial * len * MB * TB, [&](int64_t item) {
    const int64_t j = item % tap_blocks, b = item / tap_blocks % blocks;
    const int64_t g = item / (tap_blocks * blocks) % s.groups, chunk = item / (tap_blocks * blocks * s.groups);
    const int64_t k0 = j * TB, count = std::min<int64_t>(TB, depth - k0);
    const int64_t oc0 = g * ocg + b * MB;
    T sums[MB * TB] = {};
    for (int64_t n = chunk * kImagesPerPartial; n < std::min(s.batch, (chunk + 1) * kImagesPerPartial); ++n) {
      const T* a = go.get() + (n * go_rows + oc0) * len;
      const T* in = x.data + (n * s.in_channels + g * icg) * x.plane;
      switch (count) {
        case 1: dot_tile<T, MB, 1>(a, len, in, tap_offsets.data() + k0, len, sums); break;
        case 2: dot_tile<T, MB, 2>(a, len, in, tap_offsets.data() + k0, len, sums); break;
        default: dot_tile<T, MB, TB>(a, len, in, tap_offsets.data() + k0, len, sums); break;
      }
    }
    for (int64_t m = 0; m < std::min<int64_t>(MB, ocg - b * MB); ++m)
      for (int64_t t = 0; t < count; ++t)
        partial[(chunk * s.out_channels + oc0 + m) * depth + k0 + t] = sums[m * count + t];
  });
  parallel_for(s.out_channels, depth * chunks, [&](int64_t oc) {
    for (int64_t k = 0; k < depth; ++k) {
      acc_t sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[(chunk * s.out_channels + oc) * depth + k];
      grad_weight[oc * depth + k] = static_cast<T>(sum);
    }
  });
}

// grad_weight as one matrix product per kernel tap, input channels along the vector lanes: for
// tap (kh, kw), grad_weight[oc][ic] = sum over images and output pixels of grad_output[oc][pixel]
// times input channel ic at the position that pixel reads through the tap. The input is copied
// channels-last with its zero border, so that a position's channels are one contiguous run.
// Images are summed in chunks of kImagesPerPartial whose partials are added in a fixed order.
template <typename T>
void conv2d_grad_weight_channels_last(const T* grad_output, const T* input, T* grad_weight,
                                      const Conv2dShape& s) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, out_plane = s.out_h * s.out_w, C = s.in_channels;
  const int64_t padded_h = s.in_h + 2 * s.pad_h, padded_w = s.in_w + 2 * s.pad_w;
  // Chunks of about 1024 output pixels: the input rows one tile reads (1024 pixels x one
  // vector) then stay in L2 across the channel blocks that reuse them.
  const int64_t chunk_images = std::max<int64_t>(1, 1024 / std::max<int64_t>(out_plane, 1));
  const int64_t image = padded_h * padded_w * C, chunks = blocks_of(s.batch, chunk_images);
  with_tile<T>(ocg, icg, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    std::vector<T> x(s.batch * image + N, T(0));
    parallel_for(s.batch * s.in_h, C * s.in_w, [&](int64_t row) {
      const int64_t n = row / s.in_h, h = row % s.in_h;
      T* dst = x.data() + n * image + ((h + s.pad_h) * padded_w + s.pad_w) * C;
      for (int64_t c = 0; c < C; ++c) {
        const T* src = input + ((n * C + c) * s.in_h + h) * s.in_w;
        for (int64_t w = 0; w < s.in_w; ++w) dst[w * C + c] = src[w];
      }
    });
    // grad_output per chunk as [channel][image][pixel], then MB zero channels that the last
    // tile reads and drops.
    const int64_t go_rows = s.out_channels + MB, go_chunk = go_rows * chunk_images * out_plane;
    const std::unique_ptr<T[]> go(new T[chunks * go_chunk]);
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      std::fill_n(go.get() + chunk * go_chunk + s.out_channels * chunk_images * out_plane,
                  MB * chunk_images * out_plane, T(0));
    parallel_for(s.batch * s.out_channels, out_plane, [&](int64_t item) {
      const int64_t n = item / s.out_channels, oc = item % s.out_channels;
      const int64_t chunk = n / chunk_images, local = n % chunk_images;
      std::copy_n(grad_output + item * out_plane, out_plane,
                  go.get() + chunk * go_chunk + (oc * chunk_images + local) * out_plane);
    });
    // Where each pixel of a chunk reads through tap (0, 0); tap (kh, kw) adds a constant.
    std::vector<int64_t> pixel_rows(chunk_images * out_plane);
    for (int64_t n = 0; n < chunk_images; ++n)
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow)
          pixel_rows[(n * s.out_h + oh) * s.out_w + ow] =
              n * image + (oh * s.stride_h * padded_w + ow * s.stride_w) * C;
    const int64_t blocks = blocks_of(ocg, MB), tiles = blocks_of(icg, N);
    // partial[chunk][oc][ic][tap]
    std::vector<T> partial(chunks * s.out_channels * icg * taps);
    parallel_for_ranges(chunks * s.groups * blocks * taps * tiles, chunk_images * out_plane * MB * N, [&](int64_t first, int64_t last) {
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        // Channel blocks vary fastest: the input panel of one tap stays in cache across them.
        const int64_t b = item % blocks, t = item / blocks % tiles, tap = item / (blocks * tiles) % taps;
        const int64_t g = item / (tiles * taps * blocks) % s.groups;
        const int64_t chunk = item / (tiles * taps * blocks * s.groups);
        const int64_t images = std::min(chunk_images, s.batch - chunk * chunk_images);
        const int64_t kh = tap / s.kernel_w, kw = tap % s.kernel_w;
        const int64_t oc0 = g * ocg + b * MB, ic0 = t * N;
        gemm_tile<T, MB, NV>(go.get() + chunk * go_chunk + oc0 * chunk_images * out_plane,
                             chunk_images * out_plane, 1,
                             x.data() + chunk * chunk_images * image +
                                 (kh * s.dilation_h * padded_w + kw * s.dilation_w) * C + g * icg + ic0,
                             pixel_rows.data(), images * out_plane, tile);
        for (int64_t m = 0; m < std::min<int64_t>(MB, ocg - b * MB); ++m)
          for (int64_t j = 0; j < std::min<int64_t>(N, icg - ic0); ++j)
            partial[((chunk * s.out_channels + oc0 + m) * icg + ic0 + j) * taps + tap] = tile[m * N + j];
      }
    });
    const int64_t per_chunk = s.out_channels * icg * taps;
    parallel_for(s.out_channels, icg * taps * chunks, [&](int64_t oc) {
      for (int64_t k = oc * icg * taps; k < (oc + 1) * icg * taps; ++k) {
        acc_t sum = 0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * per_chunk + k];
        grad_weight[k] = static_cast<T>(sum);
      }
    });
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
    if (few_output_pixels(s))
      run(conv2d_unfolded<scalar_t>);
    else if (worth_padded_rows(s))
      run(conv2d_padded_rows<scalar_t>);
    else
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
    if (few_output_pixels(s))
      run(conv2d_grad_input_unfolded<scalar_t>);
    else if (grad_input_is_correlation(s))
      run(conv2d_grad_input_by_correlation<scalar_t>);
    else
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
    if (few_output_pixels(s))
      run(conv2d_grad_weight_unfolded<scalar_t>);
    else if (s.in_channels_per_group() >= Vec<scalar_t>::kLanes)
      run(conv2d_grad_weight_channels_last<scalar_t>);
    else if (s.out_channels_per_group() <= 8 && worth_padded_rows(s))
      run(conv2d_grad_weight_by_rows<scalar_t>);
    else if (s.out_channels_per_group() <= Vec<scalar_t>::kLanes)
      run(conv2d_grad_weight_impl<scalar_t, 1>);
    else
      run(conv2d_grad_weight_impl<scalar_t, 2>);
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
    parallel_for(channels, batch * plane, [&](int64_t c) {
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
