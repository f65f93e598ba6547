#pragma once
// Forward convolution with output channels along the vector lanes: a tile multiplies MB output
// pixels, each broadcasting the values its window reads from a channels-last copy of the input
// (ChannelWindows, as the products of conv2d_unfolded.h read it), by NV vectors of output
// channels of the packed weights (WeightsByTap), over the whole reduction at once.
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "conv2d_unfolded.h"
#include "gemm.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

// With two vectors of output channels or more, a tile's broadcasts (one per pixel and step) feed
// at least two multiply-adds each, and no lane is spent on the padding columns that the padded
// rows compute (benchmarks/NOTES.md, section 5).
template <typename T>
bool worth_pixel_tiles(const Conv2dShape& s) {
  return s.out_channels_per_group() >= 2 * Vec<T>::kLanes;
}

// Images are taken in chunks of about 1024 output pixels; each thread copies the chunk it works
// on channels-last, just before its tiles read it (benchmarks/NOTES.md, section 6).
template <typename T>
void conv2d_pixel_tiles(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group();
  const int64_t depth = s.in_channels_per_group() * s.kernel_h * s.kernel_w;
  const int64_t pixels = s.out_h * s.out_w;
  const int64_t chunk_images = std::max<int64_t>(1, 1024 / std::max<int64_t>(pixels, 1));
  const int64_t chunks = blocks_of(s.batch, chunk_images);
  const int64_t image = (s.in_h + 2 * s.pad_h) * (s.in_w + 2 * s.pad_w) * s.in_channels;
  Conv2dShape chunk = s;
  chunk.batch = chunk_images;
  std::vector<ChannelWindows<T>> windows;  // over one chunk's copy, set per thread
  for (int64_t g = 0; g < s.groups; ++g) windows.emplace_back(nullptr, chunk, g);
  std::vector<int64_t> offsets(depth);
  for (int64_t k = 0; k < depth; ++k) offsets[k] = windows[0].step_offset(k);
  with_tile<T>(chunk_images * pixels, ocg, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const int64_t panels = blocks_of(ocg, N), tiles = blocks_of(chunk_images * pixels, MB);
    // Weights as [group][panel][kh, kw, ic][N output channels], zero past ocg.
    Scratch<T> packed(s.groups * panels * depth * N, T(0));
    for (int64_t g = 0; g < s.groups; ++g)
      pack_panels<N>(WeightsByTap<T>(weight, s, g), depth, ocg, 0, depth, 0, panels,
                     packed.data() + g * panels * depth * N);
    const std::vector<int64_t> packed_rows = evenly_spaced(depth, N);
    parallel_for_ranges(chunks * s.groups * tiles * panels, depth * MB * N, [&](int64_t first, int64_t last) {
      Scratch<T> x(chunk_images * image, T(0));  // the border stays zero
      std::vector<ChannelWindows<T>> local = windows;
      for (ChannelWindows<T>& w : local) w.x = x.data();
      int64_t copied_chunk = -1;
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        const int64_t panel = item % panels, t = item / panels % tiles, g = item / (panels * tiles) % s.groups;
        const int64_t c = item / (panels * tiles * s.groups), n0 = c * chunk_images;
        const int64_t images = std::min(chunk_images, s.batch - n0), rows = images * pixels, row0 = t * MB;
        if (row0 >= rows) continue;  // past the last image of a part-filled chunk
        if (c != copied_chunk) {
          channels_last_images(input, n0, images, s, x.data());
          copied_chunk = c;
        }
        const int64_t tile_rows = std::min<int64_t>(MB, rows - row0);
        // Where each pixel's output lies in its (image, channel 0) plane; rows past the last
        // repeat the first and are dropped.
        int64_t out_at[MB];
        WindowRows<T, MB> a_rows;
        a_rows.offsets = offsets.data();
        for (int m = 0; m < MB; ++m) {
          const int64_t row = row0 + (m < tile_rows ? m : 0);
          out_at[m] = (n0 + row / pixels) * s.out_channels * pixels + row % pixels;
          a_rows.row[m] = local[g].row(row, 0);
        }
        gemm_tile<T, MB, NV>(a_rows, packed.data() + (g * panels + panel) * depth * N, packed_rows.data(),
                             depth, tile);
        for (int64_t j = 0; j < std::min<int64_t>(N, ocg - panel * N); ++j) {
          const int64_t oc = g * ocg + panel * N + j;
          const T shift = bias ? bias[oc] : T(0);
          for (int64_t m = 0; m < tile_rows; ++m) output[out_at[m] + oc * pixels] = tile[m * N + j] + shift;
        }
      }
    });
  });
}

}  // namespace lenetx::cpu::LENETX_ISA
