// Convolution, ReLU and non-overlapping pooling as one operator on the CPU, a chunk of images at
// a time. The convolution's output, and in the backward its gradient, live only in a thread's
// buffer while still in cache, instead of as tensors the size of the layer's activations
// (2.4 MB for LeNet-5's conv1 at batch 128) written to memory by one operator and read back by
// the next. The forward saves one byte per convolution output, the mask: whether the gradient
// reaches it (relu passes it and, for max pooling, it is its window's maximum). Compiled once per
// instruction set (isa/kernels.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "block_loops.h"
#include "conv2d_paths.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {
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
    const Scratch<T> scratch(std::min(kImagesPerChunk, batch) * conv_image);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t n0 = chunk * kImagesPerChunk;
      fn(n0, std::min(kImagesPerChunk, batch - n0), scratch.data());
    }
  });
}

// Columns that no window covers get no gradient: those of `rows` mask rows from `mask` on.
inline void clear_uncovered_columns(uint8_t* mask, int64_t rows, const ConvReluPoolShape& s) {
  const int64_t w = s.conv.out_w, covered_w = s.pooled_w * s.pool_w;
  for (int64_t r = 0; r < rows; ++r) std::fill(mask + r * w + covered_w, mask + (r + 1) * w, uint8_t{0});
}

// Nor do the rows below the last row of windows, in a plane's mask.
inline void clear_uncovered_rows(uint8_t* mask, const ConvReluPoolShape& s) {
  std::fill(mask + s.pooled_h * s.pool_h * s.conv.out_w, mask + s.conv.out_h * s.conv.out_w, uint8_t{0});
}

// `windows` rows of windows of one (image, channel) plane of the convolution's output, pooled
// after relu as torch's avg_pool2d/max_pool2d (floor mode, stride = kernel) would pool relu's
// output, and their mask rows. The convolution's rows lie conv_w apart, and take *bias first
// where bias is not null. Max pooling scans each window in torch's order with its update rule (a
// NaN wins), starting from the first tap: what -inf becomes after one update.
template <typename T, bool MAX_POOL>
void pool_rows(const T* conv, int64_t conv_w, const T* bias, int64_t windows, T* output, uint8_t* mask,
               const ConvReluPoolShape& s) {
  const int64_t w = s.conv.out_w, pool_h = s.pool_h, pool_w = s.pool_w;
  const T divisor = static_cast<T>(pool_h * pool_w);
  for (int64_t ph = 0; ph < windows; ++ph) {
    const T* rows = conv + ph * pool_h * conv_w;
    uint8_t* mask_rows = mask + ph * pool_h * w;
    T* out = output + ph * s.pooled_w;
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      const int64_t corner = pw * pool_w;
      const auto value_at = [&](int64_t kh, int64_t kw) {
        const T value = rows[kh * conv_w + corner + kw];
        return bias ? value + *bias : value;
      };
      T best = relu(value_at(0, 0)), sum = 0;
      int64_t best_tap = 0;
      for (int64_t kh = 0; kh < pool_h; ++kh) {
        for (int64_t kw = 0; kw < pool_w; ++kw) {
          const T value = value_at(kh, kw);
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
  clear_uncovered_columns(mask, windows * pool_h, s);
}

// The 2x2 windows' kernels below take a row pair's windows half a vector at a time: one vector of
// convolution columns holds the two columns of half a vector of windows. The last block of a row
// ends at its last window and may redo windows of the block before (the same values), so no
// scalar remainder runs (for_each_block); they need a row of at least half a vector of windows. With plain loops
// over stride-two columns GCC moved 8 bytes at a time, and pooling took as long as the
// convolution (benchmarks/NOTES.md, section 13).
//
// Vectors of LANES values: Vec<T>'s, or 8 lanes where Vec<T>'s half is longer than a row of
// windows (AVX-512's 16 floats against LeNet-5's conv2, 5 windows a row), which would otherwise
// take the scalar kernels (NOTES, section 25).
template <typename T, int LANES>
struct PoolVec {
  static constexpr int kLanes = LANES, kHalf = LANES / 2;
  typedef T type __attribute__((vector_size(LANES * sizeof(T))));
  typedef T half __attribute__((vector_size(LANES / 2 * sizeof(T))));
  typedef typename LaneMask<T>::Lane lanes __attribute__((vector_size(LANES * sizeof(T))));
  typedef uint8_t bytes __attribute__((vector_size(LANES)));
  // 32- and 64-byte float vectors take AVX2's and AVX-512's instructions for the masks below.
  static constexpr bool kAvx2Floats = std::is_same_v<T, float> && LANES == 8 && kVectorBytes >= 32;
  static constexpr bool kAvx512Floats = std::is_same_v<T, float> && LANES == 16 && kVectorBytes == 64;
};

// The narrower width of the pooling kernels' vectors, for rows too short for Vec<T>'s.
template <typename T>
constexpr int kNarrowPoolLanes = std::min(Vec<T>::kLanes, 8);

template <typename T, int LANES>
bool fits_2x2_vectors(const ConvReluPoolShape& s) {
  return s.pool_h == 2 && s.pool_w == 2 && s.pooled_w >= PoolVec<T, LANES>::kHalf;
}

// The windows' left (even lanes) and right (odd lanes) columns.
template <typename P, std::size_t... I>
__attribute__((always_inline)) inline void split_columns(const typename P::type& v, typename P::half& left,
                                                         typename P::half& right, std::index_sequence<I...>) {
  left = __builtin_shufflevector(v, v, (2 * I)...);
  right = __builtin_shufflevector(v, v, (2 * I + 1)...);
}

// Each window's value in both its columns.
template <typename P, std::size_t... I>
__attribute__((always_inline)) inline void spread_columns(const typename P::half& h, typename P::type& v,
                                                          std::index_sequence<I...>) {
  v = __builtin_shufflevector(h, h, (I / 2)...);
}

// One vector of mask bytes (0 or 1) loaded as lanes of T's width (0 or 1). On AVX2 and AVX-512 a
// float vector's bytes widen in one instruction (vpmovzxbd from memory); GCC 12 makes more of
// __builtin_convertvector: in one step it moves the bytes one by one through general registers,
// in two (bytes to shorts to ints) it still takes nine instructions (AVX-512: seven, NOTES,
// section 25).
template <typename P>
__attribute__((always_inline)) inline void load_mask(const uint8_t* mask, typename P::lanes& lanes) {
  using Lanes = typename P::lanes;
#if defined(__x86_64__)
  if constexpr (P::kAvx2Floats) {
    lanes = Lanes(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mask))));
    return;
  }
  if constexpr (P::kAvx512Floats) {
    // The zero-masking forms, here and in store_masks: the plain ones' undefined source lanes set
    // off GCC 12's -Wmaybe-uninitialized.
    lanes = Lanes(_mm512_maskz_cvtepu8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(mask))));
    return;
  }
#endif
  typedef uint16_t Shorts __attribute__((vector_size(2 * P::kLanes)));
  typename P::bytes bytes;
  load_vec(bytes, mask);
  lanes = __builtin_convertvector(__builtin_convertvector(bytes, Shorts), Lanes);
}

// A row pair's masks, lanes of T's width that are all ones where the gradient passes and zero
// elsewhere, stored as one vector of bytes (0 or 1) per row. On AVX2 a float row pair takes two
// saturating packs and a byte shuffle, on AVX-512 a truncation per row (vpmovdb);
// __builtin_convertvector narrowed each row in seven instructions (half of the average pooling's,
// by objdump), and in one step GCC 12 took the bytes out one by one.
template <typename P>
__attribute__((always_inline)) inline void store_masks(uint8_t* top, uint8_t* bottom,
                                                       const typename P::lanes& top_lanes,
                                                       const typename P::lanes& bottom_lanes) {
#if defined(__x86_64__)
  if constexpr (P::kAvx2Floats) {
    // Per 128-bit half: the top row's 4 values, then the bottom row's; then all 16 as bytes.
    const __m256i halves = _mm256_packs_epi32(__m256i(top_lanes), __m256i(bottom_lanes));
    const __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1));
    const __m128i rows = _mm_and_si128(
        _mm_shuffle_epi8(bytes, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15)), _mm_set1_epi8(1));
    // Mask rows have no alignment: _mm_storel_epi64 stores through an unaligned type, where GCC's
    // _mm_storeh_pd stores a double (misaligned: undefined behaviour, by -fsanitize=undefined).
    _mm_storel_epi64(reinterpret_cast<__m128i*>(top), rows);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(bottom), _mm_unpackhi_epi64(rows, rows));
    return;
  }
  if constexpr (P::kAvx512Floats) {
    const __m512i one = _mm512_set1_epi32(1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(top),
                     _mm512_maskz_cvtepi32_epi8(0xffff, _mm512_and_si512(__m512i(top_lanes), one)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bottom),
                     _mm512_maskz_cvtepi32_epi8(0xffff, _mm512_and_si512(__m512i(bottom_lanes), one)));
    return;
  }
#endif
  typedef uint16_t Shorts __attribute__((vector_size(2 * P::kLanes)));
  using Bytes = typename P::bytes;
  store_vec(top, __builtin_convertvector(__builtin_convertvector(top_lanes & 1, Shorts), Bytes));
  store_vec(bottom, __builtin_convertvector(__builtin_convertvector(bottom_lanes & 1, Shorts), Bytes));
}

// The lanes of `left` and `right` alternately: per column pair, its windows' values.
template <typename Half, typename Full, std::size_t... I>
__attribute__((always_inline)) inline void interleave_columns(const Half& left, const Half& right, Full& v,
                                                              std::index_sequence<I...>) {
  constexpr std::size_t kHalf = sizeof...(I) / 2;
  v = __builtin_shufflevector(left, right, (I % 2 ? kHalf + I / 2 : I / 2)...);
}

// row[c] = passes[c] ? shares[c] : 0 for c < count: in vectors of P's width, the last block
// ending at count, so that row may be shares itself (a block redone selects the same values).
template <typename P, typename T>
void select_row_in_vectors(const T* shares, const uint8_t* passes, int64_t count, T* row) {
  for_each_block(count, P::kLanes, [&](int64_t c) __attribute__((always_inline)) {
    typename P::type values;
    load_vec(values, shares + c);
    typename P::lanes lanes;
    load_mask<P>(passes + c, lanes);
    store_vec(row + c, lanes != 0 ? values : typename P::type{});
  });
}

// The same, in Vec's width or 8 lanes where count fills them, else a value at a time.
template <typename T>
void select_row(const T* shares, const uint8_t* passes, int64_t count, T* row) {
  constexpr int wide = Vec<T>::kLanes, narrow = kNarrowPoolLanes<T>;
  if (count >= wide)
    select_row_in_vectors<PoolVec<T, wide>>(shares, passes, count, row);
  else if (count >= narrow)
    select_row_in_vectors<PoolVec<T, narrow>>(shares, passes, count, row);
  else
    for (int64_t c = 0; c < count; ++c) row[c] = passes[c] ? shares[c] : T(0);
}

// The gradient of one plane of the convolution's output, its rows conv_w apart: each window's
// grad_output (divided by the window's size for average pooling) where the mask lets it through,
// zero elsewhere. A row of windows' shares is spread over its last convolution row first, then
// each of its rows is selected by the mask in vectors: a branch per mask byte (random in
// training) made this kernel 44 % of a fused backward with 3x3 windows (NOTES, section 25).
template <typename T, bool MAX_POOL>
void unpool_plane(const T* grad_output, const uint8_t* mask, T* grad_conv, int64_t conv_w, const ConvReluPoolShape& s) {
  const int64_t w = s.conv.out_w;
  const int64_t pool_h = s.pool_h, pool_w = s.pool_w;
  const int64_t covered_w = s.pooled_w * pool_w;
  const T divisor = MAX_POOL ? T(1) : static_cast<T>(pool_h * pool_w);
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    T* shares = grad_conv + ((ph + 1) * pool_h - 1) * conv_w;
    const T* go = grad_output + ph * s.pooled_w;
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) std::fill_n(shares + pw * pool_w, pool_w, go[pw] / divisor);
    // The last row selects from itself, after the rows above it.
    for (int64_t r = ph * pool_h; r < (ph + 1) * pool_h; ++r) {
      T* row = grad_conv + r * conv_w;
      select_row(shares, mask + r * w, covered_w, row);
      std::fill(row + covered_w, row + w, T(0));
    }
  }
  for (int64_t r = s.pooled_h * pool_h; r < s.conv.out_h; ++r) std::fill_n(grad_conv + r * conv_w, w, T(0));
}

// pool_rows for 2x2 windows. Average pooling adds each column's two relu'd rows, then the pair of
// columns. Max pooling scans each window's raw values in torch's order and applies relu once,
// after the scan: relu is monotone, so relu's maximum is at the same tap unless the maximum is
// <= 0, and then every tap relus to zero (or -0.0), the first wins the tie and none passes the
// gradient.
template <typename T, bool MAX_POOL, int LANES>
void pool_rows_2x2(const T* __restrict conv, int64_t conv_w, const T* bias, int64_t windows, T* __restrict output,
                   uint8_t* __restrict mask, const ConvReluPoolShape& s) {
  using P = PoolVec<T, LANES>;
  using V = typename P::type;
  using H = typename P::half;
  using Lanes = typename P::lanes;
  constexpr auto halves = std::make_index_sequence<P::kHalf>{};
  constexpr auto lanes = std::make_index_sequence<P::kLanes>{};
  const int64_t w = s.conv.out_w;
  const H zero{};
  const V shift = V{} + (bias ? *bias : T(0));
  for (int64_t ph = 0; ph < windows; ++ph) {
    const T* top = conv + 2 * ph * conv_w;
    const T* bottom = top + conv_w;
    uint8_t* mask_top = mask + 2 * ph * w;
    uint8_t* mask_bottom = mask_top + w;
    T* out = output + ph * s.pooled_w;
    for_each_block(s.pooled_w, P::kHalf, [&](int64_t first) __attribute__((always_inline)) {
      V top_v, bottom_v;
      load_vec(top_v, top + 2 * first);
      load_vec(bottom_v, bottom + 2 * first);
      if (bias) {
        top_v += shift;
        bottom_v += shift;
      }
      H pooled;
      if (MAX_POOL) {
        H top_left, top_right, bottom_left, bottom_right;
        split_columns<P>(top_v, top_left, top_right, halves);
        split_columns<P>(bottom_v, bottom_left, bottom_right, halves);
        using HalfLanes = decltype(top_left < zero);
        H best = top_left;
        HalfLanes tap{};
        const auto update = [&](const H& value, int index) __attribute__((always_inline)) {
          const HalfLanes take = value > best || value != value;
          best = take ? value : best;
          tap = take ? HalfLanes{} + index : tap;
        };
        update(top_right, 1);
        update(bottom_left, 2);
        update(bottom_right, 3);
        const HalfLanes passes = !(best <= zero);
        pooled = passes ? best : (top_left < zero ? zero : top_left);
        const HalfLanes winner = passes ? tap : HalfLanes{} + 4;
        Lanes top_mask, bottom_mask;
        interleave_columns(HalfLanes(winner == 0), HalfLanes(winner == 1), top_mask, lanes);
        interleave_columns(HalfLanes(winner == 2), HalfLanes(winner == 3), bottom_mask, lanes);
        store_masks<P>(mask_top + 2 * first, mask_bottom + 2 * first, top_mask, bottom_mask);
      } else {
        // relu and the columns' sums on whole vectors, then one split: the same additions in the
        // same order as splitting first, in fewer instructions.
        const V vzero{};
        H left, right;
        split_columns<P>((top_v < vzero ? vzero : top_v) + (bottom_v < vzero ? vzero : bottom_v), left, right,
                         halves);
        pooled = (left + right) / T(4);
        store_masks<P>(mask_top + 2 * first, mask_bottom + 2 * first, !(top_v <= vzero), !(bottom_v <= vzero));
      }
      store_vec(out + first, pooled);
    });
  }
  clear_uncovered_columns(mask, 2 * windows, s);
}

// unpool_plane for 2x2 windows.
template <typename T, bool MAX_POOL, int LANES>
void unpool_plane_2x2(const T* __restrict grad_output, const uint8_t* __restrict mask, T* __restrict grad_conv,
                      int64_t conv_w, const ConvReluPoolShape& s) {
  using P = PoolVec<T, LANES>;
  using V = typename P::type;
  using H = typename P::half;
  using Lanes = typename P::lanes;
  constexpr auto lanes = std::make_index_sequence<P::kLanes>{};
  const int64_t w = s.conv.out_w;
  const T divisor = MAX_POOL ? T(1) : T(4);
  // A row pair at a time: both rows take the same windows' shares.
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    T* rows = grad_conv + 2 * ph * conv_w;
    const uint8_t* passes = mask + 2 * ph * w;
    const T* go = grad_output + ph * s.pooled_w;
    for_each_block(s.pooled_w, P::kHalf, [&](int64_t first) __attribute__((always_inline)) {
      H window_grad;
      load_vec(window_grad, go + first);
      V share;
      spread_columns<P>(window_grad / divisor, share, lanes);
      for (int64_t r = 0; r < 2; ++r) {
        Lanes passes_lanes;
        load_mask<P>(passes + r * w + 2 * first, passes_lanes);
        store_vec(rows + r * conv_w + 2 * first, passes_lanes != 0 ? share : V{});
      }
    });
    for (int64_t r = 0; r < 2; ++r) std::fill(rows + r * conv_w + 2 * s.pooled_w, rows + r * conv_w + w, T(0));
  }
  for (int64_t r = 2 * s.pooled_h; r < s.conv.out_h; ++r) std::fill_n(grad_conv + r * conv_w, w, T(0));
}

// The pooling and unpooling functions for a shape: 2x2 windows in rows long enough for vectors
// have their own.
template <typename T>
struct PoolingKernels {
  using Pool = void (*)(const T*, int64_t, const T*, int64_t, T*, uint8_t*, const ConvReluPoolShape&);
  using Unpool = void (*)(const T*, const uint8_t*, T*, int64_t, const ConvReluPoolShape&);
  Pool pool;
  Unpool unpool;
};

template <typename T, bool MAX_POOL>
PoolingKernels<T> pooling_kernels(const ConvReluPoolShape& s) {
  constexpr int wide = Vec<T>::kLanes, narrow = kNarrowPoolLanes<T>;
  if (fits_2x2_vectors<T, wide>(s)) return {pool_rows_2x2<T, MAX_POOL, wide>, unpool_plane_2x2<T, MAX_POOL, wide>};
  if (fits_2x2_vectors<T, narrow>(s))
    return {pool_rows_2x2<T, MAX_POOL, narrow>, unpool_plane_2x2<T, MAX_POOL, narrow>};
  return {pool_rows<T, MAX_POOL>, unpool_plane<T, MAX_POOL>};
}

template <typename T>
PoolingKernels<T> pooling_kernels(const ConvReluPoolShape& s, bool max_pool) {
  return max_pool ? pooling_kernels<T, true>(s) : pooling_kernels<T, false>(s);
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
    // Over padded rows, each band of rows is pooled from the tiles' buffer, bias and all, while
    // it is in L1: through a chunk's convolution output (150 KB for LeNet-5's conv1), the copy
    // and the pooling took four fifths as long as the products (benchmarks/NOTES.md, section 28).
    const bool pooled_bands = forward_path<scalar_t>(w_data, c) == ForwardPath::padded_rows;
    for_each_chunk<scalar_t>(c.batch, pooled_bands ? 0 : c.out_channels * conv_plane, work_per_chunk,
                             [&](int64_t n0, int64_t images, scalar_t* conv) {
      Conv2dShape chunk = c;
      chunk.batch = images;
      scalar_t* chunk_output = out_data + n0 * c.out_channels * pooled_plane;
      uint8_t* chunk_mask = mask_data + n0 * c.out_channels * conv_plane;
      if (pooled_bands) {
        conv2d_padded_row_bands<scalar_t>(in_data + n0 * in_image, w_data, s.pool_h, chunk,
                                          [&](const PaddedRowsBand<scalar_t>& band) {
          const int64_t first_window = band.first_row / s.pool_h;
          const int64_t windows = std::min(band.end_row / s.pool_h, s.pooled_h) - first_window;
          for (int64_t m = 0; m < band.channels; ++m) {
            const int64_t plane = band.image * c.out_channels + band.oc0 + m;
            uint8_t* plane_mask = chunk_mask + plane * conv_plane;
            kernels.pool(band.rows + m * band.channel_step, band.row_step, b_data ? b_data + band.oc0 + m : nullptr,
                         windows, chunk_output + plane * pooled_plane + first_window * s.pooled_w,
                         plane_mask + band.first_row * c.out_w, s);
            if (band.end_row == c.out_h) clear_uncovered_rows(plane_mask, s);
          }
        });
        return;
      }
      conv2d_forward<scalar_t>(in_data + n0 * in_image, w_data, b_data, conv, chunk);
      for (int64_t p = 0; p < images * c.out_channels; ++p) {
        kernels.pool(conv + p * conv_plane, c.out_w, nullptr, s.pooled_h, chunk_output + p * pooled_plane,
                     chunk_mask + p * conv_plane, s);
        clear_uncovered_rows(chunk_mask + p * conv_plane, s);
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
    const ChunkPartials<scalar_t> weight_partials(blocks_of(c.batch, kImagesPerChunk), weight_count,
                                                  grad_weight.mutable_data_ptr<scalar_t>());
    Scratch<scalar_t> image_bias_sums(c.batch * c.out_channels, scalar_t(0));
    // Without grad_input, grad_weight along padded rows takes each image's convolution gradient
    // unpooled straight into its buffer of rows, and the bias's sums from there, while it is in
    // L1: through a chunk's convolution gradient (150 KB for LeNet-5's conv1), unpooling it,
    // copying it into the rows and summing it took as long as the dot products (NOTES, section
    // 28).
    const bool unpool_into_rows = !input_grad && grad_weight_path<scalar_t>(c) == GradWeightPath::by_rows;
    const std::optional<GradInputWeight<scalar_t>> grad_input_weight =
        input_grad ? std::optional(prepare_grad_input_weight<scalar_t>(w_data, c)) : std::nullopt;
    for_each_chunk<scalar_t>(c.batch, c.out_channels * conv_plane, work_per_chunk,
                             [&](int64_t n0, int64_t images, scalar_t* grad_conv) {
      Conv2dShape chunk = c;
      chunk.batch = images;
      scalar_t* chunk_weight_partials = weight_partials.data() + n0 / kImagesPerChunk * weight_count;
      const auto unpool_rows = [&](int64_t n, int64_t oc0, int64_t channels, scalar_t* rows, int64_t channel_step,
                                   int64_t row_step) {
        const int64_t plane0 = (n0 + n) * c.out_channels + oc0;
        for (int64_t m = 0; m < channels; ++m)
          kernels.unpool(go_data + (plane0 + m) * pooled_plane, mask_data + (plane0 + m) * conv_plane,
                         rows + m * channel_step, row_step, s);
        sum_planes<scalar_t>(rows, channels, channel_step, c.out_h, c.out_w, row_step,
                             [&](int64_t m, scalar_t sum) { image_bias_sums[plane0 + m] = sum; });
      };
      if (unpool_into_rows &&
          grad_weight_by_rows<scalar_t>(unpool_rows, in_data + n0 * in_image, chunk_weight_partials, chunk))
        return;
      for (int64_t p = 0; p < images * c.out_channels; ++p) {
        const int64_t plane = n0 * c.out_channels + p;
        kernels.unpool(go_data + plane * pooled_plane, mask_data + plane * conv_plane, grad_conv + p * conv_plane,
                       c.out_w, s);
      }
      if (input_grad)
        conv2d_grad_input_paths<scalar_t>(grad_conv, *grad_input_weight,
                                          grad_input.mutable_data_ptr<scalar_t>() + n0 * in_image, chunk);
      conv2d_grad_weight_paths<scalar_t>(grad_conv, in_data + n0 * in_image, chunk_weight_partials, chunk);
      for (int64_t n = 0; n < images; ++n)
        grad_bias_channels<scalar_t>(grad_conv + n * c.out_channels * conv_plane, 1, c.out_channels,
                                     conv_plane, 0, c.out_channels,
                                     image_bias_sums.data() + (n0 + n) * c.out_channels);
    });
    weight_partials.sum();
    sum_chunk_partials(image_bias_sums.data(), c.batch, c.out_channels, grad_bias.mutable_data_ptr<scalar_t>());
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

inline void register_conv2d_relu_pool2d(torch::Library& m) {
  m.impl("conv2d_relu_pool2d", &conv2d_relu_pool2d);
  m.impl("conv2d_relu_pool2d_backward", &conv2d_relu_pool2d_backward);
}

}  // namespace lenetx::cpu::LENETX_ISA
