// A training or evaluation batch from a dataset's images in one pass on the CPU, where datasets
// live: each output value is read from its image (or is padding) and normalized where it is
// written. Composed of torch's operators (gather, pad, a window's gather, the conversion to float,
// a subtraction and a division), the batch took 6 passes and 5 temporaries, 150-250 us of each
// LeNet-5 training step on MNIST (benchmarks/NOTES.md, section 32).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "parallel.h"

namespace lenetx::cpu {
namespace {

constexpr const char* kOp = "lenetx.crop_normalize";

void check_per_image(const std::optional<at::Tensor>& values, const char* name, at::ScalarType dtype,
                     const char* dtype_name, int64_t count) {
  if (!values) return;
  TORCH_CHECK(values->dim() == 1 && values->size(0) == count && values->scalar_type() == dtype, kOp,
              ": expected ", name, " to be a 1-D ", dtype_name, " tensor with a value per index (", count,
              "), but got ", values->scalar_type(), " of size ", values->sizes());
}

// Every value of `values` in [0, limit), else an error quoting the first that is not.
void check_range(const at::Tensor& values, int64_t limit, const char* name, const char* what) {
  const int64_t* data = values.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < values.numel(); ++i)
    TORCH_CHECK(data[i] >= 0 && data[i] < limit, kOp, ": ", name, "[", i, "]=", data[i], " is out of range ",
                "for ", what, " (expected 0 to ", limit - 1, ")");
}

// One (image, channel) plane of the batch: out[y][x] = normalized(value), where value is the
// padded image's at (y, x) of the window shifted by (row_shift, col_shift) from the unpadded one,
// mirrored if flip.
template <typename T, typename Normalized>
void crop_plane(const T* __restrict image, float* __restrict out, int64_t height, int64_t width, int64_t row_shift,
                int64_t col_shift, bool flip, const Normalized& normalized) {
  const float padding_value = normalized(T(0));
  // Output column x reads column x + col_shift, or width - 1 - x + col_shift mirrored: those in
  // [first, last) lie in the image, the rest in its padding.
  const int64_t unclamped_first = flip ? col_shift : -col_shift;
  const int64_t first = std::clamp<int64_t>(unclamped_first, 0, width);
  const int64_t last = std::clamp<int64_t>(unclamped_first + width, 0, width);
  for (int64_t y = 0; y < height; ++y) {
    float* out_row = out + y * width;
    const int64_t source_y = y + row_shift;
    if (source_y < 0 || source_y >= height) {
      std::fill_n(out_row, width, padding_value);
      continue;
    }
    std::fill(out_row, out_row + first, padding_value);
    std::fill(out_row + last, out_row + width, padding_value);
    const T* row = image + source_y * width;
    if (flip) {
      const T* source = row + width - 1 + col_shift;
      for (int64_t x = first; x < last; ++x) out_row[x] = normalized(source[-x]);
    } else {
      const T* source = row + col_shift;
      for (int64_t x = first; x < last; ++x) out_row[x] = normalized(source[x]);
    }
  }
}

at::Tensor crop_normalize(const at::Tensor& images, const at::Tensor& index,
                          const std::optional<at::Tensor>& row_offsets,
                          const std::optional<at::Tensor>& col_offsets, const std::optional<at::Tensor>& flip,
                          int64_t padding, const at::Tensor& mean, const at::Tensor& std) {
  TORCH_CHECK(images.dim() == 4, kOp, ": expected 4-D images (N, C, H, W), but got images of size ",
              images.sizes());
  TORCH_CHECK(images.scalar_type() == at::kByte || images.scalar_type() == at::kFloat, kOp,
              ": expected uint8 or float32 images, but got ", images.scalar_type());
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, kOp,
              ": expected index to be a 1-D int64 tensor, but got ", index.scalar_type(), " of size ",
              index.sizes());
  TORCH_CHECK(padding >= 0, kOp, ": padding must be non-negative, but got padding=", padding);
  const int64_t batch = index.size(0), channels = images.size(1);
  const int64_t height = images.size(2), width = images.size(3);
  check_per_image(row_offsets, "row_offsets", at::kLong, "int64", batch);
  check_per_image(col_offsets, "col_offsets", at::kLong, "int64", batch);
  check_per_image(flip, "flip", at::kBool, "bool", batch);
  for (const auto& [constants, name] : {std::pair{&mean, "mean"}, std::pair{&std, "std"}})
    TORCH_CHECK(constants->dim() == 1 && constants->size(0) == channels && constants->scalar_type() == at::kFloat,
                kOp, ": expected ", name, " to be a 1-D float32 tensor with a value per channel (", channels,
                "), but got ", constants->scalar_type(), " of size ", constants->sizes());
  const at::Tensor in = images.contiguous(), picks = index.contiguous();
  const at::Tensor means = mean.contiguous(), stds = std.contiguous();
  check_range(picks, images.size(0), "index", "the images");
  const auto contiguous = [](const std::optional<at::Tensor>& values) {
    return values ? std::optional(values->contiguous()) : std::nullopt;
  };
  const std::optional<at::Tensor> rows = contiguous(row_offsets), cols = contiguous(col_offsets);
  const std::optional<at::Tensor> flips = contiguous(flip);
  if (rows) check_range(*rows, 2 * padding + 1, "row_offsets", "the padding's windows");
  if (cols) check_range(*cols, 2 * padding + 1, "col_offsets", "the padding's windows");

  at::Tensor output = at::empty({batch, channels, height, width}, in.options().dtype(at::kFloat));
  const int64_t plane = height * width;
  const int64_t* pick = picks.const_data_ptr<int64_t>();
  const int64_t* row = rows ? rows->const_data_ptr<int64_t>() : nullptr;
  const int64_t* col = cols ? cols->const_data_ptr<int64_t>() : nullptr;
  const bool* mirror = flips ? flips->const_data_ptr<bool>() : nullptr;
  const float* mean_data = means.const_data_ptr<float>();
  const float* std_data = stds.const_data_ptr<float>();
  float* out_data = output.mutable_data_ptr<float>();
  const auto crop_batch = [&](const auto* in_data, const auto& normalizer) {
    // A value costs several of thread_count's units (a load, a lookup or a division, a store):
    // MNIST's 128 images took 33 us on one thread and 19 on two, which plane alone would not use.
    parallel_for(batch * channels, 4 * plane, [&](int64_t item) {
      const int64_t n = item / channels, c = item % channels;
      crop_plane(in_data + (pick[n] * channels + c) * plane, out_data + item * plane, height, width,
                 (row ? row[n] : padding) - padding, (col ? col[n] : padding) - padding, mirror && mirror[n],
                 normalizer(c));
    });
  };
  // (value - mean) / std in float32, as (images.float() - mean).div_(std) computes it; for uint8
  // images, looked up in a channel's table of the 256 values' results, made once per call.
  if (in.scalar_type() == at::kByte) {
    std::vector<float> table(channels * 256);
    for (int64_t c = 0; c < channels; ++c)
      for (int v = 0; v < 256; ++v) table[c * 256 + v] = (static_cast<float>(v) - mean_data[c]) / std_data[c];
    crop_batch(in.const_data_ptr<uint8_t>(), [&](int64_t c) {
      return [channel_table = table.data() + c * 256](uint8_t value) { return channel_table[value]; };
    });
  } else {
    crop_batch(in.const_data_ptr<float>(), [&](int64_t c) {
      return [mean = mean_data[c], std = std_data[c]](float value) { return (value - mean) / std; };
    });
  }
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("crop_normalize", &crop_normalize);
}

}  // namespace lenetx::cpu
