// KV-cache writes and block moves on the CPU. Block moves only move bytes, so they work for any
// dtype; writes copy values of the cache's own dtype, or cast them to a float8_e4m3fn cache.
#include <ATen/Parallel.h>

#include <cstring>

#include "cpu_kernels.h"
#include "fp8.h"

namespace fastpage::kernels::cpu {
namespace {

// Checks a [n, 2] int64 (src, dst) block mapping against the block counts it indexes.
void check_block_mapping(const at::Tensor& mapping, int64_t num_src_blocks, int64_t num_dst_blocks,
                         const char* op) {
  TORCH_CHECK(mapping.device().is_cpu(), op, "block_mapping must be on the CPU, got ",
              mapping.device());
  TORCH_CHECK(mapping.scalar_type() == at::kLong, op, "block_mapping must be int64, got ",
              mapping.scalar_type());
  TORCH_CHECK(mapping.dim() == 2 && mapping.size(1) == 2 && mapping.is_contiguous(), op,
              "block_mapping must be a contiguous [n, 2] tensor of (src, dst) pairs, got shape ",
              mapping.sizes());
  const int64_t* pairs = mapping.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < mapping.size(0); ++i) {
    TORCH_CHECK(pairs[2 * i] >= 0 && pairs[2 * i] < num_src_blocks, op, "block_mapping[", i,
                ", 0] = ", pairs[2 * i], " is outside the source's ", num_src_blocks, " blocks");
    TORCH_CHECK(pairs[2 * i + 1] >= 0 && pairs[2 * i + 1] < num_dst_blocks, op, "block_mapping[",
                i, ", 1] = ", pairs[2 * i + 1], " is outside the destination's ", num_dst_blocks,
                " blocks");
  }
}

// reshape_and_cache into float8_e4m3fn caches: each element is cast with saturation (scale 1.0).
template <typename scalar_t>
void write_fp8_slots(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const int64_t* slots, int64_t num_tokens) {
  const int64_t num_heads = key_cache.size(2);
  const int64_t head_dim = key_cache.size(3);
  const int64_t slot_elems = num_heads * head_dim;
  const scalar_t* k_src = key.const_data_ptr<scalar_t>();
  const scalar_t* v_src = value.const_data_ptr<scalar_t>();
  auto* k_dst = static_cast<c10::Float8_e4m3fn*>(key_cache.data_ptr());
  auto* v_dst = static_cast<c10::Float8_e4m3fn*>(value_cache.data_ptr());
  at::parallel_for(0, num_tokens, grain_for(2 * slot_elems), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;  // padding token: no slot
      for (int64_t h = 0; h < num_heads; ++h) {
        const scalar_t* k = k_src + t * key.stride(0) + h * key.stride(1);
        const scalar_t* v = v_src + t * value.stride(0) + h * value.stride(1);
        c10::Float8_e4m3fn* k_out = k_dst + slots[t] * slot_elems + h * head_dim;
        c10::Float8_e4m3fn* v_out = v_dst + slots[t] * slot_elems + h * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {
          k_out[d] = to_fp8_e4m3_saturated(static_cast<float>(k[d]));
          v_out[d] = to_fp8_e4m3_saturated(static_cast<float>(v[d]));
        }
      }
    }
  });
}

}  // namespace

void check_cache_write_inputs(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                              const at::Tensor& value_cache, const at::Tensor& slot_mapping, const char* op) {
  check_kv_caches(key_cache, value_cache, op);
  const int64_t num_heads = key_cache.size(2);
  const int64_t head_dim = key_cache.size(3);
  TORCH_CHECK(key.dim() == 3 && key.size(1) == num_heads && key.size(2) == head_dim, op,
              "key must be [num_tokens, ", num_heads, ", ", head_dim, "] to match the cache, got ",
              key.sizes());
  TORCH_CHECK(value.sizes() == key.sizes(), op, "value shape ", value.sizes(),
              " must equal key shape ", key.sizes());
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1, op,
              "key and value must be contiguous in head_dim");
  TORCH_CHECK(value.scalar_type() == key.scalar_type(), op, "value must have the key dtype ",
              key.scalar_type(), ", got ", value.scalar_type());
  check_kv_cache_dtype(key_cache, value_cache, key.scalar_type(), op);
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1 &&
                  slot_mapping.is_contiguous(),
              op, "slot_mapping must be a contiguous 1-D int64 tensor, got ",
              slot_mapping.scalar_type(), " ", slot_mapping.sizes());
  // Tokens past slot_mapping's length (padding) are not written.
  const int64_t num_tokens = slot_mapping.size(0);
  TORCH_CHECK(num_tokens <= key.size(0), op, "slot_mapping has ", num_tokens,
              " entries but key has only ", key.size(0), " tokens");
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  const int64_t* slots = slot_mapping.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] < num_slots, op, "slot_mapping[", t, "] = ", slots[t],
                " is outside the cache's ", num_slots, " slots");
  }
  if (key_cache.scalar_type() == at::kFloat8_e4m3fn) check_float_dtype(key, op, "key");
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                       const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  constexpr const char* op = "fastpage.reshape_and_cache: ";
  check_cache_write_inputs(key, value, key_cache, value_cache, slot_mapping, op);
  const int64_t num_heads = key_cache.size(2);
  const int64_t head_dim = key_cache.size(3);
  const int64_t num_tokens = slot_mapping.size(0);
  const int64_t* slots = slot_mapping.const_data_ptr<int64_t>();

  if (key_cache.scalar_type() == at::kFloat8_e4m3fn) {
    FASTPAGE_DISPATCH_FLOAT_TYPES(key.scalar_type(), "fastpage_reshape_and_cache_fp8", [&] {
      write_fp8_slots<scalar_t>(key, value, key_cache, value_cache, slots, num_tokens);
    });
    return;
  }
  const int64_t elem = key.element_size();
  const int64_t row_bytes = head_dim * elem;
  const int64_t slot_bytes = num_heads * row_bytes;
  const auto* k_src = static_cast<const char*>(key.const_data_ptr());
  const auto* v_src = static_cast<const char*>(value.const_data_ptr());
  auto* k_dst = static_cast<char*>(key_cache.data_ptr());
  auto* v_dst = static_cast<char*>(value_cache.data_ptr());
  at::parallel_for(0, num_tokens, grain_for(2 * num_heads * head_dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;  // padding token: no slot
      for (int64_t h = 0; h < num_heads; ++h) {
        std::memcpy(k_dst + slots[t] * slot_bytes + h * row_bytes,
                    k_src + (t * key.stride(0) + h * key.stride(1)) * elem, row_bytes);
        std::memcpy(v_dst + slots[t] * slot_bytes + h * row_bytes,
                    v_src + (t * value.stride(0) + h * value.stride(1)) * elem, row_bytes);
      }
    }
  });
}

void copy_blocks(at::TensorList caches, const at::Tensor& block_mapping) {
  constexpr const char* op = "fastpage.copy_blocks: ";
  for (size_t i = 0; i < caches.size(); ++i) {
    TORCH_CHECK(caches[i].dim() >= 1 && caches[i].is_contiguous(), op, "caches[", i,
                "] must be a contiguous tensor with the block index as dim 0");
    TORCH_CHECK(caches[i].device().is_cpu(), op, "caches[", i, "] must be on the CPU, got ",
                caches[i].device());
    TORCH_CHECK(caches[i].size(0) == caches[0].size(0), op, "caches[", i, "] has ",
                caches[i].size(0), " blocks, caches[0] has ", caches[0].size(0));
  }
  if (caches.empty()) return;
  check_block_mapping(block_mapping, caches[0].size(0), caches[0].size(0), op);
  const int64_t num_pairs = block_mapping.size(0);
  const int64_t* pairs = block_mapping.const_data_ptr<int64_t>();
  const int64_t num_caches = static_cast<int64_t>(caches.size());
  at::parallel_for(0, num_caches * num_pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const at::Tensor& cache = caches[i / num_pairs];
      const int64_t pair = i % num_pairs;
      const int64_t block_bytes = cache.stride(0) * cache.element_size();
      auto* base = static_cast<char*>(cache.data_ptr());
      std::memcpy(base + pairs[2 * pair + 1] * block_bytes, base + pairs[2 * pair] * block_bytes,
                  block_bytes);
    }
  });
}

void swap_blocks(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& block_mapping) {
  constexpr const char* op = "fastpage.swap_blocks: ";
  // Host<->device swaps dispatch to the CUDA kernel; this one only sees host caches.
  TORCH_CHECK(src.device().is_cpu() && dst.device().is_cpu(), op,
              "the CPU kernel needs src and dst on the CPU, got ", src.device(), " and ",
              dst.device());
  // [planes, num_blocks, ...]: every plane (a layer's K or V) moves the same blocks, so one call
  // swaps all layers.
  TORCH_CHECK(src.dim() >= 2 && dst.dim() == src.dim() && src.size(0) == dst.size(0) &&
                  src.sizes().slice(2) == dst.sizes().slice(2),
              op, "src ", src.sizes(), " and dst ", dst.sizes(),
              " must be [planes, num_blocks, ...] with equal sizes apart from num_blocks");
  TORCH_CHECK(src.scalar_type() == dst.scalar_type(), op, "src dtype ", src.scalar_type(),
              " != dst dtype ", dst.scalar_type());
  TORCH_CHECK(src.is_contiguous() && dst.is_contiguous(), op, "src and dst must be contiguous");
  check_block_mapping(block_mapping, src.size(1), dst.size(1), op);
  const int64_t elem = src.element_size();
  const int64_t block_bytes = src.stride(1) * elem;
  const int64_t num_planes = src.size(0);
  const int64_t num_pairs = block_mapping.size(0);
  const int64_t* pairs = block_mapping.const_data_ptr<int64_t>();
  const auto* src_base = static_cast<const char*>(src.const_data_ptr());
  auto* dst_base = static_cast<char*>(dst.data_ptr());
  at::parallel_for(0, num_planes * num_pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t plane = i / num_pairs;
      const int64_t pair = i % num_pairs;
      std::memcpy(dst_base + plane * dst.stride(0) * elem + pairs[2 * pair + 1] * block_bytes,
                  src_base + plane * src.stride(0) * elem + pairs[2 * pair] * block_bytes,
                  block_bytes);
    }
  });
}

}  // namespace fastpage::kernels::cpu
