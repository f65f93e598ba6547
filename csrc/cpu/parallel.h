#pragma once
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace lenetx::cpu {

// Below this much work (values touched or multiply-adds) another thread costs more to wake than
// it saves: starting an OpenMP team was measured at about 90 microseconds on this project's VM.
constexpr int64_t kMinWorkPerThread = 1 << 16;

// Threads for `count` items of `work_per_item` each: at most torch.get_num_threads(). The
// kernels' results never depend on it (work is split into fixed items, each summed in order).
inline int thread_count(int64_t count, int64_t work_per_item) {
  const double by_work = static_cast<double>(count) * static_cast<double>(work_per_item) / kMinWorkPerThread;
  const double limit = std::min<double>(std::min<int64_t>(at::get_num_threads(), count), by_work);
  return std::max(1, static_cast<int>(limit));
}

// Both loops are statically scheduled. fn(first, last) gets one contiguous run of items per
// thread, so that a thread can set up scratch space once for its whole run.
template <typename Fn>
void parallel_for_ranges(int64_t count, int64_t work_per_item, const Fn& fn) {
  if (count <= 0) return;
  const int threads = thread_count(count, work_per_item);
  if (threads <= 1 || at::in_parallel_region()) {
    fn(int64_t{0}, count);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t thread = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t first = count * thread / team, last = count * (thread + 1) / team;
    if (first < last) fn(first, last);
  }
}

// prepare(first, last) on each thread's share of `prepared` items, then, once every share is
// done, fn(first, last) as in parallel_for_ranges, the team's size set by fn's work alone: one
// team for both, and the preparation (gemm's packing of B, too little work to be worth a team of
// its own) split across it rather than run on one thread while the others wait.
template <typename Prepare, typename Fn>
void parallel_for_ranges_prepared(int64_t prepared, const Prepare& prepare, int64_t count, int64_t work_per_item,
                                  const Fn& fn) {
  const int threads = count > 0 ? thread_count(count, work_per_item) : 1;
  if (threads <= 1 || at::in_parallel_region()) {
    prepare(int64_t{0}, prepared);
    if (count > 0) fn(int64_t{0}, count);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t thread = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t first_prepared = prepared * thread / team, last_prepared = prepared * (thread + 1) / team;
    if (first_prepared < last_prepared) prepare(first_prepared, last_prepared);
#pragma omp barrier
    const int64_t first = count * thread / team, last = count * (thread + 1) / team;
    if (first < last) fn(first, last);
  }
}

template <typename Fn>
void parallel_for(int64_t count, int64_t work_per_item, const Fn& fn) {
  if (count <= 0) return;
  const int threads = thread_count(count, work_per_item);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < count; ++i) fn(i);
}

}  // namespace lenetx::cpu
