// The two products of the CPU attention tile, for several query rows at once: every key or value
// row loaded from the cache serves all of them (the query heads of a kv head, the tokens of a
// prefill tile), and the independent accumulators of the rows hide the FMA latency that bound a
// single row's loops.
#pragma once
#include <cstdint>

namespace fastpage::kernels::cpu {

// Rows handled together: 3 rows x 4 keys of dot products (or 3 rows x 32 value outputs) are the
// twelve accumulators that fit the 16 AVX2 registers next to their operands.
constexpr int64_t kAttentionRowBlock = 3;

// scores[r * scores_stride + k] = q[r * D ...] . keys[k][0 .. D) for r < num_rows, k < num_keys.
// num_rows <= kAttentionRowBlock.
void score_rows(const float* q, int64_t num_rows, const float* const* keys, int64_t num_keys, int64_t D,
                float* scores, int64_t scores_stride);

// acc[r * D + d] += sum_k p[r * p_stride + k] * values[k][d] for r < num_rows, k < num_keys.
// num_rows <= kAttentionRowBlock.
void accumulate_rows(float* acc, int64_t num_rows, const float* p, int64_t p_stride, const float* const* values,
                     int64_t num_keys, int64_t D);

}  // namespace fastpage::kernels::cpu
