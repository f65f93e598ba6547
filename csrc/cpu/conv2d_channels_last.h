#pragma once
// grad_weight as a product per kernel tap over a channels-last copy of the input.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"

namespace lenetx::cpu {

// grad_weight as one matrix product per kernel tap, input channels along the vector lanes: for
// tap (kh, kw), grad_weight[oc][ic] = sum over images and output pixels of grad_output[oc][pixel]
// times input channel ic at the position that pixel reads through the tap. The input is copied
// channels-last with its zero border, so that a position's channels are one contiguous run.
// Images are summed in chunks (sized by the shape alone) whose partials are added in a fixed order.
template <typename T>
void conv2d_grad_weight_channels_last(const T* grad_output, const T* input, T* grad_weight,
                                      const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, out_plane = s.out_h * s.out_w, C = s.in_channels;
  const int64_t padded_h = s.in_h + 2 * s.pad_h, padded_w = s.in_w + 2 * s.pad_w;
  // Chunks of about 1024 output pixels: the input rows one tile reads (1024 pixels x one
  // vector) then stay in L2 across the channel blocks that reuse them.
  const int64_t chunk_images = std::max<int64_t>(1, 1024 / std::max<int64_t>(out_plane, 1));
  const int64_t image = padded_h * padded_w * C, chunks = blocks_of(s.batch, chunk_images);
  with_tile<T>(ocg, icg, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const std::vector<T> x = channels_last_padded(input, s, N);
    const int64_t blocks = blocks_of(ocg, MB), tiles = blocks_of(icg, N);
    // grad_output per chunk as [group][block][image][pixel][MB channels], zero past ocg: the A
    // of one tile, step after step (PackedRows).
    const int64_t chunk_pixels = chunk_images * out_plane, go_block = chunk_pixels * MB;
    const int64_t go_chunk = s.groups * blocks * go_block;
    const std::unique_ptr<T[]> go(new T[chunks * go_chunk]);
    parallel_for(s.batch * s.groups * blocks, out_plane * MB, [&](int64_t item) {
      const int64_t n = item / (s.groups * blocks), gb = item % (s.groups * blocks);
      const int64_t oc0 = gb / blocks * ocg + gb % blocks * MB;
      const int64_t channels = std::min<int64_t>(MB, ocg - gb % blocks * MB);
      const T* src = grad_output + (n * s.out_channels + oc0) * out_plane;
      T* dst = go.get() + n / chunk_images * go_chunk + gb * go_block + n % chunk_images * out_plane * MB;
      // A square of 16 pixels by MB channels at a time, so that the reads run along each
      // channel's plane and the strided writes stay within 1 KB.
      for (int64_t i0 = 0; i0 < out_plane; i0 += 16) {
        const int64_t pixels = std::min<int64_t>(16, out_plane - i0);
        for (int m = 0; m < MB; ++m)
          for (int64_t i = i0; i < i0 + pixels; ++i) dst[i * MB + m] = m < channels ? src[m * out_plane + i] : T(0);
      }
    });
    // Where each pixel of a chunk reads through tap (0, 0); tap (kh, kw) adds a constant.
    std::vector<int64_t> pixel_rows(chunk_images * out_plane);
    for (int64_t n = 0; n < chunk_images; ++n)
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow)
          pixel_rows[(n * s.out_h + oh) * s.out_w + ow] =
              n * image + (oh * s.stride_h * padded_w + ow * s.stride_w) * C;
    // partial[chunk][tap][oc][ic]: a tile's rows are stored whole.
    const int64_t per_tap = s.out_channels * icg;
    std::vector<T> partial(chunks * taps * per_tap);
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
        gemm_tile<T, MB, NV>(PackedRows<T, MB>{go.get() + chunk * go_chunk + (g * blocks + b) * go_block},
                             x.data() + chunk * chunk_images * image +
                                 (kh * s.dilation_h * padded_w + kw * s.dilation_w) * C + g * icg + ic0,
                             pixel_rows.data(), images * out_plane, tile);
        T* dst = partial.data() + (chunk * taps + tap) * per_tap + oc0 * icg + ic0;
        for (int64_t m = 0; m < std::min<int64_t>(MB, ocg - b * MB); ++m)
          std::copy_n(tile + m * N, std::min<int64_t>(N, icg - ic0), dst + m * icg);
      }
    });
    std::vector<T> by_tap(taps * per_tap);
    sum_chunk_partials(partial, chunks, taps * per_tap, by_tap.data());
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t i = 0; i < per_tap; ++i) grad_weight[i * taps + tap] = by_tap[tap * per_tap + i];
  });
}

}  // namespace lenetx::cpu
