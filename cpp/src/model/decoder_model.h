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

class DecoderModel {
 public:
  // Takes the weights (canonical names, see model_runner.h), checks every name and shape, and
  // moves them to `device` in `dtype`. Missing, misshapen or unexpected weights throw
  // std::invalid_argument naming the weight.
  DecoderModel(const ModelConfig& config, WeightMap weights, c10::Device device, c10::ScalarType dtype,
               int64_t max_positions);

  // Writes the step's K/V into `cache` and returns float32 logits [num_logits, vocab].
  at::Tensor forward(const ForwardInputs& in, const KVCache& cache) const;

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

  at::Tensor embed(const ForwardInputs& in) const;
  // Adds `hidden` into the residual stream and returns the normalised stream (pre-norm block
  // entry). On the first call `residual` is undefined and becomes `hidden`.
  at::Tensor add_and_norm(at::Tensor& hidden, at::Tensor& residual, const Norm& norm) const;
  at::Tensor attention(const Layer& layer, int64_t layer_index, const at::Tensor& x,
                       const ForwardInputs& in, const KVCache& cache) const;
  at::Tensor mlp(const Layer& layer, const at::Tensor& x) const;

  ModelConfig config_;
  double attn_scale_;
  at::Tensor embed_tokens_, embed_positions_, lm_head_;
  at::Tensor cos_sin_cache_;
  Norm final_norm_;
  std::vector<Layer> layers_;
  int64_t weight_bytes_ = 0;
};

}  // namespace fastpage
