// Products of several rows at once for the CPU kernels: every row loaded from memory (a key or
// value row of the KV cache, a weight row of a linear layer) serves a block of rows on the other
// side (the query heads of a kv head, the tokens of a prefill tile, the rows of a decode batch), and
// the independent accumulators of the block hide the FMA latency that bound a single row's loops.
#pragma once
#include <cstdint>

namespace fastpage::kernels::cpu {

// Rows handled together: 3 rows x 4 dot products (or 3 rows x 32 value outputs) are the twelve
// accumulators that fit the 16 AVX2 registers next to their operands.
constexpr int64_t kDotRowBlock = 3;

// out[r * out_stride + j] = a[r * D ...] . b_rows[j][0 .. D) for r < num_a (<= kDotRowBlock),
// j < num_b. The arithmetic of one output does not depend on num_a or num_b.
void dot_rows(const float* a, int64_t num_a, const float* const* b_rows, int64_t num_b, int64_t D, float* out,
              int64_t out_stride);

// acc[r * D + d] += sum_k p[r * p_stride + k] * values[k][d] for r < num_rows (<= kDotRowBlock),
// k < num_keys.
void accumulate_rows(float* acc, int64_t num_rows, const float* p, int64_t p_stride, const float* const* values,
                     int64_t num_keys, int64_t D);

}  // namespace fastpage::kernels::cpu
