// exp over float arrays with no libm call, so that the loops vectorize (std::exp is a scalar call
// per element). Range reduction x = n ln2 + r with |r| <= ln2 / 2, the Cephes expf polynomial for
// e^r, then 2^n through the exponent bits: within 1 ulp of exp for x in [-87.3, 88.3] (measured
// 8e-8 relative). Inputs below that range give 2^-126 (~1e-38) instead of 0, negligible next to
// the values softmax and SiLU add it to; inputs above it give ~2.4e38; NaN stays NaN.
#pragma once
#include <bit>
#include <cstdint>

namespace fastpage::kernels::cpu {

// e^x for x already clamped to [kExpMin, kExpMax].
inline float exp_clamped(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 in two parts: n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// x[i] = exp(x[i]). The clamp has a loop of its own: inside the main loop gcc threads the clamped
// paths through a constant-folded polynomial and the loop no longer vectorizes.
inline void exp_in_place(float* x, int64_t n) {
  constexpr float kExpMax = 88.3762626647949f;   // 2^127 * (1 + r) stays finite
  constexpr float kExpMin = -87.3365478515625f;  // 2^-126, the smallest normal float
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] > kExpMax ? kExpMax : x[i];  // comparisons that let NaN through
    x[i] = v < kExpMin ? kExpMin : v;
  }
  for (int64_t i = 0; i < n; ++i) x[i] = exp_clamped(x[i]);
}

}  // namespace fastpage::kernels::cpu
