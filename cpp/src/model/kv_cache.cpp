#include "kv_cache.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <stdexcept>

#ifdef FASTPAGE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace fastpage {
namespace {

#ifdef FASTPAGE_WITH_CUDA
// Peak activation bytes of one forward pass over max_num_batched_tokens tokens: the residual
// stream and its norm, q/k/v, attention output and the MLP's widest intermediates, plus float32
// logits for every sequence; doubled for the allocator's slack.
int64_t activation_estimate_bytes(const ModelConfig& m, const EngineConfig& e, c10::ScalarType dtype) {
  const int64_t tokens = e.max_num_batched_tokens;
  const int64_t qkv = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim;
  const int64_t per_token = 4 * m.hidden_size + qkv + m.num_heads * m.head_dim + 3 * m.intermediate_size;
  const int64_t logits = e.max_num_seqs * m.vocab_size * 4;
  return 2 * (tokens * per_token * c10::elementSize(dtype) + logits);
}

int64_t cuda_kv_budget_bytes(const ModelConfig& m, const EngineConfig& e, c10::Device device,
                             c10::ScalarType dtype) {
  size_t free_bytes = 0, total_bytes = 0;
  c10::cuda::CUDAGuard guard(device);
  // Blocks torch's allocator caches but no tensor holds (freed models, an earlier engine) would
  // count as in use: hand them back to the driver first.
  c10::cuda::CUDACachingAllocator::emptyCache();
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    throw std::runtime_error("cudaMemGetInfo failed while sizing the KV cache");
  }
  const int64_t in_use = static_cast<int64_t>(total_bytes - free_bytes);
  return static_cast<int64_t>(e.gpu_memory_utilization * static_cast<double>(total_bytes)) - in_use -
         activation_estimate_bytes(m, e, dtype);
}
#endif

}  // namespace

c10::ScalarType kv_cache_scalar_type(const EngineConfig& e, c10::ScalarType model_dtype) {
  switch (e.kv_cache_dtype) {
    case KVCacheDtype::Auto: return model_dtype;
    case KVCacheDtype::Fp8E4M3: return c10::ScalarType::Float8_e4m3fn;
  }
  throw std::invalid_argument("EngineConfig.kv_cache_dtype holds an unknown value");
}

int64_t kv_bytes_per_block(const ModelConfig& m, int64_t block_size, c10::ScalarType cache_dtype) {
  return m.num_layers * 2 * block_size * m.num_kv_heads * m.head_dim * c10::elementSize(cache_dtype);
}

int64_t plan_num_device_blocks(const ModelConfig& m, const EngineConfig& e, c10::Device device,
                               c10::ScalarType dtype) {
  if (e.num_gpu_blocks > 0) return e.num_gpu_blocks;
  int64_t budget = e.kv_cache_memory_bytes;
  if (budget <= 0 && device.is_cpu()) budget = kDefaultCpuKvCacheBytes;
  if (budget <= 0) {
#ifdef FASTPAGE_WITH_CUDA
    if (e.gpu_memory_utilization <= 0.0 || e.gpu_memory_utilization > 1.0) {
      throw std::invalid_argument("gpu_memory_utilization must be in (0, 1]");
    }
    budget = cuda_kv_budget_bytes(m, e, device, dtype);
#else
    throw std::invalid_argument("device " + device.str() + " is not supported by this build");
#endif
  }
  const int64_t num_blocks = budget / kv_bytes_per_block(m, e.block_size, kv_cache_scalar_type(e, dtype));
  if (num_blocks <= 0) {
    throw std::invalid_argument("no memory left for the KV cache (budget " + std::to_string(budget) +
                                " bytes); raise kv_cache_memory_bytes / gpu_memory_utilization");
  }
  return num_blocks;
}

int64_t plan_num_host_blocks(const ModelConfig& m, const EngineConfig& e, c10::ScalarType dtype) {
  if (e.num_cpu_blocks < 0 || e.swap_space_bytes < 0) {
    throw std::invalid_argument("num_cpu_blocks and swap_space_bytes must be >= 0");
  }
  if (e.num_cpu_blocks > 0) return e.num_cpu_blocks;
  return e.swap_space_bytes / kv_bytes_per_block(m, e.block_size, kv_cache_scalar_type(e, dtype));
}

KVCache::KVCache(const ModelConfig& m, int64_t block_size, int64_t num_device_blocks_,
                 int64_t num_host_blocks_, c10::Device device, c10::ScalarType dtype)
    : num_device_blocks(num_device_blocks_),
      num_host_blocks(num_host_blocks_),
      bytes_per_block(kv_bytes_per_block(m, block_size, dtype)) {
  const auto shape = [&](int64_t blocks) {
    return std::vector<int64_t>{m.num_layers, 2, blocks, block_size, m.num_kv_heads, m.head_dim};
  };
  // Attention reads only slots that this step or an earlier one wrote. On the CPU the cache stays
  // uninitialised so the OS commits pages only as blocks get used; on a GPU it is zeroed once.
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  device_cache = device.is_cpu() ? at::empty(shape(num_device_blocks), options)
                                 : at::zeros(shape(num_device_blocks), options);
  if (num_host_blocks > 0) {
    // Pinned when the device is a GPU so swaps can run as async copies.
    host_cache = at::empty(shape(num_host_blocks),
                           at::TensorOptions().dtype(dtype).pinned_memory(!device.is_cpu()));
  }
  for (int64_t layer = 0; layer < m.num_layers; ++layer) {
    key_views.push_back(device_cache[layer][0]);
    value_views.push_back(device_cache[layer][1]);
    all_views.push_back(key_views.back());
    all_views.push_back(value_views.back());
  }
}

}  // namespace fastpage
