// argmax_rows on the GPU: the greedy id of each logits row in one launch of several blocks per row.
// torch's argmax reduces a row in one block: a 1 x 128k row then takes ~27 us of latency on an H100
// while its 0.5 MB would take 0.2 us at bandwidth.
//
// Each block scans a chunk of its row and reduces it to one 64-bit number, (order key of the value,
// complement of the index): the largest such number is the row's first maximum. With one block per row
// that is the answer. Otherwise each block stores its number, takes a ticket from the row's counter,
// and the block that takes the last ticket merges the row's numbers and puts the counter back to zero,
// so the next launch (or the next replay of a CUDA graph holding this one) starts from zero again.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "common.cuh"
#include "order_key.cuh"

namespace fastpage::cuda {
namespace {

constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxBlocksPerSm = 8;  // 2048 resident threads per SM on sm_80 / sm_90
// Rows that can be split over several blocks: one ticket counter each. Only a launch with fewer rows
// than the GPU has block slots (8 x SMs) splits its rows, so this bound never limits the split.
constexpr int kMaxSplitRows = 4096;

// Zero when the module loads (one copy per device); every split launch leaves its rows' counters at zero.
// Two launches on one device must not overlap in time (the engine samples on one stream).
__device__ unsigned int argmax_row_tickets[kMaxSplitRows] = {};

// Order key of a logit for the maximum: NaN above every number (torch.argmax returns a row's first
// NaN), -0.0 the same as 0.0 (adding +0.0 turns -0.0 into +0.0).
__device__ __forceinline__ uint32_t argmax_key(float x) {
  return isnan(x) ? 0xffffffffu : order_key(__fadd_rn(x, 0.f));
}

// On equal keys the lower index has the larger complement: the maximum is the first maximum.
__device__ __forceinline__ unsigned long long pack_key_index(uint32_t key, uint32_t index) {
  return (static_cast<unsigned long long>(key) << 32) | ~index;
}

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ unsigned long long block_max(unsigned long long x) {
  __shared__ unsigned long long partial[kArgmaxThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = max(x, __shfl_xor_sync(kFullMask, x, offset));
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < kArgmaxThreads / 32 ? partial[lane] : 0ull;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = max(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

// Grid: rows x blocks_per_row blocks, block b scans [b * chunk, (b + 1) * chunk) of its row (chunk a
// multiple of VEC). Each thread visits its elements in increasing index order and keeps a strictly
// larger key only, so it holds its first maximum.
template <typename T, int VEC>
__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_rows_kernel(const T* __restrict__ logits, int64_t row_stride, int vocab, int chunk, int blocks_per_row,
                       unsigned long long* __restrict__ partials, int64_t* __restrict__ out) {
  const int64_t row = blockIdx.x / blocks_per_row;
  const int part = blockIdx.x % blocks_per_row;
  const T* x = logits + row * row_stride;
  const int begin = part * chunk, end = min(vocab, begin + chunk);
  const int vec_end = begin + (end - begin) / VEC * VEC;
  uint32_t best_key = 0, best_index = UINT_MAX;  // key 0 is below every logit's key
  const auto consider = [&](T value, int index) {
    const uint32_t key = argmax_key(to_float(value));
    if (key > best_key) best_key = key, best_index = index;
  };
  const auto consider_pack = [&](const Pack<T, VEC>& p, int index) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) consider(p.v[e], index + e);
  };
  constexpr int kUnroll = 4;  // loads in flight per thread
  constexpr int kStep = kArgmaxThreads * VEC;
  int i = begin + static_cast<int>(threadIdx.x) * VEC;
  for (; i + (kUnroll - 1) * kStep < vec_end; i += kUnroll * kStep) {
    Pack<T, VEC> p[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) p[u] = *reinterpret_cast<const Pack<T, VEC>*>(x + i + u * kStep);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) consider_pack(p[u], i + u * kStep);
  }
  for (; i < vec_end; i += kStep) consider_pack(*reinterpret_cast<const Pack<T, VEC>*>(x + i), i);
  // The row's last vocab % VEC elements (only the last block of a row has them).
  for (int t = vec_end + static_cast<int>(threadIdx.x); t < end; t += kArgmaxThreads) consider(x[t], t);
  const unsigned long long block_best = block_max(pack_key_index(best_key, best_index));
  if (blocks_per_row == 1) {
    if (threadIdx.x == 0) out[row] = static_cast<int64_t>(~static_cast<uint32_t>(block_best));
    return;
  }
  __shared__ bool merges;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_best;
    __threadfence();  // the partial is visible before the ticket is
    merges = atomicAdd(&argmax_row_tickets[row], 1u) == static_cast<unsigned>(blocks_per_row - 1);
  }
  __syncthreads();
  if (!merges) return;
  __threadfence();
  unsigned long long best = 0;
  for (int p = threadIdx.x; p < blocks_per_row; p += kArgmaxThreads) {
    best = max(best, __ldcg(&partials[row * blocks_per_row + p]));  // from L2: other SMs wrote them
  }
  best = block_max(best);
  if (threadIdx.x == 0) {
    out[row] = static_cast<int64_t>(~static_cast<uint32_t>(best));
    argmax_row_tickets[row] = 0;
  }
}

at::Tensor argmax_rows(const at::Tensor& logits) {
  constexpr const char* op = "argmax_rows";
  check_cuda(logits, op, "logits");
  check_dim(logits, 2, op, "logits");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": logits must be float32, bfloat16 or float16, got ", dtype);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab > 0 && vocab < INT_MAX, op, ": logits vocab must be in [1, 2^31 - 1), got ", vocab);
  TORCH_CHECK(vocab == 1 || logits.stride(1) == 1, op, ": logits rows must be contiguous");
  auto out = at::empty({rows}, logits.options().dtype(at::kLong));
  if (rows == 0) return out;
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, logits.get_device()));
  dispatch_float_types(logits.scalar_type(), op, [&]<typename T>() {
    constexpr int kVec = Vec16<T>::kSize;
    const bool vec_ok = is_aligned16(logits.data_ptr()) &&
                        (rows == 1 || (logits.stride(0) * static_cast<int64_t>(sizeof(T))) % 16 == 0);
    const int vec = vec_ok ? kVec : 1;
    // Enough blocks to fill the GPU, none with less than one vector per thread.
    const int64_t target_blocks = static_cast<int64_t>(sms) * kArgmaxBlocksPerSm;
    const int64_t max_parts = (vocab + kArgmaxThreads * vec - 1) / (kArgmaxThreads * vec);
    int64_t blocks_per_row =
        rows > kMaxSplitRows ? 1 : std::clamp<int64_t>((target_blocks + rows - 1) / rows, 1, max_parts);
    const int64_t chunk = ((vocab + blocks_per_row - 1) / blocks_per_row + vec - 1) / vec * vec;
    blocks_per_row = (vocab + chunk - 1) / chunk;  // no empty block after rounding chunk up
    const at::Tensor partials =
        blocks_per_row > 1 ? at::empty({rows * blocks_per_row}, logits.options().dtype(at::kLong)) : at::Tensor();
    auto launch = [&](auto kernel) {
      kernel<<<grid_size(rows * blocks_per_row, op), kArgmaxThreads, 0, stream>>>(
          static_cast<const T*>(logits.data_ptr()), logits.stride(0), static_cast<int>(vocab),
          static_cast<int>(chunk), static_cast<int>(blocks_per_row),
          partials.defined() ? static_cast<unsigned long long*>(partials.data_ptr()) : nullptr,
          out.data_ptr<int64_t>());
    };
    if (vec_ok) launch(argmax_rows_kernel<T, kVec>);
    else launch(argmax_rows_kernel<T, 1>);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("argmax_rows", &fastpage::cuda::argmax_rows); }
