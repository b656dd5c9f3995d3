// Counter-based noise for seeded sampling. Every value is a pure function of (seed, position, token
// id), so a draw never depends on the batch, the row order or the thread that computes it, and a GPU
// kernel reproduces it with the same 64-bit integer arithmetic (hence host/device functions).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTPAGE_HOST_DEVICE __host__ __device__ inline
#else
#define FASTPAGE_HOST_DEVICE inline
#endif

namespace fastpage::sampling {

// SplitMix64's Weyl increment (2^64 / golden ratio, odd) and output mix (full avalanche, bijective).
constexpr uint64_t kWeylIncrement = 0x9E3779B97F4A7C15ull;

FASTPAGE_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// One draw's stream: a random starting point on SplitMix64's Weyl sequence; token t reads the
// sequence at step t + 1. Two streams share values only if their starting points lie within a
// vocabulary's length of each other (probability ~ vocab / 2^64).
FASTPAGE_HOST_DEVICE uint64_t draw_stream(uint64_t seed, int64_t position) {
  return mix64(mix64(seed + kWeylIncrement) + (static_cast<uint64_t>(position) + 1) * kWeylIncrement);
}

// The 64 random bits of token `token` of a stream.
FASTPAGE_HOST_DEVICE uint64_t noise_bits(uint64_t stream, int64_t token) {
  return mix64(stream + (static_cast<uint64_t>(token) + 1) * kWeylIncrement);
}

// Standard Gumbel noise -log(E), E ~ Exp(1), increasing in `bits`. argmax(logit + noise) is a draw
// from softmax(logits) (the exponential race argmax(p / E) in log space). E is computed in double
// from a 52-bit uniform so that E near 0, where the winners come from, keeps its resolution.
FASTPAGE_HOST_DEVICE float gumbel_from_bits(uint64_t bits) {
  const double uniform = (static_cast<double>(bits >> 12) + 0.5) * 0x1p-52;  // in (0, 1), exact
  const double exponential = -log(uniform);
  return -logf(static_cast<float>(exponential));
}

FASTPAGE_HOST_DEVICE float gumbel_noise(uint64_t stream, int64_t token) {
  return gumbel_from_bits(noise_bits(stream, token));
}

// Largest value gumbel_from_bits can return: -log(-log(1 - 2^-53)) = 36.737, rounded up.
constexpr float kMaxGumbel = 36.75f;

}  // namespace fastpage::sampling
