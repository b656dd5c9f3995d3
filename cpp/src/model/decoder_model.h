// One config-driven decoder-only transformer: Llama/Mistral/Qwen2/Qwen3 (RMSNorm, rotary, gated
// SiLU MLP, optional qkv bias and q/k norm) and GPT-2/OPT (LayerNorm, learned positions, plain
// GELU/ReLU MLP, biases). Pre-norm blocks throughout.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <vector>

#include "fastpage/config.h"
#include "fastpage/model_runner.h"
#include "fastpage/parallel.h"
#include "kv_cache.h"

namespace fastpage {

// One step's inputs, already on the model's device (see StepPlan for their meaning).
struct ForwardInputs {
  at::Tensor input_ids;        // [num_tokens] int32
  at::Tensor positions;        // [num_tokens] int32
  at::Tensor slot_mapping;     // [num_tokens] int64
  at::Tensor query_start_loc;  // [num_seqs + 1] int32
  at::Tensor context_lens;     // [num_seqs] int32
  at::Tensor block_tables;     // [num_seqs, max_blocks_per_seq] int32
  at::Tensor logits_indices;   // [num_logits] int64: rows of the flattened tokens to project
  int64_t max_query_len = 0;
  int64_t max_context_len = 0;
};

class Communicator;

class DecoderModel {
 public:
  // Takes this rank's weights (canonical names, see model_runner.h, already cut to `shard`), checks
  // every name and shape, and moves them to `device` in `dtype`. Missing, misshapen or unexpected
  // weights throw std::invalid_argument naming the weight. `tp` (the tensor-parallel group) is
  // null when shard.tp_size == 1.
  DecoderModel(const ModelConfig& config, WeightMap weights, c10::Device device, c10::ScalarType dtype,
               int64_t max_positions, const ModelShard& shard, Communicator* tp);

  // Runs this rank's layers, writing the step's K/V into `cache` (local layer indices). The first
  // pipeline stage starts from the token embeddings, later ones from `stage_input`, the previous
  // stage's output. The last stage returns float32 logits [num_logits, vocab]; earlier stages return
  // [2, num_tokens, hidden]: the hidden states and the residual stream for the next stage.
  at::Tensor forward(const ForwardInputs& in, const KVCache& cache, const at::Tensor& stage_input = {}) const;

  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  struct Norm {
    at::Tensor weight;
    at::Tensor bias;  // LayerNorm only
  };
  struct Layer {
    Norm input_norm;
    at::Tensor qkv_weight, qkv_bias;
    at::Tensor q_norm, k_norm;  // qk_norm only
    at::Tensor o_weight, o_bias;
    Norm post_attn_norm;
    at::Tensor gate_up_weight;            // gated MLP
    at::Tensor up_weight, up_bias;        // plain MLP
    at::Tensor down_weight, down_bias;
  };

  // Activations every layer writes, allocated once per step (not per layer) and reused in turn.
  struct Scratch {
    at::Tensor qkv, attn_out, o_proj, gate_up, down_proj;
  };
  Scratch make_scratch(int64_t num_tokens, const at::TensorOptions& options) const;

  at::Tensor embed(const ForwardInputs& in) const;
  // Adds `hidden` into the residual stream and returns the normalised stream (pre-norm block
  // entry). On the first call `residual` is undefined and becomes `hidden`.
  at::Tensor add_and_norm(at::Tensor& hidden, at::Tensor& residual, const Norm& norm) const;
  at::Tensor& attention(const Layer& layer, int64_t layer_index, const at::Tensor& x,
                        const ForwardInputs& in, const KVCache& cache, Scratch& scratch) const;
  at::Tensor& mlp(const Layer& layer, const at::Tensor& x, Scratch& scratch) const;
  // A row-parallel projection's partial sums: summed over the tensor-parallel ranks, then its bias.
  void reduce_partial_sums(at::Tensor& out, const at::Tensor& bias) const;
  // Bias of a row-parallel projection: added by the linear itself only without tensor parallelism.
  const at::Tensor& fused_bias(const at::Tensor& bias) const { return tp_ ? no_bias_ : bias; }

  ModelConfig config_;
  ModelShard shard_;
  Communicator* tp_;  // null without tensor parallelism
  at::Tensor no_bias_;
  double attn_scale_;
  at::Tensor embed_tokens_, embed_positions_, lm_head_;
  at::Tensor cos_sin_cache_;
  Norm final_norm_;
  std::vector<Layer> layers_;
  int64_t weight_bytes_ = 0;
};

}  // namespace fastpage
