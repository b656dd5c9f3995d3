// Portable loops, and an AVX2+FMA version picked at run time (the build itself is baseline x86-64).
// The AVX2 dots take four b rows per pass: twelve accumulators of eight lanes each, folded to four
// results per a row by three horizontal adds, instead of a fold per pair. The value sums keep
// twelve independent accumulators (three rows x 32 outputs) in flight across all the keys.
#include "row_dots.h"

#include <algorithm>

#include "cpu_kernels.h"

#include <utility>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FASTPAGE_HAVE_AVX2_DOTS 1
#endif

namespace fastpage::kernels::cpu {
namespace {

void dot_rows_portable(const float* a, int64_t num_a, const float* const* b_rows, int64_t num_b, int64_t D,
                       float* out, int64_t out_stride) {
  for (int64_t r = 0; r < num_a; ++r) {
    for (int64_t j = 0; j < num_b; ++j) out[r * out_stride + j] = dot(a + r * D, b_rows[j], D);
  }
}

void accumulate_rows_portable(float* acc, int64_t num_rows, const float* p, int64_t p_stride,
                              const float* const* values, int64_t num_keys, int64_t D) {
  constexpr int64_t kWidth = 16;  // outputs kept in registers across the keys
  for (int64_t r = 0; r < num_rows; ++r) {
    float* acc_row = acc + r * D;
    const float* p_row = p + r * p_stride;
    int64_t d0 = 0;
    for (; d0 + kWidth <= D; d0 += kWidth) {
      float sum[kWidth];
      for (int64_t l = 0; l < kWidth; ++l) sum[l] = acc_row[d0 + l];
      for (int64_t k = 0; k < num_keys; ++k) {
        const float* v = values[k] + d0;
        for (int64_t l = 0; l < kWidth; ++l) sum[l] += p_row[k] * v[l];
      }
      for (int64_t l = 0; l < kWidth; ++l) acc_row[d0 + l] = sum[l];
    }
    for (; d0 < D; ++d0) {
      for (int64_t k = 0; k < num_keys; ++k) acc_row[d0] += p_row[k] * values[k][d0];
    }
  }
}

#ifdef FASTPAGE_HAVE_AVX2_DOTS
#pragma GCC push_options
#pragma GCC target("avx2,fma")

// Four vectors as named members. gcc -O3 kept arrays of accumulators ([rows][4] __m256) on the
// stack, with a store of every one of them per key: twice the time of the FMAs.
struct Vec4 {
  __m256 v0, v1, v2, v3;
  template <int I>
  __m256& at() {
    if constexpr (I == 0) return v0;
    else if constexpr (I == 1) return v1;
    else if constexpr (I == 2) return v2;
    else return v3;
  }
};

// f.template operator()<I>() for I = 0 .. N - 1, unrolled at compile time.
template <int N, typename F>
inline void unrolled(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) { (f.template operator()<I>(), ...); }(
      std::make_integer_sequence<int, N>{});
}

// Sum of each vector's eight lanes, as four floats.
inline __m128 sum_lanes(Vec4& a) {
  // hadd(hadd(a0, a1), hadd(a2, a3)) holds each vector's sum of lanes 0-3 in the low half and of
  // lanes 4-7 in the high half.
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a.v0, a.v1), _mm256_hadd_ps(a.v2, a.v3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// R a rows x 4 b rows per pass; D a multiple of 8. Past num_b the last b row is used again, not stored.
template <int R>
void dot_rows_avx2(const float* a, const float* const* b_rows, int64_t num_b, int64_t D, float* out,
                   int64_t out_stride) {
  for (int64_t k0 = 0; k0 < num_b; k0 += 4) {
    const float* key[4];
    for (int j = 0; j < 4; ++j) key[j] = b_rows[std::min<int64_t>(k0 + j, num_b - 1)];
    Vec4 acc0{}, acc1{}, acc2{};  // a row r's dots with b rows k0 .. k0 + 3
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 q0 = _mm256_loadu_ps(a + d);
      const __m256 q1 = R > 1 ? _mm256_loadu_ps(a + D + d) : q0;
      const __m256 q2 = R > 2 ? _mm256_loadu_ps(a + 2 * D + d) : q0;
      unrolled<4>([&]<int j>() {
        const __m256 k = _mm256_loadu_ps(key[j] + d);
        acc0.at<j>() = _mm256_fmadd_ps(q0, k, acc0.at<j>());
        if constexpr (R > 1) acc1.at<j>() = _mm256_fmadd_ps(q1, k, acc1.at<j>());
        if constexpr (R > 2) acc2.at<j>() = _mm256_fmadd_ps(q2, k, acc2.at<j>());
      });
    }
    const int64_t n = std::min<int64_t>(4, num_b - k0);
    const auto store = [&](Vec4& acc, int64_t r) {
      const __m128 sums = sum_lanes(acc);
      float* dst = out + r * out_stride + k0;
      if (n == 4) {
        _mm_storeu_ps(dst, sums);
      } else {
        alignas(16) float tmp[4];
        _mm_store_ps(tmp, sums);
        std::copy_n(tmp, n, dst);
      }
    };
    store(acc0, 0);
    if constexpr (R > 1) store(acc1, 1);
    if constexpr (R > 2) store(acc2, 2);
  }
}

// R rows x W * 8 outputs starting at d0 (W <= 4), accumulated over all keys.
template <int R, int W>
void accumulate_block_avx2(float* acc, const float* p, int64_t p_stride, const float* const* values,
                           int64_t num_keys, int64_t D, int64_t d0) {
  Vec4 sum0, sum1, sum2;
  float* const out0 = acc + d0;
  float* const out1 = acc + D + d0;
  float* const out2 = acc + 2 * D + d0;
  unrolled<W>([&]<int w>() {
    sum0.at<w>() = _mm256_loadu_ps(out0 + 8 * w);
    if constexpr (R > 1) sum1.at<w>() = _mm256_loadu_ps(out1 + 8 * w);
    if constexpr (R > 2) sum2.at<w>() = _mm256_loadu_ps(out2 + 8 * w);
  });
  for (int64_t k = 0; k < num_keys; ++k) {
    const float* v = values[k] + d0;
    const __m256 p0 = _mm256_broadcast_ss(p + k);
    const __m256 p1 = R > 1 ? _mm256_broadcast_ss(p + p_stride + k) : p0;
    const __m256 p2 = R > 2 ? _mm256_broadcast_ss(p + 2 * p_stride + k) : p0;
    unrolled<W>([&]<int w>() {
      const __m256 vw = _mm256_loadu_ps(v + 8 * w);
      sum0.at<w>() = _mm256_fmadd_ps(p0, vw, sum0.at<w>());
      if constexpr (R > 1) sum1.at<w>() = _mm256_fmadd_ps(p1, vw, sum1.at<w>());
      if constexpr (R > 2) sum2.at<w>() = _mm256_fmadd_ps(p2, vw, sum2.at<w>());
    });
  }
  unrolled<W>([&]<int w>() {
    _mm256_storeu_ps(out0 + 8 * w, sum0.at<w>());
    if constexpr (R > 1) _mm256_storeu_ps(out1 + 8 * w, sum1.at<w>());
    if constexpr (R > 2) _mm256_storeu_ps(out2 + 8 * w, sum2.at<w>());
  });
}

// D a multiple of 8.
template <int R>
void accumulate_rows_avx2(float* acc, const float* p, int64_t p_stride, const float* const* values,
                          int64_t num_keys, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32) accumulate_block_avx2<R, 4>(acc, p, p_stride, values, num_keys, D, d0);
  for (; d0 < D; d0 += 8) accumulate_block_avx2<R, 1>(acc, p, p_stride, values, num_keys, D, d0);
}

#pragma GCC pop_options

bool use_avx2(int64_t D) {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported && D % 8 == 0;
}
#endif

}  // namespace

void dot_rows(const float* a, int64_t num_a, const float* const* b_rows, int64_t num_b, int64_t D, float* out,
              int64_t out_stride) {
  if (num_b <= 0) return;
#ifdef FASTPAGE_HAVE_AVX2_DOTS
  static_assert(kDotRowBlock == 3);
  if (use_avx2(D)) {
    switch (num_a) {
      case 1: return dot_rows_avx2<1>(a, b_rows, num_b, D, out, out_stride);
      case 2: return dot_rows_avx2<2>(a, b_rows, num_b, D, out, out_stride);
      case 3: return dot_rows_avx2<3>(a, b_rows, num_b, D, out, out_stride);
      default: break;
    }
  }
#endif
  dot_rows_portable(a, num_a, b_rows, num_b, D, out, out_stride);
}

void accumulate_rows(float* acc, int64_t num_rows, const float* p, int64_t p_stride, const float* const* values,
                     int64_t num_keys, int64_t D) {
  if (num_keys <= 0) return;
#ifdef FASTPAGE_HAVE_AVX2_DOTS
  if (use_avx2(D)) {
    switch (num_rows) {
      case 1: return accumulate_rows_avx2<1>(acc, p, p_stride, values, num_keys, D);
      case 2: return accumulate_rows_avx2<2>(acc, p, p_stride, values, num_keys, D);
      case 3: return accumulate_rows_avx2<3>(acc, p, p_stride, values, num_keys, D);
      default: break;
    }
  }
#endif
  accumulate_rows_portable(acc, num_rows, p, p_stride, values, num_keys, D);
}

}  // namespace fastpage::kernels::cpu
