// CUDA launcher for paged_attention: checks the inputs, picks the tensor-core kernel (decode or
// prefill shape, with a split count that fills the GPU; the kernel merges the splits itself) or the
// fallback kernel.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "attention_kernels.cuh"

namespace fastpage::cuda {
namespace {

constexpr const char* kOp = "paged_attention";

void check_inputs(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                  const at::Tensor& value_cache, const at::Tensor& query_start_loc, const at::Tensor& context_lens,
                  const at::Tensor& block_tables, double scale, int64_t max_query_len, int64_t max_context_len) {
  for (auto [t, name] : {std::pair{&out, "out"}, {&query, "query"}, {&key_cache, "key_cache"},
                         {&value_cache, "value_cache"}, {&query_start_loc, "query_start_loc"},
                         {&context_lens, "context_lens"}, {&block_tables, "block_tables"}}) {
    check_cuda(*t, kOp, name);
  }
  for (auto [t, name] : {std::pair{&out, "out"}, {&key_cache, "key_cache"}, {&value_cache, "value_cache"},
                         {&query_start_loc, "query_start_loc"}, {&context_lens, "context_lens"},
                         {&block_tables, "block_tables"}}) {
    check_same_device(query, *t, kOp, name);
  }
  check_dim(query, 3, kOp, "query");
  check_dim(key_cache, 4, kOp, "key_cache");
  check_dim(query_start_loc, 1, kOp, "query_start_loc");
  check_dim(context_lens, 1, kOp, "context_lens");
  check_dim(block_tables, 2, kOp, "block_tables");
  TORCH_CHECK(out.sizes() == query.sizes(), kOp, ": out shape ", out.sizes(), " != query shape ",
                    query.sizes());
  check_dtype(out, query.scalar_type(), kOp, "out");
  check_kv_cache_dtype(key_cache, value_cache, query.scalar_type(), kOp);
  for (auto [t, name] : {std::pair{&query_start_loc, "query_start_loc"}, {&context_lens, "context_lens"},
                         {&block_tables, "block_tables"}}) {
    TORCH_CHECK(t->scalar_type() == at::kInt, kOp, ": ", name, " must be int32, got ", t->scalar_type());
  }
  TORCH_CHECK(query.stride(2) == 1 && out.stride(2) == 1 && key_cache.stride(3) == 1, kOp,
                    ": query, out and key_cache must be contiguous in head_dim");
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes() && value_cache.strides() == key_cache.strides(), kOp,
                    ": value_cache must have key_cache's shape and strides");
  const int64_t num_heads = query.size(1), num_kv_heads = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == query.size(2), kOp, ": key_cache head_dim ", key_cache.size(3),
                    " != query head_dim ", query.size(2));
  TORCH_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0, kOp, ": num_heads ", num_heads,
                    " must be a multiple of num_kv_heads ", num_kv_heads);
  const int64_t num_seqs = context_lens.size(0);
  TORCH_CHECK(query_start_loc.size(0) == num_seqs + 1, kOp, ": query_start_loc must have num_seqs + 1 = ",
                    num_seqs + 1, " entries, got ", query_start_loc.size(0));
  TORCH_CHECK(block_tables.size(0) == num_seqs && block_tables.stride(1) == 1, kOp,
                    ": block_tables must be [num_seqs, max_blocks] with contiguous rows");
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite");
  TORCH_CHECK(max_query_len >= 0 && max_context_len >= 0, kOp,
                    ": max_query_len and max_context_len must be >= 0");
  TORCH_CHECK(max_context_len <= block_tables.size(1) * key_cache.size(1), kOp, ": max_context_len ",
                    max_context_len, " exceeds the block table's capacity ", block_tables.size(1) * key_cache.size(1));
}

AttentionParams make_params(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& query_start_loc,
                            const at::Tensor& context_lens, const at::Tensor& block_tables, double scale) {
  AttentionParams p{};
  p.query = query.data_ptr();
  p.out = out.data_ptr();
  p.key_cache = key_cache.data_ptr();
  p.value_cache = value_cache.data_ptr();
  p.query_start_loc = query_start_loc.data_ptr<int>();
  p.context_lens = context_lens.data_ptr<int>();
  p.block_tables = block_tables.data_ptr<int>();
  p.q_token_stride = query.stride(0);
  p.q_head_stride = query.stride(1);
  p.o_token_stride = out.stride(0);
  p.o_head_stride = out.stride(1);
  p.cache_block_stride = key_cache.stride(0);
  p.cache_slot_stride = key_cache.stride(1);
  p.cache_head_stride = key_cache.stride(2);
  p.block_table_stride = block_tables.stride(0);
  p.num_seqs = static_cast<int>(context_lens.size(0));
  p.num_tokens = static_cast<int>(query.size(0));
  p.num_heads = static_cast<int>(query.size(1));
  p.num_kv_heads = static_cast<int>(key_cache.size(2));
  p.group_size = p.num_heads / p.num_kv_heads;
  p.block_size = static_cast<int>(key_cache.size(1));
  p.block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __builtin_ctz(static_cast<unsigned>(p.block_size)) : -1;
  p.head_dim = static_cast<int>(query.size(2));
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);  // log2(e)
  p.num_splits = 1;
  return p;
}

// The tensor-core kernel needs 4-byte query/out rows and 16-byte cache rows (cp.async), whatever the
// cache's element size.
bool mma_supported(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                   const at::Tensor& value_cache) {
  const int64_t head_dim = query.size(2);
  const bool half_type = query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
  const bool even = query.stride(0) % 2 == 0 && query.stride(1) % 2 == 0 &&
                    reinterpret_cast<uintptr_t>(query.data_ptr()) % 4 == 0;
  const int64_t es = key_cache.element_size();
  const bool cache16 = (key_cache.stride(0) * es) % 16 == 0 && (key_cache.stride(1) * es) % 16 == 0 &&
                       (key_cache.stride(2) * es) % 16 == 0 && is_aligned16(key_cache.data_ptr()) &&
                       is_aligned16(value_cache.data_ptr());
  // Offsets inside a cache block (slot and head) are computed in 32 bits.
  const bool block_fits_int32 =
      key_cache.size(1) * key_cache.stride(1) + key_cache.size(2) * key_cache.stride(2) <= INT32_MAX;
  return half_type && (head_dim == 64 || head_dim == 128) && even && cache16 && block_fits_int32;
}

// The current device's split tickets (a __device__ array: one per device, no allocation).
int* split_tickets() {
  void* tickets = nullptr;
  C10_CUDA_CHECK(cudaGetSymbolAddress(&tickets, g_split_tickets));
  return static_cast<int*>(tickets);
}

template <typename T, typename C, int HEAD_DIM, int WARPS_M, int WARPS_N, int BLOCK_N, int M_FRAGS>
void launch_mma(AttentionParams p, const at::Tensor& query, int64_t max_query_len, int64_t max_context_len,
                cudaStream_t stream) {
  using Cfg = MmaConfig<HEAD_DIM, WARPS_M, WARPS_N, BLOCK_N, sizeof(C), M_FRAGS>;
  auto kernel = paged_attention_mma_kernel<T, C, HEAD_DIM, WARPS_M, WARPS_N, BLOCK_N, M_FRAGS>;
  static const int blocks_per_sm = [&] {  // once per kernel: raise the smem limit, ask the occupancy
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Cfg::kThreads, Cfg::kSmemBytes));
    return std::max(n, 1);
  }();
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, query.get_device()));

  p.num_m_tiles = static_cast<int>(std::max<int64_t>((max_query_len * p.group_size + Cfg::kRows - 1) / Cfg::kRows, 1));
  const int64_t base_blocks = static_cast<int64_t>(p.num_seqs) * p.num_m_tiles * p.num_kv_heads;
  const int64_t max_iters = std::max<int64_t>((max_context_len + Cfg::kTokensPerIter - 1) / Cfg::kTokensPerIter, 1);
  const int64_t target_blocks = 4LL * num_sms * blocks_per_sm;
  // Split long contexts until about four waves of blocks are in flight, keeping >= 4 iterations a split
  // while the unsplit grid fills the GPU. A smaller grid (decode at batch 1 to ~16) splits down to one
  // iteration a split: its time is the latency of the sequential walk over the context, not bandwidth.
  // (A grid too large for the split tickets never splits: it is far above the target anyway.)
  const int64_t min_iters_per_split = base_blocks >= num_sms ? 4 : 1;
  const int64_t max_splits =
      base_blocks > kMaxSplitTiles ? 1 : std::clamp<int64_t>(max_iters / min_iters_per_split, 1, kMaxSplits);
  const int64_t splits = std::clamp<int64_t>((target_blocks + base_blocks - 1) / base_blocks, 1, max_splits);
  p.iters_per_split = static_cast<int>((max_iters + splits - 1) / splits);
  p.num_splits = static_cast<int>((max_iters + p.iters_per_split - 1) / p.iters_per_split);
  at::Tensor partial_out, partial_lse;
  if (p.num_splits > 1) {
    const auto options = query.options().dtype(at::kFloat);
    partial_out = at::empty({p.num_splits, p.num_tokens, p.num_heads, HEAD_DIM}, options);
    partial_lse = at::empty({p.num_splits, p.num_tokens, p.num_heads}, options);
    p.partial_out = partial_out.data_ptr<float>();
    p.partial_lse = partial_lse.data_ptr<float>();
    p.split_tickets = split_tickets();
  }
  TORCH_CHECK(base_blocks <= 0x7fffffff && p.num_kv_heads <= 65535, kOp, ": batch too large for one launch");
  const dim3 grid(static_cast<unsigned>(p.num_seqs * p.num_m_tiles), p.num_kv_heads, p.num_splits);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename C, int HEAD_DIM>
void launch_mma_shape(const AttentionParams& p, const at::Tensor& query, int64_t max_query_len,
                      int64_t max_context_len, cudaStream_t stream) {
  if (max_query_len <= 1) {
    // Decode: one row tile (the group's query heads), four warps over the context.
    return launch_mma<T, C, HEAD_DIM, 1, 4, 16, 1>(p, query, max_query_len, max_context_len, stream);
  }
  // Prefill: four warps of 32 rows each over 32-key tiles (measured on the H100 against 64-key tiles,
  // 8 warps x 16 rows and 4 x 16 rows: bench/NOTES.md, "Session 4: attention kernel").
  return launch_mma<T, C, HEAD_DIM, 4, 1, 32, 2>(p, query, max_query_len, max_context_len, stream);
}

void paged_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& query_start_loc, const at::Tensor& context_lens,
                     const at::Tensor& block_tables, double scale, int64_t max_query_len, int64_t max_context_len) {
  check_inputs(out, query, key_cache, value_cache, query_start_loc, context_lens, block_tables, scale, max_query_len,
               max_context_len);
  if (query.size(0) == 0 || context_lens.size(0) == 0) return;
  TORCH_CHECK(query.size(0) <= 0x7fffffff && query.size(1) <= 65535, kOp, ": query too large");
  const c10::cuda::CUDAGuard guard(query.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const AttentionParams p =
      make_params(out, query, key_cache, value_cache, query_start_loc, context_lens, block_tables, scale);
  dispatch_float_types(query.scalar_type(), kOp, [&]<typename T>() {
    dispatch_cache_types<T>(key_cache.scalar_type(), kOp, [&]<typename C>() {
      if constexpr (!std::is_same_v<T, float>) {
        if (mma_supported(out, query, key_cache, value_cache)) {
          if (p.head_dim == 64) launch_mma_shape<T, C, 64>(p, query, max_query_len, max_context_len, stream);
          else launch_mma_shape<T, C, 128>(p, query, max_query_len, max_context_len, stream);
          return;
        }
      }
      TORCH_CHECK(p.head_dim <= 256, kOp, ": head_dim ", p.head_dim, " > 256 is not supported");
      constexpr int kWarps = 4;
      const int64_t items = static_cast<int64_t>(p.num_tokens) * p.num_heads;
      paged_attention_fallback_kernel<T, C>
          <<<grid_size((items + kWarps - 1) / kWarps, kOp), 32 * kWarps, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("paged_attention", &fastpage::cuda::paged_attention); }
