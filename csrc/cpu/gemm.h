#pragma once
// A cache-blocked matrix product around micro_gemm.h's register tile, for the convolutions that
// are matrix products over an unfolded input and the fully connected layers (linear.h). Blocked
// like a BLAS: the whole of B is packed once into panels of one tile's width (a row-major B's
// whole panels are read in place); each thread takes a block of A rows, packed a block of
// reduction steps at a time or read in place (RowAddressable), and sweeps it against one B panel
// at a time, so that the block of a B panel a tile reads (kGemmPanelBlockBytes) stays in L1.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

// A depth block of a B panel: 16 KB, which leaves room in L1 for the rows of A. AVX-512's 64-float
// panels take 64 steps (measured faster than 128 on VGG's 4x4 layers); AVX2's panels of 8 to 32
// floats take 128 to 512 steps: at a fixed 64, LeNet-5's conv3 (400 steps) added each tile into
// its output 7 times instead of 3, and ran 3-7 % slower (benchmarks/NOTES.md, section 16).
constexpr int64_t kGemmPanelBlockBytes = 16 << 10;
// Rows of A per work item, at most: a packed block (kGemmRowBlock x the depth block) stays in L2
// across panels.
constexpr int64_t kGemmRowBlock = 192;

// A matrix whose rows can be read in place: row(i, k) points at m(i, k), m(i, k + 1), ... for
// run(k) steps. gemm reads such an A through row pointers instead of packing it.
template <typename Matrix>
concept RowAddressable = requires(const Matrix& m) {
  m.row(int64_t{0}, int64_t{0});
  m.run(int64_t{0});
};

// A row-major matrix with `columns` columns, read in place.
template <typename T>
struct RowMajor {
  const T* data;
  int64_t row_stride, columns;
  const T* row(int64_t i, int64_t j) const { return data + i * row_stride + j; }
  int64_t run(int64_t j) const { return columns - j; }
  T operator()(int64_t i, int64_t j) const { return *row(i, j); }
};

// dst[i][k][W] for i < count: panel i holds m(k0 + k, j) for columns j in
// [first_column + i * W, ...), zero past `rows` x `columns`. A RowAddressable matrix is read a
// row at a time, one call to row() per contiguous run however many panels it crosses: per panel
// row, the calls (and std::copy_n's memmove for a few values) took 60 % as long as the products
// over VGG's packed rows (benchmarks/NOTES.md, section 8).
template <int64_t W, typename T, typename Matrix>
void pack_panels(const Matrix& m, int64_t rows, int64_t columns, int64_t k0,
                 int64_t steps, int64_t first_column, int64_t count, T* dst) {
  if constexpr (RowAddressable<Matrix>) {
    const int64_t used = std::max<int64_t>(0, std::min(count * W, columns - first_column));
    for (int64_t k = 0; k < steps; ++k) {
      T* row = dst + k * W;  // column c of step k: row[c / W * steps * W + c % W]
      const int64_t filled = k0 + k < rows ? used : 0;
      for (int64_t j = 0, run; j < filled; j += run) {
        run = std::min(filled - j, m.run(first_column + j));
        const T* src = m.row(k0 + k, first_column + j);
        for (int64_t t = 0; t < run;) {
          T* panel_row = row + (j + t) / W * steps * W;
          if ((j + t) % W == 0 && run - t >= W) {  // a whole panel row: a fixed-size copy
            for (int64_t u = 0; u < W; ++u) panel_row[u] = src[t + u];
            t += W;
          } else {
            panel_row[(j + t) % W] = src[t];
            ++t;
          }
        }
      }
      for (int64_t c = filled; c < count * W; ++c) row[c / W * steps * W + c % W] = T(0);
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j0 = first_column + i * W, used = std::max<int64_t>(0, std::min(W, columns - j0));
      for (int64_t k = 0; k < steps; ++k) {
        T* out = dst + (i * steps + k) * W;
        const int64_t filled = k0 + k < rows ? used : 0;
        for (int64_t j = 0; j < filled; ++j) out[j] = m(k0 + k, j0 + j);
        std::fill(out + filled, out + W, T(0));
      }
    }
  }
}

// m(i, j) as (j, i), read in place.
template <typename Matrix>
struct Transposed {
  const Matrix& m;
  auto operator()(int64_t i, int64_t j) const { return m(j, i); }
};

template <typename Matrix>
Transposed<Matrix> transpose(const Matrix& m) { return {m}; }

// The transpose of a transpose is the matrix itself, so that packing a transposed A reads the
// original, row by row when it is RowAddressable.
template <typename Matrix>
const Matrix& transpose(const Transposed<Matrix>& t) { return t.m; }

// out[r * out_stride + j] (+)= tile[r * tile_width + j], for r < count and j < width.
template <typename T>
void store_tile(const T* tile, int64_t tile_width, int64_t count, int64_t width,
                bool accumulate, T* out, int64_t out_stride) {
  for (int64_t r = 0; r < count; ++r) {
    const T* src = tile + r * tile_width;
    T* dst = out + r * out_stride;
    if (accumulate)
      for (int64_t j = 0; j < width; ++j) dst[j] += src[j];
    else
      for (int64_t j = 0; j < width; ++j) dst[j] = src[j];
  }
}

// c[i * c_row_stride + j] = sum over k < depth of a(i, k) * b(k, j), for i < rows, j < columns.
// Each sum runs over k in order, in depth blocks added in order: the result
// does not depend on the thread count.
template <typename T, typename AMatrix, typename BMatrix>
void gemm(int64_t rows, int64_t columns, int64_t depth, const AMatrix& a, const BMatrix& b, T* c,
          int64_t c_row_stride) {
  if (rows <= 0 || columns <= 0) return;
  if (depth <= 0) {
    for (int64_t i = 0; i < rows; ++i) std::fill_n(c + i * c_row_stride, columns, T(0));
    return;
  }
  with_tile<T>(rows, columns, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes, depth_block = kGemmPanelBlockBytes / (N * sizeof(T));
    // Row blocks of equal size (a multiple of MB, at most about kGemmRowBlock), one per thread at
    // least where the rows have tiles enough, so that the threads' shares are equal too. Split
    // by columns instead, LeNet-5's conv3 (128 rows, 5 panels) gave one thread 4 panels and the
    // other 1: its threads waited for each other a third of the time (by perf).
    const int64_t threads = at::get_num_threads(), row_tiles = blocks_of(rows, MB);
    const int64_t row_block =
        blocks_of(row_tiles, std::min(row_tiles, std::max(threads, blocks_of(rows, kGemmRowBlock)))) * MB;
    const int64_t panels = blocks_of(columns, N), row_items = blocks_of(rows, row_block);
    // A packed block serves every panel of its item; columns are split, as evenly as whole
    // panels allow, only when there are too few row blocks to keep the threads busy.
    const int64_t column_items = std::min(panels, blocks_of(threads, row_items));
    // B transposed: packed_b[panel][k][N] is b(k, panel * N + j), zero past the last column. A
    // row-major B is read in place instead, all but a last panel that its columns do not fill
    // (whose tile would read past the matrix): LeNet-5's conv3 and fully connected layers spent
    // 12 % of their backward's samples copying such Bs (benchmarks/NOTES.md, section 23).
    constexpr bool b_in_place = std::is_same_v<BMatrix, RowMajor<T>>;
    const int64_t packed_from = b_in_place ? columns / N : 0;
    const Scratch<T> packed_b((panels - packed_from) * depth * N);
    const auto pack_b = [&](int64_t first_panel, int64_t last_panel) {
      first_panel = std::max(first_panel, packed_from);
      if (first_panel < last_panel)
        pack_panels<N>(b, depth, columns, 0, depth, first_panel * N, last_panel - first_panel,
                       packed_b.data() + (first_panel - packed_from) * depth * N);
    };
    const std::vector<int64_t> panel_rows = evenly_spaced(depth_block, N);
    std::vector<int64_t> b_rows;
    if constexpr (b_in_place) b_rows = evenly_spaced(depth_block, b.row_stride);
    // What the rows past the last read, in place.
    const Scratch<T> zeros(depth_block, T(0));
    // B packed by the team that runs the products: on a team of its own, too little work for a
    // second thread (LeNet-5's conv3: 192-205 KB), it ran on one thread while the other waited,
    // and the three products took 109, 100 and 118 us against 97, 90 and 97 (NOTES, section 20).
    parallel_for_ranges_prepared(panels, pack_b, row_items * column_items,
                                 row_block * depth * blocks_of(panels, column_items) * N,
                                 [&](int64_t first, int64_t last) {
      // packed_a[row tile][k][MB]: a transposed, so that a tile's MB values of one step are adjacent.
      const Scratch<T> packed_a(RowAddressable<AMatrix> ? 0 : row_block * depth_block);
      alignas(64) T tile[MB * N];
      // Depth block [k0, k0 + steps) of one panel against each row tile of rows [row0, row0 + block_rows).
      const auto sweep = [&](int64_t row0, int64_t block_rows, int64_t panel, int64_t k0, int64_t steps) {
        const int64_t j0 = panel * N;
        const bool in_place = panel < packed_from;
        const T* b_block;
        if constexpr (b_in_place)
          b_block = in_place ? b.row(k0, j0) : packed_b.data() + ((panel - packed_from) * depth + k0) * N;
        else
          b_block = packed_b.data() + (panel * depth + k0) * N;
        const int64_t* b_block_rows = in_place ? b_rows.data() : panel_rows.data();
        for (int64_t rt = 0; rt < blocks_of(block_rows, MB); ++rt) {
          const int64_t tile_rows = std::min<int64_t>(MB, block_rows - rt * MB);
          if constexpr (RowAddressable<AMatrix>) {
            RowPointers<T, MB> a_rows;
            for (int m = 0; m < MB; ++m) a_rows.row[m] = m < tile_rows ? a.row(row0 + rt * MB + m, k0) : zeros.data();
            gemm_tile<T, MB, NV>(a_rows, b_block, b_block_rows, steps, tile);
          } else {
            gemm_tile<T, MB, NV>(PackedRows<T, MB>{packed_a.data() + rt * steps * MB}, b_block,
                                 b_block_rows, steps, tile);
          }
          store_tile(tile, N, tile_rows, std::min(N, columns - j0), k0 > 0,
                     c + (row0 + rt * MB) * c_row_stride + j0, c_row_stride);
        }
      };
      for (int64_t item = first; item < last; ++item) {
        const int64_t row0 = item / column_items * row_block, block_rows = std::min(row_block, rows - row0);
        const int64_t first_panel = item % column_items * panels / column_items;
        const int64_t last_panel = (item % column_items + 1) * panels / column_items;
        if constexpr (RowAddressable<AMatrix>) {
          // Nothing to pack: each panel runs its whole reduction while its slice of c stays in cache.
          for (int64_t panel = first_panel; panel < last_panel; ++panel)
            for (int64_t k0 = 0, steps; k0 < depth; k0 += steps) {
              steps = std::min({depth_block, depth - k0, a.run(k0)});
              sweep(row0, block_rows, panel, k0, steps);
            }
        } else {
          for (int64_t k0 = 0, steps; k0 < depth; k0 += steps) {
            steps = std::min(depth_block, depth - k0);
            pack_panels<MB>(transpose(a), depth, rows, k0, steps, row0, blocks_of(block_rows, MB), packed_a.data());
            for (int64_t panel = first_panel; panel < last_panel; ++panel) sweep(row0, block_rows, panel, k0, steps);
          }
        }
      }
    });
  });
}

}  // namespace lenetx::cpu::LENETX_ISA
