// sample_tokens on the GPU: one thread block per row. Greedy rows take the argmax. Other rows
// divide by their temperature on the fly, find the kept-logit floor of min_p, top_k and top_p with
// radix selects over the row (no sort), and draw by Gumbel-max with the same counter-based noise as
// the CPU sampler (cpp/src/sampling/counter_rng.h): from the same logits both draw the same token.
// A row with a structured-output bitmask reads the tokens it does not allow as -inf, fused into every
// pass over the row (no masked copy of the logits is written).
#pragma once
#include <cfloat>
#include <climits>
#include <cstdint>

#include "../cpp/src/sampling/counter_rng.h"
#include "common.cuh"
#include "order_key.cuh"

namespace fastpage::cuda {

constexpr int kSampleThreads = 512;
constexpr unsigned kFullMask = 0xffffffffu;

// A row's logits as the kernel sees them: token i is -inf when the row's bitmask (if any) clears bit i.
struct MaskedRow {
  const float* logits;
  const int32_t* bitmask;  // null: every token allowed

  __device__ __forceinline__ float operator[](int i) const {
    if (bitmask != nullptr && ((static_cast<uint32_t>(__ldg(bitmask + (i >> 5))) >> (i & 31)) & 1u) == 0u) {
      return -INFINITY;
    }
    return logits[i];
  }
};

struct ArgMax {
  float value;
  int index;
};

// The larger value; on equal values the lower index (the CPU's first-index-of-the-maximum rule).
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
}

__device__ __forceinline__ ArgMax block_argmax(ArgMax x) {
  __shared__ ArgMax partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = better(x, {__shfl_xor_sync(kFullMask, x.value, offset), __shfl_xor_sync(kFullMask, x.index, offset)});
  }
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < num_warps ? partial[lane] : ArgMax{-INFINITY, INT_MAX};
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = better(x, {__shfl_xor_sync(kFullMask, x.value, offset), __shfl_xor_sync(kFullMask, x.index, offset)});
  }
  return x;
}

__device__ __forceinline__ double warp_sum_double(double x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__device__ __forceinline__ double block_sum_double(double x) {
  __shared__ double partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  x = warp_sum_double(x);
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < num_warps ? partial[lane] : 0.0;
  return warp_sum_double(x);
}

// The largest value v of the row (logits / temperature) such that the tokens at or above v weigh at
// least `target` (weight(v) = 0 leaves a token out): top_k with weight 1 and target k, top_p with
// weight exp(v - max) and target top_p * total. Four passes over the row, one byte of the order key
// each; each warp adds its lanes' weights per distinct byte before one shared-memory atomic.
// Returns -inf when the weights never reach the target (rounding at top_p ~ 1: keep everything).
template <typename Weight>
__device__ float select_floor(const MaskedRow& row, int vocab, float temperature, Weight weight, double target) {
  __shared__ double histogram[256];
  __shared__ uint32_t chosen_digit;
  __shared__ double chosen_above;
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0, prefix_mask = 0;
  double above = 0.0;  // weight of the tokens whose keys exceed every key with this prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int j = threadIdx.x; j < 256; j += blockDim.x) histogram[j] = 0.0;
    __syncthreads();
    for (int base = 0; base < vocab; base += blockDim.x) {  // every lane runs every iteration
      const int i = base + threadIdx.x;
      double w = 0.0;
      uint32_t digit = 0;
      if (i < vocab) {
        const float v = row[i] / temperature;
        const uint32_t key = order_key(v);
        if ((key & prefix_mask) == prefix) {
          w = weight(v);
          digit = (key >> shift) & 255u;
        }
      }
      bool pending = w > 0.0;
      unsigned lanes = __ballot_sync(kFullMask, pending);
      while (lanes != 0) {
        const uint32_t d = __shfl_sync(kFullMask, digit, __ffs(lanes) - 1);
        const bool mine = pending && digit == d;
        const double sum = warp_sum_double(mine ? w : 0.0);
        if (lane == __ffs(lanes) - 1) atomicAdd(&histogram[d], sum);
        pending = pending && !mine;
        lanes = __ballot_sync(kFullMask, pending);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int chosen = -1, lowest_nonempty = -1;
      double mass_above = above;
      for (int d = 255; d >= 0; --d) {
        if (histogram[d] == 0.0) continue;
        lowest_nonempty = d;
        if (mass_above + histogram[d] >= target) {
          chosen = d;
          break;
        }
        mass_above += histogram[d];
      }
      // Below the first byte the bucket's weight reached the target before; a shortfall is rounding.
      if (chosen < 0 && shift < 24) chosen = lowest_nonempty;
      chosen_digit = chosen < 0 ? 256u : static_cast<uint32_t>(chosen);
      chosen_above = mass_above;
    }
    __syncthreads();
    const uint32_t d = chosen_digit;
    above = chosen_above;
    __syncthreads();  // chosen_* and histogram are rewritten by the next pass
    if (d == 256u) return -INFINITY;
    prefix |= d << shift;
    prefix_mask |= 255u << shift;
  }
  return key_value(prefix);
}

// logits [rows, vocab] float32, processed; per-row parameters as in fastpage::ops::sample_tokens.
// bitmask [*, words] int32 and bitmask_index [rows] (-1: no mask) are null when no row has a mask.
__global__ void __launch_bounds__(kSampleThreads) sample_tokens_kernel(
    int64_t* __restrict__ tokens, const float* __restrict__ logits, int vocab,
    const float* __restrict__ temperatures, const int64_t* __restrict__ top_ks,
    const float* __restrict__ top_ps, const float* __restrict__ min_ps, const int64_t* __restrict__ seeds,
    const int64_t* __restrict__ positions, const int32_t* __restrict__ bitmask,
    const int64_t* __restrict__ bitmask_index, int bitmask_words) {
  const int64_t r = blockIdx.x;
  const int64_t mask_row = bitmask_index != nullptr ? bitmask_index[r] : -1;
  const MaskedRow row{logits + r * vocab, mask_row >= 0 ? bitmask + mask_row * bitmask_words : nullptr};
  const float raw_temperature = temperatures[r];
  const bool greedy = raw_temperature <= 0.0f;
  const float temperature = greedy ? 1.0f : raw_temperature;

  ArgMax top{-INFINITY, INT_MAX};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) top = better(top, {row[i] / temperature, i});
  top = block_argmax(top);
  if (greedy || top.value == -INFINITY) {  // greedy, or every token banned: nothing to draw from
    if (threadIdx.x == 0) tokens[r] = top.index;
    return;
  }
  const float max_value = top.value;

  float floor = -INFINITY;  // kept tokens are those at or above it
  if (min_ps[r] > 0.0f) floor = max_value + logf(min_ps[r]);  // p >= min_p * p_max
  const int64_t top_k = top_ks[r];
  if (top_k > 0 && top_k < vocab) {
    floor = fmaxf(floor, select_floor(row, vocab, temperature, [](float) { return 1.0; },
                                      static_cast<double>(top_k)));
  }
  const float top_p = top_ps[r];
  if (top_p < 1.0f) {
    const float kept_from = floor;
    auto mass = [=](float v) { return v >= kept_from && v != -INFINITY ? static_cast<double>(expf(v - max_value)) : 0.0; };
    double total = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) total += mass(row[i] / temperature);
    total = block_sum_double(total);
    floor = fmaxf(floor, select_floor(row, vocab, temperature, mass, static_cast<double>(top_p) * total));
  }

  // Gumbel-max over the kept tokens: argmax of value + noise(seed, position, token).
  const uint64_t stream = sampling::draw_stream(static_cast<uint64_t>(seeds[r]), positions[r]);
  ArgMax best{-INFINITY, INT_MAX};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i] / temperature;
    if (v < floor || v == -INFINITY) continue;
    best = better(best, {v + sampling::gumbel_noise(stream, i), i});
  }
  best = block_argmax(best);
  if (threadIdx.x == 0) tokens[r] = best.index;
}

}  // namespace fastpage::cuda
