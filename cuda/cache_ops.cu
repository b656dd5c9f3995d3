// CUDA launchers for the KV cache ops: reshape_and_cache, copy_blocks, swap_blocks.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "cache_kernels.cuh"

namespace fastpage::cuda {
namespace {

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                       const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  constexpr const char* op = "reshape_and_cache";
  const int64_t num_tokens = check_cache_write_inputs(key, value, key_cache, value_cache, slot_mapping, op);
  if (num_tokens == 0) return;
  const int64_t num_kv_heads = key.size(1), head_dim = key.size(2);

  const c10::cuda::CUDAGuard guard(key_cache.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto slots = slot_mapping.contiguous();
  dispatch_float_types(key.scalar_type(), op, [&]<typename T>() {
    dispatch_cache_types<T>(key_cache.scalar_type(), op, [&]<typename C>() {
      dispatch_index_types(slots, op, "slot_mapping", [&]<typename I>() {
        // VEC elements of T are read per access (16 bytes) and VEC elements of C written.
        constexpr int kVec = Vec16<T>::kSize;
        const bool vec_ok = head_dim % kVec == 0 && cache_write_vectorizable<T, C>(key, value, key_cache, value_cache);
        const int vec = vec_ok ? kVec : 1;
        const int threads = static_cast<int>(std::min<int64_t>(512, (num_kv_heads * head_dim / vec + 31) / 32 * 32));
        auto launch = [&](auto kernel) {
          kernel<<<grid_size(num_tokens, op), threads, 0, stream>>>(
              static_cast<const T*>(key.data_ptr()), static_cast<const T*>(value.data_ptr()),
              static_cast<C*>(key_cache.data_ptr()), static_cast<C*>(value_cache.data_ptr()),
              slots.data_ptr<I>(), key.stride(0), value.stride(0), key_cache.stride(0), key_cache.stride(1),
              key_cache.stride(2), static_cast<int>(key_cache.size(1)), static_cast<int>(num_kv_heads),
              static_cast<int>(head_dim));
        };
        if (vec_ok) launch(reshape_and_cache_kernel<T, C, I, kVec>);
        else launch(reshape_and_cache_kernel<T, C, I, 1>);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

void copy_blocks(at::TensorList caches, const at::Tensor& block_mapping) {
  constexpr const char* op = "copy_blocks";
  TORCH_CHECK(block_mapping.dim() == 2 && block_mapping.size(1) == 2, op,
                    ": block_mapping must be [num_pairs, 2], got ", block_mapping.sizes());
  const int64_t num_pairs = block_mapping.size(0), num_caches = static_cast<int64_t>(caches.size());
  if (num_pairs == 0 || num_caches == 0) return;
  const auto device = caches[0].device();
  // Per cache: base address, block stride and block size in bytes, all on the host first.
  auto meta = at::empty({3 * num_caches + 2 * num_pairs}, at::kLong);
  int64_t* m = meta.data_ptr<int64_t>();
  bool aligned = true;
  for (int64_t c = 0; c < num_caches; ++c) {
    const at::Tensor& cache = caches[c];
    check_cuda(cache, op, "caches");
    TORCH_CHECK(cache.device() == device, op, ": caches[", c, "] is on ", cache.device(), ", expected ",
                      device);
    TORCH_CHECK(cache.dim() >= 1 && contiguous_from(cache, 1), op, ": caches[", c,
                      "] must be contiguous within a block");
    const int64_t es = cache.element_size();
    m[c] = reinterpret_cast<int64_t>(cache.data_ptr());
    m[num_caches + c] = cache.stride(0) * es;
    m[2 * num_caches + c] = cache.size(0) == 0 ? 0 : cache.numel() / cache.size(0) * es;
    aligned = aligned && m[c] % 16 == 0 && m[num_caches + c] % 16 == 0 && m[2 * num_caches + c] % 16 == 0;
  }
  const auto mapping = block_mapping.to(at::kCPU, at::kLong).contiguous();
  const int64_t* pairs = mapping.data_ptr<int64_t>();
  for (int64_t i = 0; i < 2 * num_pairs; ++i) {
    for (int64_t c = 0; c < num_caches; ++c) {
      TORCH_CHECK(pairs[i] >= 0 && pairs[i] < caches[c].size(0), op, ": block_mapping holds block ", pairs[i],
                  " outside [0, ", caches[c].size(0), ")");
    }
    m[3 * num_caches + i] = pairs[i];
  }
  const c10::cuda::CUDAGuard guard(device);
  const auto meta_dev = meta.to(device);
  const int64_t* d = meta_dev.data_ptr<int64_t>();
  const CopyBlocksArgs args{d, d + num_caches, d + 2 * num_caches, d + 3 * num_caches};
  const dim3 grid(grid_size(num_pairs, op), static_cast<unsigned>(num_caches));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (aligned) copy_blocks_kernel<uint4><<<grid, 256, 0, stream>>>(args);
  else copy_blocks_kernel<unsigned char><<<grid, 256, 0, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One strided 2-D copy per pair: rows are the leading dimension, each row one block of bytes.
// Asynchronous on the current stream (pinned host memory makes it truly so).
void swap_blocks(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& block_mapping) {
  constexpr const char* op = "swap_blocks";
  TORCH_CHECK(src.is_cuda() || dst.is_cuda(), op, ": src or dst must be a CUDA tensor");
  TORCH_CHECK(src.dim() >= 2 && src.sizes().slice(2) == dst.sizes().slice(2) && src.dim() == dst.dim() &&
                        src.size(0) == dst.size(0),
                    op, ": src ", src.sizes(), " and dst ", dst.sizes(), " must match except in dim 1 (blocks)");
  check_dtype(dst, src.scalar_type(), op, "dst");
  TORCH_CHECK(contiguous_from(src, 2) && contiguous_from(dst, 2), op,
                    ": src and dst must be contiguous within a block");
  TORCH_CHECK(block_mapping.dim() == 2 && block_mapping.size(1) == 2, op,
                    ": block_mapping must be [num_pairs, 2], got ", block_mapping.sizes());
  const auto mapping = block_mapping.to(at::kCPU, at::kLong).contiguous();
  const int64_t num_pairs = mapping.size(0);
  if (num_pairs == 0 || src.size(0) == 0) return;
  const int64_t es = src.element_size();
  const int64_t block_bytes = src.numel() / (src.size(0) * std::max<int64_t>(src.size(1), 1)) * es;
  const c10::cuda::CUDAGuard guard(src.is_cuda() ? src.device() : dst.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* pairs = mapping.data_ptr<int64_t>();
  const char* src_base = static_cast<const char*>(src.data_ptr());
  char* dst_base = static_cast<char*>(dst.data_ptr());
  // A pitch must cover a row even where the leading dimension has one row.
  const int64_t src_pitch = src.size(0) == 1 ? block_bytes : src.stride(0) * es;
  const int64_t dst_pitch = dst.size(0) == 1 ? block_bytes : dst.stride(0) * es;
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t s = pairs[2 * i], d = pairs[2 * i + 1];
    TORCH_CHECK(s >= 0 && s < src.size(1), op, ": block_mapping[", i, "] source block ", s, " outside [0, ",
                src.size(1), ")");
    TORCH_CHECK(d >= 0 && d < dst.size(1), op, ": block_mapping[", i, "] destination block ", d, " outside [0, ",
                dst.size(1), ")");
    C10_CUDA_CHECK(cudaMemcpy2DAsync(dst_base + d * dst.stride(1) * es, dst_pitch,
                                     src_base + s * src.stride(1) * es, src_pitch, block_bytes,
                                     src.size(0), cudaMemcpyDefault, stream));
  }
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) {
  m.impl("reshape_and_cache", &fastpage::cuda::reshape_and_cache);
  m.impl("copy_blocks", &fastpage::cuda::copy_blocks);
  m.impl("swap_blocks", &fastpage::cuda::swap_blocks);
}
