#include "fastpage/model_runner.h"

#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/ScalarType.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "fastpage/ops.h"
#include "host_to_device.h"
#include "model/decode_graphs.h"
#include "model/decoder_model.h"
#include "model/kv_cache.h"
#include "parallel/communicator.h"

namespace fastpage {
namespace {

at::Tensor block_pairs(const std::vector<std::pair<BlockId, BlockId>>& pairs, c10::Device device) {
  std::vector<int64_t> flat;
  flat.reserve(pairs.size() * 2);
  for (const auto& [src, dst] : pairs) {
    flat.push_back(src);
    flat.push_back(dst);
  }
  return upload<int64_t>({part(flat)}, device)[0].view({static_cast<int64_t>(pairs.size()), 2});
}

// A CUDA device without an index means the current one; name it, so every tensor agrees.
c10::Device concrete_device(c10::Device device) {
  if (device.is_cpu() || device.has_index()) return device;
  return c10::impl::getDeviceGuardImpl(device.type())->getDevice();
}

void check_plan(const StepPlan& plan, const std::vector<int64_t>& logits_indices) {
  const size_t num_tokens = plan.input_ids.size();
  const size_t num_seqs = plan.seqs.size();
  const auto expect = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("StepPlan: ") + what);
  };
  expect(plan.positions.size() == num_tokens, "positions must have one entry per input token");
  expect(plan.slot_mapping.size() == num_tokens, "slot_mapping must have one entry per input token");
  expect(plan.query_start_loc.size() == num_seqs + 1, "query_start_loc must have num_seqs + 1 entries");
  expect(plan.context_lens.size() == num_seqs, "context_lens must have one entry per seq");
  expect(plan.block_tables.size() == num_seqs * static_cast<size_t>(plan.max_blocks_per_seq),
         "block_tables must be num_seqs x max_blocks_per_seq");
  expect(num_seqs == 0 || plan.query_start_loc.back() == static_cast<int32_t>(num_tokens),
         "query_start_loc must end at the number of input tokens");
  for (int64_t index : logits_indices) {
    expect(index >= 0 && index < static_cast<int64_t>(num_tokens), "logits index out of range");
  }
}

// The plan's per-token and per-sequence inputs on `device`: two transfers per step (int32 and int64
// inputs), queued without waiting for the device.
ForwardInputs upload_inputs(const StepPlan& plan, const std::vector<int64_t>& logits_indices, c10::Device device) {
  const int64_t num_seqs = static_cast<int64_t>(plan.seqs.size());
  const std::vector<at::Tensor> ints = upload<int32_t>(
      {part(plan.input_ids), part(plan.positions), part(plan.query_start_loc), part(plan.context_lens),
       part(plan.block_tables)},
      device);
  const std::vector<at::Tensor> longs = upload<int64_t>({part(plan.slot_mapping), part(logits_indices)}, device);
  ForwardInputs in;
  in.input_ids = ints[0];
  in.positions = ints[1];
  in.query_start_loc = ints[2];
  in.context_lens = ints[3];
  in.block_tables = ints[4].view({num_seqs, plan.max_blocks_per_seq});
  in.slot_mapping = longs[0];
  in.logits_indices = longs[1];
  for (int64_t s = 0; s < num_seqs; ++s) {
    in.max_query_len = std::max<int64_t>(in.max_query_len, plan.query_start_loc[s + 1] - plan.query_start_loc[s]);
    in.max_context_len = std::max<int64_t>(in.max_context_len, plan.context_lens[s]);
  }
  return in;
}

// The model as this rank's KV cache and memory estimate see it: its layers and heads only.
ModelConfig shard_sizes(const ModelConfig& model, const ModelShard& shard) {
  ModelConfig local = model;
  local.num_layers = shard.num_layers();
  local.num_heads = shard.num_heads;
  local.num_kv_heads = shard.num_kv_heads;
  local.intermediate_size = shard.intermediate_size;
  return local;
}

std::unique_ptr<Communicator> group_if(bool needed, const std::string& name, const char* field) {
  if (!needed) return nullptr;
  if (name.empty()) throw std::invalid_argument(std::string("ParallelConfig.") + field + " must name a process group");
  return std::make_unique<Communicator>(name);
}

}  // namespace

void DeferredInputIds::scatter_into(const at::Tensor& input_ids) const {
  if (empty()) return;
  const std::vector<at::Tensor> index = upload<int64_t>({part(token_indices), part(rows)}, input_ids.device());
  input_ids.index_copy_(0, index[0], sampled_ids.index_select(0, index[1]));
}

ModelRunner::ModelRunner(const ModelConfig& model, const EngineConfig& engine, WeightMap weights,
                         c10::Device device, c10::ScalarType dtype)
    : model_config_(model),
      engine_config_(engine),
      device_(concrete_device(device)),
      dtype_(dtype),
      shard_(model_shard(model, engine.parallel)) {
  if (engine.block_size <= 0) throw std::invalid_argument("EngineConfig.block_size must be positive");
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    throw std::invalid_argument("dtype must be float32, bfloat16 or float16");
  }
  const ParallelConfig& parallel = engine.parallel;
  tp_group_ = group_if(shard_.tp_size > 1, parallel.tp_group, "tp_group");
  pp_group_ = group_if(shard_.pp_size > 1, parallel.pp_group, "pp_group");
  c10::InferenceMode guard;
  const int64_t max_model_len =
      engine.max_model_len > 0 ? engine.max_model_len : model.max_position_embeddings;
  model_ = std::make_unique<DecoderModel>(model, std::move(weights), device_, dtype,
                                          std::max(max_model_len, model.max_position_embeddings), shard_,
                                          tp_group_.get());
  const ModelConfig local = shard_sizes(model, shard_);
  int64_t num_blocks = plan_num_device_blocks(local, engine, device_, dtype);
  int64_t num_host_blocks = plan_num_host_blocks(local, engine, dtype);
  if (parallel.world_size() > 1) {
    // Block ids must mean the same slots on every rank: all take the smallest count.
    const std::unique_ptr<Communicator> world = group_if(true, parallel.world_group, "world_group");
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(parallel.timeout_seconds * 1000));
    num_blocks = world->all_reduce_min(num_blocks, timeout);
    num_host_blocks = world->all_reduce_min(num_host_blocks, timeout);
  }
  kv_cache_ = std::make_unique<KVCache>(local, engine.block_size, num_blocks, num_host_blocks, device_,
                                        kv_cache_scalar_type(engine, dtype));
  // CUDA graphs capture one process's decode pass; with several ranks the engine runs eagerly.
  if (device_.is_cuda() && !engine.enforce_eager && parallel.world_size() == 1) {
    decode_graphs_ = std::make_unique<DecodeGraphs>(*model_, *kv_cache_, engine.max_num_seqs, max_model_len,
                                                    engine.block_size, device_);
  }
  const int64_t blocks_per_request = (max_model_len + engine.block_size - 1) / engine.block_size;
  std::fprintf(stderr,
               "fastpage: weights %.1f MiB; KV cache (%s) on %s: %lld blocks of %lld tokens (%.1f MiB), "
               "%lld host blocks; fits %.2f requests of %lld tokens\n",
               static_cast<double>(model_->weight_bytes()) / (1 << 20),
               c10::toString(kv_cache_->device_cache.scalar_type()), device_.str().c_str(),
               static_cast<long long>(num_blocks), static_cast<long long>(engine.block_size),
               static_cast<double>(num_blocks * kv_cache_->bytes_per_block) / (1 << 20),
               static_cast<long long>(num_host_blocks),
               static_cast<double>(num_blocks) / static_cast<double>(blocks_per_request),
               static_cast<long long>(max_model_len));
}

ModelRunner::~ModelRunner() = default;

int32_t ModelRunner::num_device_blocks() const { return static_cast<int32_t>(kv_cache_->num_device_blocks); }
int32_t ModelRunner::num_host_blocks() const { return static_cast<int32_t>(kv_cache_->num_host_blocks); }
int64_t ModelRunner::bytes_per_block() const { return kv_cache_->bytes_per_block; }

at::Tensor ModelRunner::execute(const StepPlan& plan, const std::vector<int64_t>& logits_indices,
                                const DeferredInputIds& deferred) {
  check_plan(plan, logits_indices);
  if (deferred.token_indices.size() != deferred.rows.size()) {
    throw std::invalid_argument("DeferredInputIds: token_indices and rows must have the same length");
  }
  for (int64_t index : deferred.token_indices) {
    if (index < 0 || index >= plan.num_tokens()) {
      throw std::invalid_argument("DeferredInputIds: token index out of range");
    }
  }
  c10::InferenceMode guard;
  KVCache& cache = *kv_cache_;

  // Swaps move whole blocks of every layer at once: the caches viewed as [layers * 2, blocks, ...].
  if (!plan.swap_out.empty() || !plan.swap_in.empty()) {
    if (!cache.host_cache.defined()) throw std::invalid_argument("StepPlan swaps blocks but num_cpu_blocks is 0");
    const auto flat = [](const at::Tensor& t) { return t.flatten(0, 1); };
    if (!plan.swap_out.empty()) {
      ops::swap_blocks(flat(cache.device_cache), flat(cache.host_cache), block_pairs(plan.swap_out, at::kCPU));
    }
    if (!plan.swap_in.empty()) {
      ops::swap_blocks(flat(cache.host_cache), flat(cache.device_cache), block_pairs(plan.swap_in, at::kCPU));
    }
  }
  if (!plan.block_copies.empty()) {
    ops::copy_blocks(cache.all_views, block_pairs(plan.block_copies, device_));
  }

  if (plan.num_tokens() == 0) {
    return at::empty({0, model_config_.vocab_size}, at::TensorOptions().dtype(at::kFloat).device(device_));
  }
  if (decode_graphs_ && decode_graphs_->accepts(plan, logits_indices)) return decode_graphs_->run(plan, deferred);
  return run_stage(plan, logits_indices, deferred);
}

// One forward pass of this rank's stage. Hidden states go stage to stage over the pipeline group
// (send / recv between ranks with the same tp_rank); the last stage's tp_rank 0 sends the logits
// back to rank 0. No micro-batches: one stage works at a time.
at::Tensor ModelRunner::run_stage(const StepPlan& plan, const std::vector<int64_t>& logits_indices,
                                  const DeferredInputIds& deferred) {
  const int64_t num_tokens = plan.num_tokens();
  ForwardInputs in;
  {
    RECORD_USER_SCOPE("fastpage::prepare_inputs");
    in = upload_inputs(plan, logits_indices, device_);
    deferred.scatter_into(in.input_ids);
  }
  at::Tensor stage_input;
  if (!shard_.first_stage()) {
    stage_input = at::empty({2, num_tokens, model_config_.hidden_size},
                            at::TensorOptions().dtype(dtype_).device(device_));
    pp_group_->recv(stage_input, shard_.pp_rank - 1);
  }
  at::Tensor out;
  {
    RECORD_USER_SCOPE("fastpage::forward");
    out = model_->forward(in, *kv_cache_, stage_input);
  }
  if (!pp_group_) return out;
  if (!shard_.last_stage()) {
    pp_group_->send(out, shard_.pp_rank + 1);
  } else if (shard_.tp_rank == 0) {
    pp_group_->send(out, 0);  // the logits, to rank 0 (stage 0 of this pipeline group)
  }
  if (engine_config_.parallel.rank != 0) return at::Tensor();
  at::Tensor logits = at::empty({static_cast<int64_t>(logits_indices.size()), model_config_.vocab_size},
                                at::TensorOptions().dtype(at::kFloat).device(device_));
  pp_group_->recv(logits, shard_.pp_size - 1);
  return logits;
}

}  // namespace fastpage
