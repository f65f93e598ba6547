#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>

namespace lenetx::cpu {

// The kernels' scratch memory: `count` values of T starting on a cache line, uninitialized or
// filled with `value`. std::vector's and new[]'s memory (glibc's malloc) starts on a line one
// time in four or less, and 16, 32 or 48 bytes into it otherwise, where every 64-byte vector
// loaded or stored spans two lines: with its buffers on lines, the improved LeNet's conv2 took
// 0.8 of the time forward and 0.75 for grad_input and grad_weight (benchmarks/NOTES.md, section
// 31).
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(int64_t count)
      : values_(static_cast<T*>(::operator new[](std::max<int64_t>(count, 1) * sizeof(T), kLine))) {}
  Scratch(int64_t count, T value) : Scratch(count) { std::fill_n(values_.get(), count, value); }

  T* data() const { return values_.get(); }
  T& operator[](int64_t i) const { return values_[i]; }

 private:
  static constexpr std::align_val_t kLine{64};
  struct Free {
    void operator()(T* values) const { ::operator delete[](values, kLine); }
  };
  std::unique_ptr<T[], Free> values_;
};

}  // namespace lenetx::cpu
