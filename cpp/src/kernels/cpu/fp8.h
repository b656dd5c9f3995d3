// float8_e4m3fn KV-cache elements on the CPU: saturating writes and a table for reads.
#pragma once
#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <array>
#include <cstdint>

namespace fastpage::kernels::cpu {

// Largest finite e4m3fn value. Writes clamp to +-448 (vLLM's saturating cast) instead of the
// NaN that a plain cast gives past 464; NaN passes std::clamp unchanged and stays NaN.
constexpr float kFp8E4M3Max = 448.f;

inline c10::Float8_e4m3fn to_fp8_e4m3_saturated(float x) {
  return c10::Float8_e4m3fn(std::clamp(x, -kFp8E4M3Max, kFp8E4M3Max));
}

// Every e4m3fn bit pattern as a float, so that reading a cache row is one load per element.
inline const std::array<float, 256>& fp8_e4m3_to_float_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int bits = 0; bits < 256; ++bits) {
      t[bits] = static_cast<float>(c10::Float8_e4m3fn(static_cast<uint8_t>(bits), c10::Float8_e4m3fn::from_bits()));
    }
    return t;
  }();
  return table;
}

// Converts a row of a float8_e4m3fn cache to float into `buf` (the overload of as_float_row in
// cpu_kernels.h that the attention kernel picks for an fp8 cache).
inline const float* as_float_row(const c10::Float8_e4m3fn* src, float* buf, int64_t n) {
  const float* table = fp8_e4m3_to_float_table().data();
  for (int64_t i = 0; i < n; ++i) buf[i] = table[src[i].x];
  return buf;
}

}  // namespace fastpage::kernels::cpu
