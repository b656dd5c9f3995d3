#include "decode_graphs.h"

#include <stdexcept>

namespace fastpage {
#ifndef FASTPAGE_WITH_CUDA
struct DecodeGraphs::Impl {};
DecodeGraphs::DecodeGraphs(const DecoderModel&, const KVCache&, int64_t, int64_t, int64_t, c10::Device) {
  throw std::invalid_argument("CUDA graphs need a build with CUDA");
}
DecodeGraphs::~DecodeGraphs() = default;
bool DecodeGraphs::accepts(const StepPlan&, const std::vector<int64_t>&) const { return false; }
at::Tensor DecodeGraphs::run(const StepPlan&, const DeferredInputIds&) {
  throw std::logic_error("CUDA graphs need a build with CUDA");
}
}  // namespace fastpage
#else
}  // namespace fastpage

#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <map>

#include "decoder_model.h"
#include "kv_cache.h"

namespace fastpage {

struct DecodeGraphs::Impl {
  struct Captured {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor logits;  // the graph's output, rewritten by every replay
  };

  const DecoderModel& model;
  const KVCache& cache;
  int64_t max_batch, table_width, block_size;
  c10::Device device;
  // int32 layout: input_ids [B] | positions [B] | query_start_loc [B + 1] | context_lens [B] |
  // block_tables [B, table_width]; int64: slot_mapping [B]. B = max_batch.
  int64_t pos_at, qsl_at, ctx_at, table_at, num_ints;
  at::Tensor ints, slots, rows;
  std::map<std::pair<int64_t, int64_t>, Captured> graphs;  // by (batch size, context bucket)
  at::cuda::MempoolId_t pool{0, 0};

  Impl(const DecoderModel& m, const KVCache& c, int64_t max_num_seqs, int64_t max_model_len, int64_t bs,
       c10::Device d)
      : model(m), cache(c), max_batch(max_num_seqs), table_width((max_model_len + bs - 1) / bs), block_size(bs),
        device(d) {
    pos_at = max_batch;
    qsl_at = 2 * max_batch;
    ctx_at = 3 * max_batch + 1;
    table_at = 4 * max_batch + 1;
    num_ints = table_at + max_batch * table_width;
    const auto on_device = at::TensorOptions().device(device);
    ints = at::zeros({num_ints}, on_device.dtype(at::kInt));
    slots = at::full({max_batch}, -1, on_device.dtype(at::kLong));
    rows = at::arange(max_batch, on_device.dtype(at::kLong));
  }

  // Padded batch sizes: powers of two up to 64, then multiples of 64 (a batch of 260 pads to 320, not
  // 512: at large batches the decode linears are compute-bound, so padding rows cost their FLOPs).
  static constexpr int64_t kPowerOfTwoBuckets = 64;
  int64_t bucket(int64_t n) const {
    int64_t size = 1;
    while (size < n && size < kPowerOfTwoBuckets) size *= 2;
    if (size < n) size = (n + kPowerOfTwoBuckets - 1) / kPowerOfTwoBuckets * kPowerOfTwoBuckets;
    return std::min(size, max_batch);
  }

  // The attention launch is sized by max_context_len (its split count and iterations per split), so
  // a graph captured for max_model_len would walk empty splits at short contexts: graphs are also
  // keyed by the step's longest context rounded up to a power of two (at least kMinContextBucket).
  static constexpr int64_t kMinContextBucket = 256;
  int64_t context_bucket(const StepPlan& plan) const {
    int32_t longest = 1;
    for (int32_t len : plan.context_lens) longest = std::max(longest, len);
    int64_t tokens = kMinContextBucket;
    while (tokens < longest) tokens *= 2;
    return std::min(tokens, table_width * block_size);
  }

  // The graph of batch size `bs` reads these views of the static buffers.
  ForwardInputs inputs(int64_t bs, int64_t max_context) const {
    ForwardInputs in;
    in.input_ids = ints.narrow(0, 0, bs);
    in.positions = ints.narrow(0, pos_at, bs);
    in.query_start_loc = ints.narrow(0, qsl_at, bs + 1);
    in.context_lens = ints.narrow(0, ctx_at, bs);
    in.block_tables = ints.narrow(0, table_at, max_batch * table_width).view({max_batch, table_width}).narrow(0, 0, bs);
    in.slot_mapping = slots.narrow(0, 0, bs);
    in.logits_indices = rows.narrow(0, 0, bs);
    in.max_query_len = 1;
    in.max_context_len = max_context;  // the launch shape every replay of this graph keeps
    return in;
  }

  // Writes the plan into pinned host buffers laid out like the static ones and queues the copies.
  // Padding rows decode token 0 at position 0 over one slot of block 0 and write nothing.
  void load(const StepPlan& plan, int64_t bs) {
    const int64_t n = static_cast<int64_t>(plan.seqs.size());
    const auto pinned = at::TensorOptions().pinned_memory(true);
    at::Tensor host_ints = at::zeros({table_at + bs * table_width}, pinned.dtype(at::kInt));
    at::Tensor host_slots = at::empty({bs}, pinned.dtype(at::kLong));
    int32_t* h = host_ints.data_ptr<int32_t>();
    int64_t* s = host_slots.data_ptr<int64_t>();
    for (int64_t i = 0; i < bs; ++i) {
      const bool real = i < n;
      h[i] = real ? plan.input_ids[i] : 0;
      h[pos_at + i] = real ? plan.positions[i] : 0;
      h[qsl_at + i] = static_cast<int32_t>(i);
      h[ctx_at + i] = real ? plan.context_lens[i] : 1;
      s[i] = real ? plan.slot_mapping[i] : -1;
      if (real) {
        std::copy_n(plan.block_tables.begin() + i * plan.max_blocks_per_seq, plan.max_blocks_per_seq,
                    h + table_at + i * table_width);
      }
    }
    h[qsl_at + bs] = static_cast<int32_t>(bs);
    ints.narrow(0, 0, host_ints.size(0)).copy_(host_ints, /*non_blocking=*/true);
    slots.narrow(0, 0, bs).copy_(host_slots, /*non_blocking=*/true);
  }

  at::Tensor run(const StepPlan& plan, const DeferredInputIds& deferred) {
    const int64_t n = static_cast<int64_t>(plan.seqs.size());
    const int64_t bs = bucket(n);
    const int64_t max_context = context_bucket(plan);
    load(plan, bs);
    deferred.scatter_into(ints.narrow(0, 0, n));  // input_ids come first in the static buffer
    auto found = graphs.find({bs, max_context});
    if (found == graphs.end()) {
      // First step of this size: run it eagerly, then capture the same pass for the steps to come.
      // Both on the capture stream, so cuBLAS's per-stream workspace and the kernels' one-time setup
      // happen before capture (as torch.cuda.graph warms up on its side stream).
      Captured captured{std::make_unique<at::cuda::CUDAGraph>(), at::Tensor()};
      const c10::cuda::CUDAStream capture_stream = c10::cuda::getStreamFromPool(false, device.index());
      c10::cuda::getCurrentCUDAStream(device.index()).synchronize();  // the inputs are loaded
      at::Tensor logits;
      {
        const c10::cuda::CUDAStreamGuard guard(capture_stream);
        logits = model.forward(inputs(bs, max_context), cache);
        capture_stream.synchronize();
        captured.graph->capture_begin(pool);
        captured.logits = model.forward(inputs(bs, max_context), cache);
        captured.graph->capture_end();
      }
      if (pool.first == 0 && pool.second == 0) pool = captured.graph->pool();
      graphs.emplace(std::make_pair(bs, max_context), std::move(captured));
      return logits.narrow(0, 0, n);
    }
    found->second.graph->replay();
    return found->second.logits.narrow(0, 0, n);
  }
};

DecodeGraphs::DecodeGraphs(const DecoderModel& model, const KVCache& cache, int64_t max_num_seqs,
                           int64_t max_model_len, int64_t block_size, c10::Device device)
    : impl_(std::make_unique<Impl>(model, cache, max_num_seqs, max_model_len, block_size, device)) {}

DecodeGraphs::~DecodeGraphs() = default;

bool DecodeGraphs::accepts(const StepPlan& plan, const std::vector<int64_t>& logits_indices) const {
  const int64_t n = static_cast<int64_t>(plan.seqs.size());
  if (n == 0 || n > impl_->max_batch || plan.num_tokens() != n || plan.num_decode_seqs != n) return false;
  if (plan.max_blocks_per_seq > impl_->table_width || static_cast<int64_t>(logits_indices.size()) != n) return false;
  for (int64_t i = 0; i < n; ++i) {
    if (logits_indices[i] != i) return false;
  }
  return true;
}

at::Tensor DecodeGraphs::run(const StepPlan& plan, const DeferredInputIds& deferred) {
  return impl_->run(plan, deferred);
}

}  // namespace fastpage
#endif  // FASTPAGE_WITH_CUDA
