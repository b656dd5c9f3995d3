// Order-preserving float <-> uint32 keys: a larger float has a larger key, so radix selects and
// packed 64-bit maxima work on floats (sampling_kernels.cuh, argmax_ops.cu).
#pragma once
#include <cstdint>

namespace fastpage::cuda {

__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? key & 0x7fffffffu : ~key);
}

}  // namespace fastpage::cuda
