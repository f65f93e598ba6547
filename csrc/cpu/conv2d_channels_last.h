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
#include "conv2d_unfolded.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

// grad_weight as one matrix product per kernel tap, input channels along the vector lanes: for
// tap (kh, kw), grad_weight[oc][ic] = sum over images and output pixels of grad_output[oc][pixel]
// times input channel ic at the position that pixel reads through the tap. Images are summed in
// chunks (sized by the shape alone) whose partials are added in a fixed order. Each thread copies
// the chunk it works on, the input channels-last inside its zero border (a position's channels
// are one contiguous run) and grad_output packed for the tiles: copies of the whole batch would
// leave the cache before the tiles read them (benchmarks/NOTES.md, section 6).
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
    const int64_t blocks = blocks_of(ocg, MB), tiles = blocks_of(icg, N);
    // A chunk's grad_output as [group][block][image][pixel][MB channels], zero past ocg: the A of
    // one tile, step after step (PackedRows).
    const int64_t go_block = chunk_images * out_plane * MB, go_chunk = s.groups * blocks * go_block;
    const auto pack_grad_output = [&](int64_t n0, int64_t images, T* go) {
      for (int64_t i = 0; i < images; ++i)
        for (int64_t gb = 0; gb < s.groups * blocks; ++gb) {
          const int64_t oc0 = gb / blocks * ocg + gb % blocks * MB;
          const int64_t channels = std::min<int64_t>(MB, ocg - gb % blocks * MB);
          transpose_planes(grad_output + ((n0 + i) * s.out_channels + oc0) * out_plane, out_plane, channels, MB,
                           go + gb * go_block + i * out_plane * MB);
        }
    };
    // Where each pixel of a chunk reads through tap (0, 0); tap (kh, kw) adds a constant.
    Conv2dShape chunk_shape = s;
    chunk_shape.batch = chunk_images;
    const std::vector<int64_t> pixel_rows = ChannelWindows<T>(nullptr, chunk_shape, 0).pixel_start;
    // partial[chunk][tap][oc][ic]: a tile's rows are stored whole.
    const int64_t per_tap = s.out_channels * icg;
    Scratch<T> by_tap(taps * per_tap, T(0));
    const ChunkPartials<T> partials(chunks, taps * per_tap, by_tap.data());
    parallel_for_ranges(chunks * s.groups * blocks * taps * tiles, chunk_images * out_plane * MB * N, [&](int64_t first, int64_t last) {
      Scratch<T> x(chunk_images * image + N, T(0));  // the border stays zero
      const Scratch<T> go(go_chunk);
      int64_t copied_chunk = -1;
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        // Channel blocks vary fastest: the input panel of one tap stays in cache across them.
        const int64_t b = item % blocks, t = item / blocks % tiles, tap = item / (blocks * tiles) % taps;
        const int64_t g = item / (tiles * taps * blocks) % s.groups;
        const int64_t chunk = item / (tiles * taps * blocks * s.groups);
        const int64_t n0 = chunk * chunk_images, images = std::min(chunk_images, s.batch - n0);
        if (chunk != copied_chunk) {
          channels_last_images(input, n0, images, s, x.data());
          pack_grad_output(n0, images, go.data());
          copied_chunk = chunk;
        }
        const int64_t kh = tap / s.kernel_w, kw = tap % s.kernel_w;
        const int64_t oc0 = g * ocg + b * MB, ic0 = t * N;
        gemm_tile<T, MB, NV>(PackedRows<T, MB>{go.data() + (g * blocks + b) * go_block},
                             x.data() + (kh * s.dilation_h * padded_w + kw * s.dilation_w) * C + g * icg + ic0,
                             pixel_rows.data(), images * out_plane, tile);
        T* dst = partials.data() + (chunk * taps + tap) * per_tap + oc0 * icg + ic0;
        for (int64_t m = 0; m < std::min<int64_t>(MB, ocg - b * MB); ++m)
          std::copy_n(tile + m * N, std::min<int64_t>(N, icg - ic0), dst + m * icg);
      }
    });
    partials.sum();
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t i = 0; i < per_tap; ++i) grad_weight[i * taps + tap] = by_tap[tap * per_tap + i];
  });
}

}  // namespace lenetx::cpu::LENETX_ISA
