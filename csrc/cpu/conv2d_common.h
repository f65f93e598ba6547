#pragma once
// Pieces every CPU convolution path shares: padded copies of the input, the register-tile
// choice, the fixed chunking that keeps grad_weight sums independent of the thread count.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>
#include <vector>

#include "../shape_checks.h"
#include "block_loops.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// Images per grad_weight partial sum. Fixed (not tied to the thread count) so that the order of
// the final reduction, and so the result, never changes.
constexpr int64_t kImagesPerPartial = 8;

inline int64_t blocks_of(int64_t count, int64_t block) { return (count + block - 1) / block; }

// fn.template operator()<Count>() for Count = count, 1 <= count <= Max: a kernel compiled for
// exactly the rows or channels left at the end of a loop over blocks of Max.
template <int Max, typename Fn>
void with_count(int64_t count, const Fn& fn) {
  [&]<int... Less>(std::integer_sequence<int, Less...>) {
    ((count == Less + 1 ? fn.template operator()<Less + 1>() : void()), ...);
  }(std::make_integer_sequence<int, Max>{});
}

// Every (image, channel) plane inside a zero border of pad_h rows and pad_w columns, planes back
// to back, then `slack` zeros. Without border or slack the input itself serves, uncopied.
template <typename T>
struct PaddedPlanes {
  Scratch<T> storage;
  const T* data;
  int64_t h, w, plane;
};

// dst[i] = src[i] after f changes it in place (f takes a value and a vector alike: a vector
// returned by value, wider than the ISA's registers, would change the ABI), for count values that
// do not overlap, a vector at a time where count fills one (the last vector ending at count):
// std::copy_n calls memmove, whose call for each row of 28 values took about as long as the
// copying, for_each_in_blocks_of_8's element loop left the fused backwards 5 % slower than these
// vectors (NOTES, section 22), and GCC's own vector loop ran AVX-512's rows of 28 as 16 lanes,
// 8 lanes and 4 scalar steps (section 25).
template <typename T, typename F>
__attribute__((always_inline)) inline void map_row(const T* __restrict src, int64_t count, T* __restrict dst,
                                                   const F& f) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  if (count < L && 2 * count >= L) {
    // Half vectors: a row of 14 under AVX-512 took GCC's call to memmove for its element loop,
    // 4 % of LeNet-5's conv2 forward by row transforms (benchmarks/NOTES.md, section 29).
    typedef T Half __attribute__((vector_size(sizeof(V) / 2)));
    for_each_block(count, L / 2, [&](int64_t start) __attribute__((always_inline)) {
      Half v;
      load_vec(v, src + start);
      f(v);
      store_vec(dst + start, v);
    });
    return;
  }
  if (count < L) {
    for (int64_t i = 0; i < count; ++i) {
      T x = src[i];
      f(x);
      dst[i] = x;
    }
    return;
  }
  for_each_block(count, L, [&](int64_t start) __attribute__((always_inline)) {
    V v;
    load_vec(v, src + start);
    f(v);
    store_vec(dst + start, v);
  });
}

template <typename T>
__attribute__((always_inline)) inline void copy_row(const T* __restrict src, int64_t count, T* __restrict dst) {
  map_row(src, count, dst, [](auto&) __attribute__((always_inline)) {});
}

// One h x w plane written into `dst` inside a zero border of pad_h rows and pad_w columns.
template <typename T>
void pad_plane(const T* x, int64_t h, int64_t w, int64_t pad_h, int64_t pad_w, T* dst) {
  const int64_t padded_w = w + 2 * pad_w;
  std::fill_n(dst, pad_h * padded_w + pad_w, T(0));
  for (int64_t r = 0; r < h; ++r) {
    T* row = dst + (r + pad_h) * padded_w;
    copy_row(x + r * w, w, row + pad_w);
    // The right border of this row and the left border of the next are adjacent.
    std::fill_n(row + pad_w + w, r + 1 < h ? 2 * pad_w : pad_w, T(0));
  }
  std::fill_n(dst + (h + pad_h) * padded_w, pad_h * padded_w, T(0));
}

// Every value of x[0, count) finite.
template <typename T>
bool values_finite(const T* x, int64_t count) {
  T zero_if_finite = 0;  // x * 0 is NaN for an infinite or NaN x
#pragma omp simd reduction(+ : zero_if_finite)
  for (int64_t i = 0; i < count; ++i) zero_if_finite += x[i] * T(0);
  return zero_if_finite == T(0);
}

// values_finite over a large array, in blocks across the threads.
template <typename T>
bool all_finite(const T* x, int64_t count) {
  std::atomic<bool> finite{true};
  constexpr int64_t kBlock = 1 << 14;
  parallel_for(blocks_of(count, kBlock), kBlock, [&](int64_t block) {
    if (!values_finite(x + block * kBlock, std::min(kBlock, count - block * kBlock))) finite = false;
  });
  return finite;
}

// all_finite, when given, is set to whether every value of x is finite.
template <typename T>
PaddedPlanes<T> pad_planes(const T* x, int64_t planes, int64_t h, int64_t w, int64_t pad_h,
                           int64_t pad_w, int64_t slack, bool* all_finite = nullptr) {
  const int64_t padded_h = h + 2 * pad_h, padded_w = w + 2 * pad_w, plane = padded_h * padded_w;
  if (pad_h == 0 && pad_w == 0 && slack == 0 && !all_finite) return {Scratch<T>(), x, h, w, plane};
  // Uninitialized, then each value written once: border zeros, copied rows, slack zeros.
  Scratch<T> storage(planes * plane + slack);
  T* out = storage.data();
  std::atomic<bool> finite{true};
  parallel_for(planes, h * w, [&](int64_t p) {
    const T* src = x + p * h * w;
    pad_plane(src, h, w, pad_h, pad_w, out + p * plane);
    if (all_finite && !values_finite(src, h * w)) finite = false;
  });
  std::fill_n(out + planes * plane, slack, T(0));
  if (all_finite) *all_finite = finite;
  return {std::move(storage), out, padded_h, padded_w, plane};
}

// Rows [first_row, last_row) of one image [C][h][w] written channels-last into `dst`, the image's
// [h + 2 pad_h][w + 2 pad_w][C] copy, whose zero border is left as it is.
template <typename T>
void channels_last_rows(const T* x, int64_t C, int64_t h, int64_t w, int64_t pad_h, int64_t pad_w,
                        int64_t first_row, int64_t last_row, T* dst) {
  const int64_t padded_w = w + 2 * pad_w;
  for (int64_t r = first_row; r < last_row; ++r) {
    T* row = dst + ((r + pad_h) * padded_w + pad_w) * C;
    for (int64_t c = 0; c < C; ++c) {
      const T* src = x + (c * h + r) * w;
      for (int64_t col = 0; col < w; ++col) row[col * C + c] = src[col];
    }
  }
}

// Planes [n][C][h][w] channels-last inside a zero border, [n][h + 2 pad_h][w + 2 pad_w][C], then
// `slack` zeros: the channels one pixel reads are one contiguous run.
template <typename T>
Scratch<T> channels_last(const T* x, int64_t batch, int64_t C, int64_t h, int64_t w, int64_t pad_h,
                         int64_t pad_w, int64_t slack) {
  const int64_t image = (h + 2 * pad_h) * (w + 2 * pad_w) * C;
  Scratch<T> out(batch * image + slack, T(0));
  parallel_for(batch * h, C * w, [&](int64_t row) {
    const int64_t n = row / h, r = row % h;
    channels_last_rows(x + n * C * h * w, C, h, w, pad_h, pad_w, r, r + 1, out.data() + n * image);
  });
  return out;
}

// The input channels-last inside the layer's padding: what a pixel reads through one tap is one
// contiguous run of channels.
template <typename T>
Scratch<T> channels_last_padded(const T* input, const Conv2dShape& s, int64_t slack) {
  return channels_last(input, s.batch, s.in_channels, s.in_h, s.in_w, s.pad_h, s.pad_w, slack);
}

// Images [first, first + images) of the input, channels-last inside the layer's padding, into
// `dst` (one image after another; the zero borders already there are left as they are): the
// chunk of images one thread works on.
template <typename T>
void channels_last_images(const T* input, int64_t first, int64_t images, const Conv2dShape& s, T* dst) {
  const int64_t image = (s.in_h + 2 * s.pad_h) * (s.in_w + 2 * s.pad_w) * s.in_channels;
  for (int64_t i = 0; i < images; ++i)
    channels_last_rows(input + (first + i) * s.in_channels * s.in_h * s.in_w, s.in_channels, s.in_h, s.in_w,
                       s.pad_h, s.pad_w, 0, s.in_h, dst + i * image);
}

// Where tap (ic, kh, kw) of the output position at offset 0 reads in padded planes of `plane`
// values and rows of `row` values, in the weight's (ic, kh, kw) order: the rows that a
// padded-rows tile reads.
inline std::vector<int64_t> tap_offsets(int64_t plane, int64_t row, int64_t in_channels, const Conv2dShape& s) {
  std::vector<int64_t> offsets;
  for (int64_t ic = 0; ic < in_channels; ++ic)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw)
        offsets.push_back(ic * plane + kh * s.dilation_h * row + kw * s.dilation_w);
  return offsets;
}

// Row offsets 0, stride, 2 * stride, ...: the rows of a matrix stored row after row.
inline std::vector<int64_t> evenly_spaced(int64_t count, int64_t stride) {
  std::vector<int64_t> offsets(count);
  for (int64_t i = 0; i < count; ++i) offsets[i] = i * stride;
  return offsets;
}

// Lane j of the upper (LOWER_ROW false) or the lower row of a pair after swapping the
// off-diagonal blocks of b x b values: taken from the upper row (index < L) or the lower (>= L).
template <int L, int B, bool LOWER_ROW>
constexpr int transposed_lane(int j) {
  if (LOWER_ROW) return (j & B) ? L + j : j + B;
  return (j & B) ? L + j - B : j;
}

template <typename T, int B, std::size_t... J>
__attribute__((always_inline)) inline void swap_blocks(typename Vec<T>::type& upper, typename Vec<T>::type& lower,
                                                       std::index_sequence<J...>) {
  constexpr int L = Vec<T>::kLanes;
  const typename Vec<T>::type a = upper, c = lower;
  upper = __builtin_shufflevector(a, c, transposed_lane<L, B, false>(J)...);
  lower = __builtin_shufflevector(a, c, transposed_lane<L, B, true>(J)...);
}

// r[i][j] becomes r[j][i]: an L x L square of T transposed in registers, by swapping the
// off-diagonal blocks of every 2b x 2b block, b = L / 2 down to 1. The shuffles' lanes are
// constants, which GCC compiles to immediate shuffles and blends; with the lanes held in vectors
// (two permutes and a blend per row, their indices spilled to the stack) the transposed copy of
// LeNet-5's conv2 forward took 11 % of its time instead of 8 (benchmarks/NOTES.md, section 21).
template <typename T, int B = Vec<T>::kLanes / 2>
__attribute__((always_inline)) inline void transpose_square(typename Vec<T>::type (&r)[Vec<T>::kLanes]) {
  constexpr int L = Vec<T>::kLanes;
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i)
    if ((i & B) == 0) swap_blocks<T, B>(r[i], r[i + B], std::make_index_sequence<L>{});
  if constexpr (B > 1) transpose_square<T, B / 2>(r);
}

// One square of the copies below: dst[i * dst_stride + m] = src[m * src_stride + i] for i, m < L,
// the rows m >= loaded zero.
template <typename T>
__attribute__((always_inline)) inline void transpose_square_copy(const T* __restrict src, int64_t src_stride,
                                                                 int64_t loaded, T* __restrict dst, int64_t dst_stride) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  V rows[L];
  for (int64_t m = 0; m < loaded; ++m) load_vec(rows[m], src + m * src_stride);
  for (int64_t m = loaded; m < L; ++m) rows[m] = V{};
  transpose_square<T>(rows);
#pragma GCC unroll 16
  for (int64_t i = 0; i < L; ++i) store_vec(dst + i * dst_stride, rows[i]);
}

// dst[p * width + m] = src[m * plane + p] for the first `channels` of m < width, zero for the rest:
// `channels` planes of `plane` values each, turned into one row of `width` per position (a tile's
// channels, channels-last). Squares of a vector of positions by a vector of channels are
// transposed in registers where width is whole vectors; one value at a time (scalar strided
// stores, a third of the improved LeNet's conv1 grad_weight) they were the slower part.
template <typename T>
void transpose_planes(const T* __restrict src, int64_t plane, int64_t channels, int64_t width,
                      T* __restrict dst) {
  constexpr int64_t L = Vec<T>::kLanes;
  const int64_t squares_end = width % L == 0 ? plane / L * L : 0;
  for (int64_t m0 = 0; m0 < width; m0 += L) {
    const int64_t loaded = std::clamp<int64_t>(channels - m0, 0, L);
    for (int64_t p0 = 0; p0 < squares_end; p0 += L)
      transpose_square_copy<T>(src + m0 * plane + p0, plane, loaded, dst + p0 * width + m0, width);
  }
  for (int64_t p = squares_end; p < plane; ++p)
    for (int64_t m = 0; m < width; ++m) dst[p * width + m] = m < channels ? src[m * plane + p] : T(0);
}

// out[j * out_plane + q] = gathered[q * L + j] + bias[j] (bias null: no shift) for q < count and
// j < channels: a run of pixels of a vector of output channels, channels-last, written onto the
// output's planes in squares of a vector of pixels by a vector of channels transposed in
// registers. Copied out one value at a time, the row tiles' outputs took a fifth of LeNet-5's
// conv2 forward (benchmarks/NOTES.md, section 15). The last square ends at the run's last pixel
// and may copy pixels of the one before again.
template <typename T>
void store_channels_last_pixels(const T* __restrict gathered, int64_t count, int64_t channels,
                                const T* __restrict bias, T* __restrict out, int64_t out_plane) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  T shifts[L];
  for (int64_t j = 0; j < channels; ++j) shifts[j] = bias ? bias[j] : T(0);
  if (count < L) {
    for (int64_t j = 0; j < channels; ++j)
      for (int64_t q = 0; q < count; ++q) out[j * out_plane + q] = gathered[q * L + j] + shifts[j];
    return;
  }
  for_each_block(count, L, [&](int64_t p) __attribute__((always_inline)) {
    V square[L];
#pragma GCC unroll 16
    for (int64_t i = 0; i < L; ++i) load_vec(square[i], gathered + (p + i) * L);
    transpose_square<T>(square);
    for (int64_t j = 0; j < channels; ++j) store_vec(out + j * out_plane + p, square[j] + shifts[j]);
  });
}

// A buffer for the partial results of grad_weight's chunks, left unset: each path writes every
// value it later adds (checked by filling it with NaN under the tests), and zeroing it wrote
// 154 KB on one thread per call of LeNet-5's conv2 at batch 128 (benchmarks/NOTES.md, section 21).
template <typename T>
Scratch<T> chunk_partials(int64_t count) {
  return Scratch<T>(count);
}

// grad_weight[i] = sum over chunks, in order, of partial[chunk * count + i], for the grad_weight
// paths that keep one partial result per chunk of images in the weight's own layout.
// Blocks of values at a time, the chunks' loop outside, so that the additions run in vectors along
// the values: one value at a time, each was a chain of dependent double additions (LeNet-5's conv2,
// 16 chunks: 4 % of its fused backward; benchmarks/NOTES.md, section 16).
template <typename T>
void sum_chunk_partials(const T* partial, int64_t chunks, int64_t count, T* grad_weight) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  constexpr int64_t kBlock = 256;
  parallel_for(blocks_of(count, kBlock), kBlock * chunks, [&](int64_t block) {
    const int64_t first = block * kBlock, values = std::min(kBlock, count - first);
    acc_t sums[kBlock] = {};
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const T* values_of_chunk = partial + chunk * count + first;
      for (int64_t i = 0; i < values; ++i) sums[i] += values_of_chunk[i];
    }
    for (int64_t i = 0; i < values; ++i) grad_weight[first + i] = static_cast<T>(sums[i]);
  });
}

// The partial results of a grad_weight path's chunks, in the layout of their sum's destination:
// in a buffer (chunk_partials), or, for a batch of one chunk (the fused operator's calls), in the
// destination itself, which then needs no sum: copying it there took 1.7 % of LeNet-5's fused
// conv2 backward (NOTES, section 22). The same values either way, but for the sign of a zero:
// sum_chunk_partials adds to +0.0. An empty batch (no chunks) sums to zeros.
template <typename T>
class ChunkPartials {
 public:
  ChunkPartials(int64_t chunks, int64_t count, T* destination)
      : storage_(chunks == 1 ? Scratch<T>() : chunk_partials<T>(chunks * count)),
        data_(chunks == 1 ? destination : storage_.data()),
        chunks_(chunks),
        count_(count),
        destination_(destination) {}
  // [chunk][count]
  T* data() const { return data_; }
  void sum() const {
    if (chunks_ != 1) sum_chunk_partials(data_, chunks_, count_, destination_);
  }

 private:
  Scratch<T> storage_;
  T* data_;
  int64_t chunks_, count_;
  T* destination_;
};

// The grad_input of a stride-1 convolution is itself a stride-1 convolution: of grad_output,
// padded by dilation * (kernel - 1) - padding, with the kernel flipped (flipped_kernel) and its
// input and output channels swapped. Needs padding <= dilation * (kernel - 1), true of every
// "same" or "valid" layer.
inline Conv2dShape grad_input_as_correlation(const Conv2dShape& s) {
  Conv2dShape t = s;
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.in_h = s.out_h, t.in_w = s.out_w, t.out_h = s.in_h, t.out_w = s.in_w;
  t.pad_h = s.dilation_h * (s.kernel_h - 1) - s.pad_h;
  t.pad_w = s.dilation_w * (s.kernel_w - 1) - s.pad_w;
  return t;
}

inline bool grad_input_is_correlation(const Conv2dShape& s) {
  const Conv2dShape t = grad_input_as_correlation(s);
  return s.stride_h == 1 && s.stride_w == 1 && t.pad_h >= 0 && t.pad_w >= 0;
}

// flipped[g * icg + ic][oc][kh][kw] = weight[g * ocg + oc][ic][K_h - 1 - kh][K_w - 1 - kw]: the
// weight of grad_input_as_correlation.
template <typename T>
Scratch<T> flipped_kernel(const T* weight, const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t kh_n = s.kernel_h, kw_n = s.kernel_w, taps = kh_n * kw_n;
  // In squares of kBlock x kBlock channels: element by element, each value of VGG's 512 x 512
  // weight was written 18 KB (most of a page) after the one before.
  constexpr int64_t kBlock = 16;
  Scratch<T> flipped(s.in_channels * ocg * taps, T(0));
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t oc0 = 0; oc0 < ocg; oc0 += kBlock)
      for (int64_t ic0 = 0; ic0 < icg; ic0 += kBlock)
        for (int64_t oc = oc0; oc < std::min(ocg, oc0 + kBlock); ++oc)
          for (int64_t ic = ic0; ic < std::min(icg, ic0 + kBlock); ++ic) {
            const T* src = weight + ((g * ocg + oc) * icg + ic) * taps;
            T* dst = flipped.data() + ((g * icg + ic) * ocg + oc) * taps;
            for (int64_t kh = 0; kh < kh_n; ++kh)
              for (int64_t kw = 0; kw < kw_n; ++kw) dst[kh * kw_n + kw] = src[(kh_n - 1 - kh) * kw_n + kw_n - 1 - kw];
          }
  return flipped;
}

// Work items of whole output rows for the row tiles and the padded rows: each of `planes` planes
// (image, group, block of output channels) in bands of whole blocks of `unit` rows, as many bands
// as give every thread two items. The last bands may be empty; no planes (an empty batch) make
// one band, of no items.
struct RowBands {
  int64_t count, rows, out_rows;  // bands per plane, rows per band, rows of a plane

  RowBands(int64_t planes, int64_t out_rows, int64_t unit) : out_rows(out_rows) {
    const int64_t blocks = blocks_of(out_rows, unit);
    count = planes == 0 ? 1 : std::min(blocks, blocks_of(2 * at::get_num_threads(), planes));
    rows = blocks_of(blocks, count) * unit;
  }
  int64_t first_row(int64_t band) const { return band * rows; }
  int64_t end_row(int64_t band) const { return std::min(out_rows, first_row(band) + rows); }
};

// Stride-1 correlation worth running on padded rows: at least half of the positions computed
// along a padded row are real outputs.
inline bool worth_padded_rows(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && 2 * s.out_w >= s.in_w + 2 * s.pad_w;
}

// Padded rows that drop at most one column in eight (VGG's 32x32 and 16x16 layers, LeNet-5's
// conv1) run as fast as the pixel and row tiles, or faster (benchmarks/NOTES.md, sections 5 and
// 15), so they go first.
inline bool padded_rows_dense(const Conv2dShape& s) {
  return worth_padded_rows(s) && 8 * s.out_w >= 7 * (s.in_w + 2 * s.pad_w);
}

// The register tile for `rows` rows of A against `columns` columns of output: of the shapes that
// fit the registers, the one with the least work counting the padding it computes; ties go to the
// wider tile. The one-vector tile loads a value per multiply-add and runs about 1.35x slower per
// value (measured), so its work counts that much more. A wider tile of 8 accumulators or fewer
// (AVX2's 2x4) holds just the multiply-adds its two FMA pipes keep in flight, with no slack for a
// late load: it ran LeNet-5's conv1 (6 output channels) 1.07-1.09x and VGG's 512-channel 4x4
// layer 1.2x as long as the 6x2 tile of 12 (benchmarks/NOTES.md, section 24), so its work counts
// 1.25x.
template <typename T, typename Fn>
void with_tile(int64_t rows, int64_t columns, const Fn& fn) {
  const auto work = [&](int64_t mb, int64_t nv) {
    const int64_t n = nv * Vec<T>::kLanes;
    const double padded = static_cast<double>(blocks_of(rows, mb) * mb * blocks_of(columns, n) * n);
    return nv == 1 ? 1.35 * padded : mb * nv <= 8 ? 1.25 * padded : padded;
  };
  constexpr int m4 = tile_rows(4), m3 = tile_rows(3), m2 = tile_rows(2), m1 = tile_rows(1);
  const double least = std::min({work(m4, 4), work(m3, 3), work(m2, 2), work(m1, 1)});
  if (work(m4, 4) == least)
    fn.template operator()<m4, 4>();
  else if (work(m3, 3) == least)
    fn.template operator()<m3, 3>();
  else if (work(m2, 2) == least)
    fn.template operator()<m2, 2>();
  else
    fn.template operator()<m1, 1>();
}

}  // namespace lenetx::cpu::LENETX_ISA
