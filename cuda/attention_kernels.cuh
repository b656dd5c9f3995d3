// Paged attention over the KV cache: each sequence's new tokens attend causally to its whole context.
//
// Main kernel (bf16/fp16, head_dim 64 or 128): tensor cores (mma.sync m16n8k16, fp32 accumulation)
// with an online softmax. A thread block owns one (sequence, KV head, row tile, split): its query rows
// are the (new token, query head) pairs of the KV head's group, row r = token r / G, head r % G, so
// every query head sharing a KV head is served by one read of K/V (GQA). Warps are arranged
// WARPS_M x WARPS_N: WARPS_M row tiles of 16 * M_FRAGS rows; WARPS_N warps take turns over the KV tiles
// and are merged at the end (decode: 1 x 4 warps of 16 rows; prefill: 4 x 1 warps of 32 rows, so each
// K/V fragment read from shared memory feeds two MMAs). K/V tiles stream through a cp.async pipeline
// (the next tiles load while the current ones are used); tiles past a row tile's last row are never
// loaded and only tiles crossing its first row are masked. Long contexts split over several
// blocks (grid.z). Each split writes its partial output and log-sum-exp; the last split of a
// (sequence, KV head, row tile) to finish (an atomic ticket per tile) merges them and writes the
// output, so no second kernel is launched. The tickets live in a __device__ array (zero when the
// module loads, no allocation: safe in CUDA-graph capture) and the merging block puts its ticket
// back to 0, so every launch and graph replay starts clean. Two splitting launches must therefore not
// run concurrently on one device (fastpage runs its forward passes on one stream).
//
// Fallback kernel (any float type, head_dim <= 256): one warp per (token, query head), for float32
// and odd head sizes.
//
// The cache holds the query's type or float8_e4m3fn (kv_cache_dtype="fp8", scale 1.0). With fp8, the
// tensor-core kernel streams 16-byte chunks of 16 e4m3 values into the pipeline stages (half the
// bytes of bf16) and ldmatrix reads the fp8 rows as if they held 16-bit pairs; each register then
// holds four e4m3 values, converted in registers (hardware cvt e4m3x2 -> f16x2). No 16-bit copy of
// the tiles is made (that pass made shared memory, not HBM, the limit). The four values a thread
// receives are not in the MMA's operand order, so the fp8 path permutes head dimensions instead:
// QK^T sums over the dimensions in a permuted order (the query fragment is loaded in the same
// order), and in P @ V the accumulator columns stand for permuted dimensions, put back in order
// when the output is written (the comments at the fp8 loads give the mapping).
#pragma once
#include "common.cuh"

#include <cfloat>

namespace fastpage::cuda {

struct AttentionParams {
  const void* query;  // [num_tokens, num_heads, head_dim]
  void* out;          // [num_tokens, num_heads, head_dim]
  const void* key_cache;
  const void* value_cache;      // same strides as key_cache
  const int* query_start_loc;   // [num_seqs + 1]
  const int* context_lens;      // [num_seqs]
  const int* block_tables;      // [num_seqs, block_table_stride]
  float* partial_out;           // [num_splits, num_tokens, num_heads, head_dim] (num_splits > 1)
  float* partial_lse;           // [num_splits, num_tokens, num_heads], log2 domain
  int* split_tickets;           // one per (row tile, KV head) block of a split launch, zero between launches
  int64_t q_token_stride, q_head_stride, o_token_stride, o_head_stride;
  int64_t cache_block_stride, cache_slot_stride, cache_head_stride;
  int64_t block_table_stride;
  int num_seqs, num_tokens, num_heads, num_kv_heads, group_size, block_size, head_dim;
  int block_shift;  // log2(block_size) when it is a power of two, else -1 (then a division)
  int num_m_tiles, num_splits, iters_per_split;
  float scale_log2;  // softmax scale * log2(e): scores live in the log2 domain (exp2f)
};

// A split launch's grid has at most kMaxSplits splits and kMaxSplitTiles blocks per split (the launcher
// splits only grids smaller than a few waves, far below this bound).
constexpr int kMaxSplits = 32;
constexpr int kMaxSplitTiles = 1 << 15;
__device__ int g_split_tickets[kMaxSplitTiles];

// ---- PTX wrappers -------------------------------------------------------------------------------

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8], fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Two T packed in 32 bits -> float2.
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&x));
  }
}

// 2^x by the hardware's approximation with denormal results flushed to zero (exp2f adds a denormal fix-up
// around it: 3 more instructions per softmax weight; weights below 2^-126 of the row's largest do not
// matter to the output).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// exp2 of x - m where m may be -inf (a row with no visible key yet): then every term is zero.
__device__ __forceinline__ float safe_max(float m) { return m == -INFINITY ? 0.f : m; }

// ---- split merge -----------------------------------------------------------------------------------

// Called by every thread of a split block after it wrote its partial results: true in the block that
// finishes last among the tile's splits (which then resets the tile's ticket for the next launch).
__device__ __forceinline__ bool is_last_split(const AttentionParams& p, int num_active_splits) {
  __shared__ int last;
  __threadfence();  // this thread's partial results are visible device-wide before the ticket is taken
  __syncthreads();
  if (threadIdx.x == 0) {
    int* ticket = p.split_tickets + blockIdx.y * gridDim.x + blockIdx.x;
    last = atomicAdd(ticket, 1) == num_active_splits - 1;
    if (last) *ticket = 0;  // the other splits are done with it: no one touches it again in this launch
    __threadfence();        // the other splits' partial results are read after their tickets
  }
  __syncthreads();
  return last;
}

// The last split block of a tile combines the splits of its rows: out = sum_s w_s O_s with
// w_s = 2^(lse_s - max) / sum_s 2^(lse_s - max). `scratch` holds kMaxSplits floats per row.
template <typename T, int HEAD_DIM, int THREADS>
__device__ void merge_splits(const AttentionParams& p, float* scratch, int q_start, int kv_head, int m0,
                             int num_tile_rows, int num_splits) {
  const int G = p.group_size;
  const int64_t split_stride = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  auto entry_of = [&](int row) {  // (token, head) index of the tile's row `row`
    const int r = m0 + row;
    return static_cast<int64_t>(q_start + r / G) * p.num_heads + kv_head * G + r % G;
  };
  // scratch may alias the epilogue's shared memory: is_last_split's barrier follows its last read.
  for (int i = threadIdx.x; i < num_tile_rows * kMaxSplits; i += THREADS) {
    const int row = i / kMaxSplits, s = i % kMaxSplits;
    scratch[i] = s < num_splits ? __ldcg(p.partial_lse + s * split_stride + entry_of(row)) : -INFINITY;
  }
  __syncthreads();
  for (int row = threadIdx.x; row < num_tile_rows; row += THREADS) {
    float* w = scratch + row * kMaxSplits;
    float m = -INFINITY;
    for (int s = 0; s < num_splits; ++s) m = fmaxf(m, w[s]);
    float sum = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      w[s] = exp2f(w[s] - safe_max(m));
      sum += w[s];
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int s = 0; s < num_splits; ++s) w[s] *= inv;
  }
  __syncthreads();
  constexpr int kQuads = HEAD_DIM / 4;
  for (int i = threadIdx.x; i < num_tile_rows * kQuads; i += THREADS) {
    const int row = i / kQuads, col = (i % kQuads) * 4;
    const int64_t entry = entry_of(row);
    const float* w = scratch + row * kMaxSplits;
    const float4* src = reinterpret_cast<const float4*>(p.partial_out + entry * HEAD_DIM + col);
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int s = 0; s < num_splits; ++s) {
      const float4 v = __ldcg(src + s * split_stride * (HEAD_DIM / 4));
      acc.x += w[s] * v.x;
      acc.y += w[s] * v.y;
      acc.z += w[s] * v.z;
      acc.w += w[s] * v.w;
    }
    const int r = m0 + row;
    T* out = static_cast<T*>(p.out) + (q_start + r / G) * p.o_token_stride + (kv_head * G + r % G) * p.o_head_stride + col;
    out[0] = from_float<T>(acc.x);
    out[1] = from_float<T>(acc.y);
    out[2] = from_float<T>(acc.z);
    out[3] = from_float<T>(acc.w);
  }
}

// ---- tensor-core kernel ---------------------------------------------------------------------------

// CACHE_BYTES: bytes of a cache element, 2 (the query's 16-bit type) or 1 (float8_e4m3fn).
// M_FRAGS: 16-row MMA blocks per warp. With 2, every K and V fragment a warp reads from shared memory
// feeds two MMAs (half the ldmatrix traffic per MMA); the warp's query rows then live in shared memory
// (read per iteration) because 32 rows of query fragments, O and S do not fit in 255 registers.
template <int HEAD_DIM, int WARPS_M, int WARPS_N, int BLOCK_N, int CACHE_BYTES, int M_FRAGS>
struct MmaConfig {
  static_assert((WARPS_M * WARPS_N == 4 || WARPS_M * WARPS_N == 8) && HEAD_DIM % 16 == 0 && BLOCK_N % 16 == 0);
  static_assert(M_FRAGS == 1 || M_FRAGS == 2);
  static constexpr bool kFp8 = CACHE_BYTES == 1;
  static constexpr bool kQInSmem = M_FRAGS > 1;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWarpRows = 16 * M_FRAGS;
  static constexpr int kRows = kWarpRows * WARPS_M;  // query rows per block
  static constexpr int kLds = HEAD_DIM + 8;    // 16-bit tile row pitch (elements): conflict-free ldmatrix
  static constexpr int kTokensPerIter = BLOCK_N * WARPS_N;
  // Stages hold cache elements: rows padded by 16 bytes, so ldmatrix's 8 rows hit distinct banks.
  static constexpr int kCacheLds = kFp8 ? HEAD_DIM + 16 : kLds;
  static constexpr int kCacheTileElems = BLOCK_N * kCacheLds;
  static constexpr int kStageElems = 2 * WARPS_N * kCacheTileElems;             // K and V tiles of one stage
  // cp.async pipeline depth. An fp8 stage carries half the bytes of a 16-bit one, so small fp8 stages
  // (<= 20 KB) keep three in flight instead of one: more KV bytes in flight per SM, which the stream's
  // bandwidth depends on (no 16-bit copy of the tiles is made). The same holds for the small 16-bit
  // stages of 32-key tiles with two row blocks per warp (the prefill shape whose blocks fill the SM).
  static constexpr bool kSmallStage = kStageElems * CACHE_BYTES <= 20 * 1024;
  static constexpr int kStages = kSmallStage && (kFp8 || M_FRAGS > 1) ? 4 : 2;
  static constexpr int kStagingBytes = kStages * kStageElems * CACHE_BYTES;
  static constexpr int kQBytes = kQInSmem ? kRows * kLds * 2 : 0;  // the query tile after the stages
  static constexpr int kTileBytes = kStagingBytes + kQBytes;
  static constexpr int kEpilogueBytes = WARPS_N * kRows * (HEAD_DIM + 2) * 4;  // O, m, l per warp row
  static constexpr int kSmemBytes = kTileBytes > kEpilogueBytes ? kTileBytes : kEpilogueBytes;
  static_assert(kStagingBytes % 16 == 0);
};

// How an fp8 cache's values meet the MMAs: Q K^T runs in the query's type (K converted e4m3x2 -> f16x2,
// and on to bf16x2 for a bf16 query), P @ V in f16 whatever the query type: e4m3 values are exact in
// f16, P in [0, 1] keeps 3 more mantissa bits than in bf16, and one cvt per pair of V values is all the
// conversion P @ V needs. (Measured on the H100 against Q K^T in f16 with a per-warp query scale and
// against both MMAs in the query's type: bench/NOTES.md, session 4.)
template <typename T, typename C, int HEAD_DIM, int WARPS_M, int WARPS_N, int BLOCK_N, int M_FRAGS>
__global__ void __launch_bounds__(32 * WARPS_M * WARPS_N)
    paged_attention_mma_kernel(const AttentionParams p) {
  using Cfg = MmaConfig<HEAD_DIM, WARPS_M, WARPS_N, BLOCK_N, sizeof(C), M_FRAGS>;
  static_assert(std::is_same_v<C, T> || std::is_same_v<C, __nv_fp8_e4m3>);
  // The MMA operand type of P @ V (Q K^T runs in T).
  using PvT = std::conditional_t<Cfg::kFp8, __half, T>;
  constexpr int kRows = Cfg::kRows, kLds = Cfg::kLds, MF = M_FRAGS;
  constexpr int kDTiles = HEAD_DIM / 8, kNTiles = BLOCK_N / 8;
  extern __shared__ uint4 smem_raw[];
  C* staging = reinterpret_cast<C*>(smem_raw);

  // A sequence's last row tiles see the most keys (causal): they start first, so the grid's tail is short.
  const int seq = blockIdx.x / p.num_m_tiles, m_tile = p.num_m_tiles - 1 - blockIdx.x % p.num_m_tiles;
  const int kv_head = blockIdx.y, split = blockIdx.z;
  const int q_start = p.query_start_loc[seq];
  const int q_len = p.query_start_loc[seq + 1] - q_start;
  const int G = p.group_size;
  const int num_rows = q_len * G;
  const int m0 = m_tile * kRows;
  if (m0 >= num_rows) return;  // whole block: this sequence has fewer new tokens
  const int prefix = p.context_lens[seq] - q_len;  // position of the first new token
  const int last_row = min(m0 + kRows, num_rows) - 1;
  const int kv_end = max(prefix + last_row / G + 1, 0);  // keys this block can see
  // Keys up to the block's first row are visible to every row: tiles below it need no causal mask.
  const int unmasked_end = prefix + m0 / G + 1;
  const int num_iters = (kv_end + Cfg::kTokensPerIter - 1) / Cfg::kTokensPerIter;
  // Splits past this tile's visible keys have nothing to do (a launch sized for a longer context, as a
  // captured CUDA graph is); they take no ticket. With one split left the block writes the output.
  // (Clamped to the grid so that a max_context_len below a real context cannot strand a ticket.)
  const int num_active_splits =
      min((num_iters + p.iters_per_split - 1) / p.iters_per_split, static_cast<int>(gridDim.z));
  if (split >= num_active_splits) return;
  const int it_begin = split * p.iters_per_split;
  const int it_end = min(num_iters, it_begin + p.iters_per_split);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp % WARPS_M, wn = warp / WARPS_M;
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = wm * Cfg::kWarpRows;  // this warp's first row in the block

  // Row r of the block: token r / G of the tile's tokens, query head r % G of the KV head's group.
  auto query_row = [&](int r) -> const T* {
    return static_cast<const T*>(p.query) + (q_start + r / G) * p.q_token_stride + (kv_head * G + r % G) * p.q_head_stride;
  };
  // With an fp8 cache, MMA k-columns (2t, 2t+1) and (2t+8, 2t+9) of each 16 stand for dimensions 4t..4t+1
  // and 4t+2..4t+3 (the order in which K's values arrive, see the fp8 loads): the query is loaded in it.
  auto k_column = [](int dim_pair_start) {  // dim_pair_start even, within a 16-dim chunk: its k-column
    return Cfg::kFp8 ? 2 * (dim_pair_start / 4) + 8 * ((dim_pair_start / 2) % 2) : dim_pair_start;
  };

  // This thread's rows (g and g + 8 of each 16-row MMA block) and their query positions (-1: padding).
  int row_pos[MF][2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = m0 + warp_row0 + mf * 16 + g + 8 * h;
      row_pos[mf][h] = r < num_rows ? prefix + r / G : -1;
    }
  }
  // The query's A fragments: in registers (M_FRAGS 1) or as a [kRows][kLds] tile in shared memory after
  // the stages, k-columns in MMA order (read with ldmatrix every iteration).
  constexpr int kQRegFrags = Cfg::kQInSmem ? 1 : HEAD_DIM / 16;
  uint32_t qf[kQRegFrags][4];
  T* q_smem = reinterpret_cast<T*>(reinterpret_cast<char*>(smem_raw) + Cfg::kStagingBytes);
  // With two row blocks per warp the query goes to shared memory, 8 threads a row, each loading 4-byte
  // pairs 2j, 2j + 16, ... of it (j = tid % 8): the row's address (a runtime division by G) is computed
  // once per row. Called after the first K/V loads are issued, so their latency overlaps.
  auto stage_query = [&] {
    constexpr int kThreadsPerRow = 8, kPairsPerThread = HEAD_DIM / (2 * kThreadsPerRow);
    const int j = tid % kThreadsPerRow, col = k_column(2 * j);
    for (int row = tid / kThreadsPerRow; row < kRows; row += Cfg::kThreads / kThreadsPerRow) {
      const T* src = m0 + row < num_rows ? query_row(m0 + row) + 2 * j : nullptr;
      T* dst = q_smem + row * kLds + col;
#pragma unroll
      for (int k = 0; k < kPairsPerThread; ++k) {
        *reinterpret_cast<uint32_t*>(dst + 16 * k) = src ? *reinterpret_cast<const uint32_t*>(src + 16 * k) : 0u;
      }
    }
  };
  if constexpr (!Cfg::kQInSmem) {
    const T* q_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) q_row[h] = row_pos[0][h] >= 0 ? query_row(m0 + warp_row0 + g + 8 * h) : nullptr;
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // a0: (g, 2t) a1: (g+8, 2t) a2: (g, 2t+8) a3: (g+8, 2t+8)
        const T* src = q_row[i % 2];
        const int col = Cfg::kFp8 ? 4 * t + 2 * (i / 2) : 2 * t + 8 * (i / 2);  // the inverse of k_column
        qf[kk][i] = src ? *reinterpret_cast<const uint32_t*>(src + kk * 16 + col) : 0u;
      }
    }
  }

  float o[MF][kDTiles][4];
  float row_max[MF][2], row_sum[MF][2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) o[mf][d][0] = o[mf][d][1] = o[mf][d][2] = o[mf][d][3] = 0.f;
    row_max[mf][0] = row_max[mf][1] = -INFINITY;
    row_sum[mf][0] = row_sum[mf][1] = 0.f;
  }

  const C* k_cache = static_cast<const C*>(p.key_cache);
  const C* v_cache = static_cast<const C*>(p.value_cache);
  const int* block_table = p.block_tables + seq * p.block_table_stride;
  // Iteration `it` covers tokens [it * kTokensPerIter, +kTokensPerIter): one BLOCK_N tile per warp
  // column, K and V, loaded by the whole block into pipeline stage `stage` (positions past kv_end
  // are zero-filled, so no stale or poisoned value reaches P @ V). A thread loads the same 16-byte
  // column of kChunks / kThreads rows; offsets inside a cache block fit 32 bits (mma_supported).
  constexpr int kElemsPerChunk = 16 / sizeof(C);  // 16-byte chunks: 8 bf16/fp16 or 16 e4m3
  constexpr int kChunksPerRow = HEAD_DIM / kElemsPerChunk;
  constexpr int kRowsPerPass = Cfg::kThreads / kChunksPerRow;
  constexpr int kPasses = WARPS_N * BLOCK_N / kRowsPerPass;
  static_assert(Cfg::kThreads % kChunksPerRow == 0 && (WARPS_N * BLOCK_N) % kRowsPerPass == 0);
  const int load_chunk = tid % kChunksPerRow, load_row = tid / kChunksPerRow;
  const int in_block_offset = kv_head * static_cast<int>(p.cache_head_stride) + load_chunk * kElemsPerChunk;
  const int slot_stride = static_cast<int>(p.cache_slot_stride);
  auto load_iteration = [&](int it, int stage) {
    C* k_base = staging + stage * Cfg::kStageElems + load_row * Cfg::kCacheLds + load_chunk * kElemsPerChunk;
    C* v_base = k_base + WARPS_N * Cfg::kCacheTileElems;
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      const int row = load_row + pass * kRowsPerPass;  // row = w * BLOCK_N + token
      const int pos = it * Cfg::kTokensPerIter + row;
      const bool valid = pos < kv_end;
      int64_t offset = 0;
      if (valid) {
        const int block = p.block_shift >= 0 ? pos >> p.block_shift : pos / p.block_size;
        offset = static_cast<int64_t>(block_table[block]) * p.cache_block_stride +
                 ((pos - block * p.block_size) * slot_stride + in_block_offset);
      }
      cp_async_16(k_base + pass * kRowsPerPass * Cfg::kCacheLds, k_cache + offset, valid);
      cp_async_16(v_base + pass * kRowsPerPass * Cfg::kCacheLds, v_cache + offset, valid);
    }
  };
  constexpr int kStages = Cfg::kStages;
  for (int i = 0; i < kStages - 1; ++i) {
    if (it_begin + i < it_end) load_iteration(it_begin + i, i);
    cp_async_commit();
  }
  if constexpr (Cfg::kQInSmem) stage_query();  // the main loop's first barrier orders it before the reads
  for (int it = it_begin; it < it_end; ++it) {
    const int stage = (it - it_begin) % kStages;
    // Prefetch kStages - 1 iterations ahead into the stage the previous iteration used, then wait for
    // this one (every group is committed even when empty, so the count of groups in flight is uniform).
    const int ahead = it + kStages - 1;
    if (ahead < it_end) load_iteration(ahead, (ahead - it_begin) % kStages);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    // This warp's K tile and V tile, [BLOCK_N][kCacheLds] cache elements each.
    const C* k_tile = staging + stage * Cfg::kStageElems + wn * Cfg::kCacheTileElems;
    const C* v_tile = k_tile + WARPS_N * Cfg::kCacheTileElems;
    const int kv0 = it * Cfg::kTokensPerIter + wn * BLOCK_N;  // this warp's tile
    const bool active = kv0 < kv_end;
    float s[MF][kNTiles][4];
    if (active) {
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) s[mf][n][0] = s[mf][n][1] = s[mf][n][2] = s[mf][n][3] = 0.f;
      }
      // The query's A fragment of k-step kk (16 dims) for row block mf.
      auto load_q = [&](int kk, int mf, uint32_t(&a)[4]) {
        if constexpr (Cfg::kQInSmem) {
          ldmatrix_x4(a, q_smem + (warp_row0 + mf * 16 + lane % 16) * kLds + kk * 16 + (lane / 16) * 8);
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = qf[kk][i];
        }
      };
      if constexpr (Cfg::kFp8) {
        // Matrix i of the x4 load: tokens (i % 2) * 8 + 0..7 of the 16, dims 32 * kk2 + (i / 2) * 16 + 0..15
        // read as 8 16-bit pairs: the thread gets 4 e4m3 values, dims 4t..4t+3 of token g.
#pragma unroll
        for (int kk2 = 0; kk2 < HEAD_DIM / 32; ++kk2) {
          uint32_t qa[MF][2][4];
#pragma unroll
          for (int mf = 0; mf < MF; ++mf) {
            load_q(2 * kk2, mf, qa[mf][0]);
            load_q(2 * kk2 + 1, mf, qa[mf][1]);
          }
#pragma unroll
          for (int n2 = 0; n2 < BLOCK_N / 16; ++n2) {
            uint32_t r[4];
            ldmatrix_x4(r, k_tile + (n2 * 16 + ((lane / 8) % 2) * 8 + lane % 8) * Cfg::kCacheLds + kk2 * 32 +
                               (lane / 16) * 16);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const uint32_t b0 = fp8x2_to_packed<T>(r[i] & 0xffffu), b1 = fp8x2_to_packed<T>(r[i] >> 16);
#pragma unroll
              for (int mf = 0; mf < MF; ++mf) mma_16816<T>(s[mf][2 * n2 + i % 2], qa[mf][i / 2], b0, b1);
            }
          }
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
          uint32_t qa[MF][4];
#pragma unroll
          for (int mf = 0; mf < MF; ++mf) load_q(kk, mf, qa[mf]);
#pragma unroll
          for (int n2 = 0; n2 < BLOCK_N / 16; ++n2) {
            uint32_t b[4];
            ldmatrix_x4(b, k_tile + (n2 * 16 + lane % 8 + (lane / 16) * 8) * kLds + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
            for (int mf = 0; mf < MF; ++mf) {
              mma_16816<T>(s[mf][2 * n2], qa[mf], b[0], b[1]);
              mma_16816<T>(s[mf][2 * n2 + 1], qa[mf], b[2], b[3]);
            }
          }
        }
      }
      // Scale, mask (causal + context end; only tiles past the block's first row need it), online softmax
      // over rows g (h=0) and g+8 (h=1) of each row block.
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int i = 0; i < 4; ++i) s[mf][n][i] *= p.scale_log2;
        }
      }
      if (kv0 + BLOCK_N > unmasked_end) {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              if (kv0 + n * 8 + 2 * t + i % 2 > row_pos[mf][i / 2]) s[mf][n][i] = -INFINITY;
            }
          }
        }
      }
      float tile_max[MF][2];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
        tile_max[mf][0] = tile_max[mf][1] = -INFINITY;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int i = 0; i < 4; ++i) tile_max[mf][i / 2] = fmaxf(tile_max[mf][i / 2], s[mf][n][i]);
        }
      }
      float alpha[MF][2];
      bool moved = false;
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float m = tile_max[mf][h];
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          const float new_max = fmaxf(row_max[mf][h], m);
          alpha[mf][h] = fast_exp2(row_max[mf][h] - safe_max(new_max));
          moved |= alpha[mf][h] != 1.f;
          row_max[mf][h] = new_max;
          row_sum[mf][h] *= alpha[mf][h];
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            s[mf][n][i] = fast_exp2(s[mf][n][i] - safe_max(row_max[mf][i / 2]));
            row_sum[mf][i / 2] += s[mf][n][i];
          }
        }
      }
      // Rescale O only when a row's max moved (alpha == 1 exactly otherwise): after the first tiles the
      // max rarely moves, and the 4 * kDTiles multiplies are a large part of an fp8 iteration's issue.
      if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
          for (int d = 0; d < kDTiles; ++d) {
            o[mf][d][0] *= alpha[mf][0];
            o[mf][d][1] *= alpha[mf][0];
            o[mf][d][2] *= alpha[mf][1];
            o[mf][d][3] *= alpha[mf][1];
          }
        }
      }
    }

    if (active) {
#pragma unroll
      for (int kt = 0; kt < BLOCK_N / 16; ++kt) {
        // The accumulator layout of S is the A-operand layout of P.
        uint32_t pf[MF][4];
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
          pf[mf][0] = pack2<PvT>(s[mf][2 * kt][0], s[mf][2 * kt][1]);
          pf[mf][1] = pack2<PvT>(s[mf][2 * kt][2], s[mf][2 * kt][3]);
          pf[mf][2] = pack2<PvT>(s[mf][2 * kt + 1][0], s[mf][2 * kt + 1][1]);
          pf[mf][3] = pack2<PvT>(s[mf][2 * kt + 1][2], s[mf][2 * kt + 1][3]);
        }
        if constexpr (Cfg::kFp8) {
          // Matrix i: tokens (i % 2) * 8 + 0..7 of kt's 16, dims 32 * d4 + (i / 2) * 16 + 0..15, transposed:
          // the thread gets dims 2g, 2g+1 of tokens 2t, 2t+1. Dim group q's even dims feed accumulator
          // tile 2q and its odd dims tile 2q + 1.
#pragma unroll
          for (int d4 = 0; d4 < HEAD_DIM / 32; ++d4) {
            uint32_t r[4];
            ldmatrix_x4_trans(r, v_tile + (kt * 16 + ((lane / 8) % 2) * 8 + lane % 8) * Cfg::kCacheLds + d4 * 32 +
                                     (lane / 16) * 16);
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const int q = 2 * d4 + half;
              // Bytes (dim 2g of token 2t, dim 2g of token 2t+1 | the same for dim 2g+1).
              const uint32_t lo = __byte_perm(r[2 * half], 0, 0x3120);      // tokens 2t, 2t+1
              const uint32_t hi = __byte_perm(r[2 * half + 1], 0, 0x3120);  // tokens 2t+8, 2t+9
              const uint32_t even0 = fp8x2_to_packed<PvT>(lo & 0xffffu), even1 = fp8x2_to_packed<PvT>(hi & 0xffffu);
              const uint32_t odd0 = fp8x2_to_packed<PvT>(lo >> 16), odd1 = fp8x2_to_packed<PvT>(hi >> 16);
#pragma unroll
              for (int mf = 0; mf < MF; ++mf) {
                mma_16816<PvT>(o[mf][2 * q], pf[mf], even0, even1);
                mma_16816<PvT>(o[mf][2 * q + 1], pf[mf], odd0, odd1);
              }
            }
          }
        } else {
#pragma unroll
          for (int d2 = 0; d2 < HEAD_DIM / 16; ++d2) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, v_tile + (kt * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kLds + d2 * 16 + (lane / 16) * 8);
#pragma unroll
            for (int mf = 0; mf < MF; ++mf) {
              mma_16816<T>(o[mf][2 * d2], pf[mf], b[0], b[1]);
              mma_16816<T>(o[mf][2 * d2 + 1], pf[mf], b[2], b[3]);
            }
          }
        }
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();  // only empty groups can remain; the epilogue reuses the shared memory
  __syncthreads();

  // Epilogue: each warp's unnormalized O, row max and row sum go to shared memory; then the block
  // merges the WARPS_N warps of each row and writes the output (or this split's partial result).
  float* o_s = reinterpret_cast<float*>(smem_raw);               // [WARPS_N * kRows, HEAD_DIM]
  float* max_s = o_s + WARPS_N * kRows * HEAD_DIM;               // [WARPS_N * kRows]
  float* sum_s = max_s + WARPS_N * kRows;                        // [WARPS_N * kRows]
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[mf][h] += __shfl_xor_sync(0xffffffffu, row_sum[mf][h], 1);
      row_sum[mf][h] += __shfl_xor_sync(0xffffffffu, row_sum[mf][h], 2);
    }
    const int srow = wn * kRows + warp_row0 + mf * 16 + g;
    if constexpr (Cfg::kFp8) {
      // Tiles 2q and 2q + 1 hold dims q * 16 + 2c and q * 16 + 2c + 1 (column c): this thread's columns
      // 2t and 2t + 1 of both are dims q * 16 + 4t .. 4t + 3.
#pragma unroll
      for (int q = 0; q < HEAD_DIM / 16; ++q) {
        *reinterpret_cast<float4*>(o_s + srow * HEAD_DIM + q * 16 + 4 * t) =
            make_float4(o[mf][2 * q][0], o[mf][2 * q + 1][0], o[mf][2 * q][1], o[mf][2 * q + 1][1]);
        *reinterpret_cast<float4*>(o_s + (srow + 8) * HEAD_DIM + q * 16 + 4 * t) =
            make_float4(o[mf][2 * q][2], o[mf][2 * q + 1][2], o[mf][2 * q][3], o[mf][2 * q + 1][3]);
      }
    } else {
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
        *reinterpret_cast<float2*>(o_s + srow * HEAD_DIM + d * 8 + 2 * t) = make_float2(o[mf][d][0], o[mf][d][1]);
        *reinterpret_cast<float2*>(o_s + (srow + 8) * HEAD_DIM + d * 8 + 2 * t) =
            make_float2(o[mf][d][2], o[mf][d][3]);
      }
    }
    if (t == 0) {
      max_s[srow] = row_max[mf][0];
      max_s[srow + 8] = row_max[mf][1];
      sum_s[srow] = row_sum[mf][0];
      sum_s[srow + 8] = row_sum[mf][1];
    }
  }
  __syncthreads();
  // 8 columns per thread and step: the row's merge weights and its (token, head) are computed once per 8.
  constexpr int kChunks = HEAD_DIM / 8;
  for (int idx = tid; idx < kRows * kChunks; idx += Cfg::kThreads) {
    const int row = idx / kChunks, col = (idx % kChunks) * 8;
    const int r = m0 + row;
    if (r >= num_rows) break;  // idx only grows
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS_N; ++w) m = fmaxf(m, max_s[w * kRows + row]);
    float sum = 0.f, acc[8] = {};
#pragma unroll
    for (int w = 0; w < WARPS_N; ++w) {
      const float scale = exp2f(max_s[w * kRows + row] - safe_max(m));
      sum += sum_s[w * kRows + row] * scale;
      const float4* src = reinterpret_cast<const float4*>(o_s + (w * kRows + row) * HEAD_DIM + col);
      const float4 lo = src[0], hi = src[1];
      acc[0] += lo.x * scale, acc[1] += lo.y * scale, acc[2] += lo.z * scale, acc[3] += lo.w * scale;
      acc[4] += hi.x * scale, acc[5] += hi.y * scale, acc[6] += hi.z * scale, acc[7] += hi.w * scale;
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const int token = q_start + r / G, head = kv_head * G + r % G;
    if (num_active_splits == 1) {
      T* dst = static_cast<T*>(p.out) + token * p.o_token_stride + head * p.o_head_stride + col;
#pragma unroll
      for (int i = 0; i < 8; ++i) dst[i] = from_float<T>(acc[i] * inv);
    } else {
      const int64_t entry = (static_cast<int64_t>(split) * p.num_tokens + token) * p.num_heads + head;
      float4* dst = reinterpret_cast<float4*>(p.partial_out + entry * HEAD_DIM + col);
      dst[0] = make_float4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
      dst[1] = make_float4(acc[4] * inv, acc[5] * inv, acc[6] * inv, acc[7] * inv);
      if (col == 0) p.partial_lse[entry] = sum > 0.f ? m + log2f(sum) : -INFINITY;
    }
  }
  if (num_active_splits == 1) return;
  const int num_tile_rows = min(kRows, num_rows - m0);
  if (!is_last_split(p, num_active_splits)) return;
  static_assert(kRows * kMaxSplits * 4 <= Cfg::kSmemBytes);
  merge_splits<T, HEAD_DIM, Cfg::kThreads>(p, reinterpret_cast<float*>(smem_raw), q_start, kv_head, m0, num_tile_rows,
                                            num_active_splits);
}

// ---- fallback kernel ----------------------------------------------------------------------------

// One warp per (token, query head); lanes hold head dims lane, lane + 32, ... (head_dim <= 256).
template <typename T, typename C>
__global__ void paged_attention_fallback_kernel(const AttentionParams p) {
  constexpr int kMaxPerLane = 8;
  const int lane = threadIdx.x % 32;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (item >= static_cast<int64_t>(p.num_tokens) * p.num_heads) return;
  const int token = static_cast<int>(item / p.num_heads), head = static_cast<int>(item % p.num_heads);
  if (token >= p.query_start_loc[p.num_seqs]) return;  // padding past the last sequence
  int lo = 0, hi = p.num_seqs - 1;  // last sequence whose first token is <= token
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.query_start_loc[mid] <= token) lo = mid;
    else hi = mid - 1;
  }
  const int seq = lo;
  const int q_len = p.query_start_loc[seq + 1] - p.query_start_loc[seq];
  const int q_pos = p.context_lens[seq] - q_len + (token - p.query_start_loc[seq]);
  const int kv_head = head / p.group_size;
  const T* q = static_cast<const T*>(p.query) + token * p.q_token_stride + head * p.q_head_stride;
  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < p.head_dim ? to_float(q[d]) : 0.f;
    acc[i] = 0.f;
  }
  const C* k_cache = static_cast<const C*>(p.key_cache);
  const C* v_cache = static_cast<const C*>(p.value_cache);
  const int* block_table = p.block_tables + seq * p.block_table_stride;
  float m = -INFINITY, sum = 0.f;
  for (int pos = 0; pos <= q_pos; ++pos) {
    const int64_t offset = block_table[pos / p.block_size] * p.cache_block_stride +
                           (pos % p.block_size) * p.cache_slot_stride + kv_head * p.cache_head_stride;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < p.head_dim) dot += qv[i] * to_float(k_cache[offset + d]);
    }
    const float score = warp_sum(dot) * p.scale_log2;
    const float new_max = fmaxf(m, score);
    const float alpha = exp2f(m - new_max), weight = exp2f(score - new_max);
    m = new_max;
    sum = sum * alpha + weight;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < p.head_dim) acc[i] = acc[i] * alpha + weight * to_float(v_cache[offset + d]);
    }
  }
  T* out = static_cast<T*>(p.out) + token * p.o_token_stride + head * p.o_head_stride;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < p.head_dim) out[d] = from_float<T>(sum > 0.f ? acc[i] / sum : 0.f);
  }
}

}  // namespace fastpage::cuda
