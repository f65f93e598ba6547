#pragma once
#include <ATen/Parallel.h>
#include <cstdint>

namespace lenetx::cpu {

// Statically scheduled so that each work item always lands in the same place: results are
// bit-identical from run to run. Thread count follows torch.get_num_threads().
template <typename Fn>
void parallel_for(int64_t count, const Fn& fn) {
  if (count <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), count));
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < count; ++i) fn(i);
}

}  // namespace lenetx::cpu
