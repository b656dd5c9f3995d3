// The paged KV cache: one tensor per device holding every layer's K and V blocks.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <vector>

#include "fastpage/config.h"

namespace fastpage {

// Layout [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]; key(l) / value(l) are
// views [num_blocks, block_size, num_kv_heads, head_dim] made once, so the layer loop allocates
// nothing to reach them. The host cache (swap space) has the same layout with num_host_blocks.
struct KVCache {
  at::Tensor device_cache;
  at::Tensor host_cache;  // undefined when swapping is off
  std::vector<at::Tensor> key_views;
  std::vector<at::Tensor> value_views;
  std::vector<at::Tensor> all_views;  // K and V of every layer, for copy_blocks
  int64_t num_device_blocks = 0;
  int64_t num_host_blocks = 0;
  int64_t bytes_per_block = 0;

  // cache_dtype: the element type of both caches (kv_cache_scalar_type()).
  KVCache(const ModelConfig& model, int64_t block_size, int64_t num_device_blocks,
          int64_t num_host_blocks, c10::Device device, c10::ScalarType cache_dtype);

  const at::Tensor& key(int64_t layer) const { return key_views[layer]; }
  const at::Tensor& value(int64_t layer) const { return value_views[layer]; }
};

// The cache's element type: the model dtype for KVCacheDtype::Auto, else float8_e4m3fn.
c10::ScalarType kv_cache_scalar_type(const EngineConfig& engine, c10::ScalarType model_dtype);

// Bytes one block takes across all layers, K and V, with `cache_dtype` elements.
int64_t kv_bytes_per_block(const ModelConfig& model, int64_t block_size, c10::ScalarType cache_dtype);

constexpr int64_t kDefaultCpuKvCacheBytes = 4ll << 30;

// How many device blocks to allocate: num_gpu_blocks when set; else kv_cache_memory_bytes when set;
// else 4 GiB on CPU, or on CUDA gpu_memory_utilization of total memory minus what is already in
// use (the weights, loaded before this is called) and an estimate of the forward pass's activations.
// Blocks are counted in engine.kv_cache_dtype elements; activations in the model dtype.
int64_t plan_num_device_blocks(const ModelConfig& model, const EngineConfig& engine,
                               c10::Device device, c10::ScalarType model_dtype);
// Host (swap) blocks: num_cpu_blocks when set, else swap_space_bytes worth.
int64_t plan_num_host_blocks(const ModelConfig& model, const EngineConfig& engine, c10::ScalarType model_dtype);

}  // namespace fastpage
