// Runs a StepPlan on the model: owns the weights and the paged KV cache.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "fastpage/config.h"
#include "fastpage/parallel.h"
#include "fastpage/step_plan.h"

namespace fastpage {

// Canonical weight names (Python's loaders map HF / GGUF names onto these, fusing q/k/v and gate/up):
//   embed_tokens.weight, embed_positions.weight (learned positions), final_norm.weight[/bias],
//   lm_head.weight (absent when tied), and for each layer i, prefix "layers.{i}.":
//   input_norm.weight[/bias], qkv_proj.weight[/bias], q_norm.weight, k_norm.weight (qk_norm),
//   o_proj.weight[/bias], post_attn_norm.weight[/bias], gate_up_proj.weight (gated MLP) or
//   up_proj.weight[/bias], down_proj.weight[/bias]. Linear weights are [out_features, in_features].
using WeightMap = std::unordered_map<std::string, at::Tensor>;

// Input tokens whose ids were sampled by the step before and are still on the device (async
// scheduling): the plan holds kPlaceholderToken there, and the runner gathers the ids on the device.
struct DeferredInputIds {
  at::Tensor sampled_ids;              // int32 [rows] on the runner's device: the previous step's ids
  std::vector<int64_t> token_indices;  // flattened input token of the plan
  std::vector<int64_t> rows;           // its row of sampled_ids

  bool empty() const { return token_indices.empty(); }
  // input_ids[token_indices[i]] = sampled_ids[rows[i]], on the device (two small kernels).
  void scatter_into(const at::Tensor& input_ids) const;
};

class DecoderModel;
class DecodeGraphs;
class Communicator;
struct KVCache;

// With engine.parallel.world_size() > 1 every rank has one ModelRunner over its shard of the weights
// (see fastpage/parallel.h); they size their KV caches alike (the minimum over the ranks, agreed on
// in the constructor, which every rank must reach) and run the same plans in lockstep.
class ModelRunner {
 public:
  ModelRunner(const ModelConfig& model, const EngineConfig& engine, WeightMap weights,
              c10::Device device, c10::ScalarType dtype);
  ~ModelRunner();

  int32_t num_device_blocks() const;
  int32_t num_host_blocks() const;
  int64_t bytes_per_block() const;
  c10::Device device() const { return device_; }

  // Applies the plan's swaps and copies, runs the forward pass, and returns float32 logits
  // [logits_indices.size(), vocab] for the flattened token indices asked for. Under pipeline
  // parallelism only rank 0 gets them (other ranks get an undefined tensor); std::runtime_error when
  // a collective with another rank fails. Queued on the device's stream without waiting for it.
  // The logits may be a CUDA graph's output buffer: valid until the next execute() is enqueued
  // (at batch 416 x 128k a copy would cost ~0.14 ms a step).
  at::Tensor execute(const StepPlan& plan, const std::vector<int64_t>& logits_indices,
                     const DeferredInputIds& deferred = {});

 private:
  at::Tensor run_stage(const StepPlan& plan, const std::vector<int64_t>& logits_indices,
                       const DeferredInputIds& deferred);

  ModelConfig model_config_;
  EngineConfig engine_config_;
  c10::Device device_;
  c10::ScalarType dtype_;
  ModelShard shard_;
  std::unique_ptr<Communicator> tp_group_;  // tensor-parallel ranks of this stage; null when tp == 1
  std::unique_ptr<Communicator> pp_group_;  // this tp_rank's rank of every stage; null when pp == 1
  std::unique_ptr<DecoderModel> model_;
  std::unique_ptr<KVCache> kv_cache_;
  std::unique_ptr<DecodeGraphs> decode_graphs_;  // CUDA, unless enforce_eager; declared last: uses the two above
};

}  // namespace fastpage
