#include "decoder_model.h"

#include <ATen/ops/add.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include <ATen/ops/stack.h>

#include "../kernels/cpu/small_batch_linear.h"
#include "../parallel/communicator.h"
#include "fastpage/ops.h"
#include "rope.h"

namespace fastpage {
namespace {

constexpr int64_t kDeviceSmallBatchRows = 4;  // cuda/small_batch_linear_kernels.cuh: kMaxSmallBatchRows

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Hands out the weights by canonical name, checking shapes, and reports any left unused.
class WeightTaker {
 public:
  WeightTaker(WeightMap weights, c10::Device device, c10::ScalarType dtype)
      : weights_(std::move(weights)), device_(device), dtype_(dtype) {}

  at::Tensor take(const std::string& name, std::vector<int64_t> shape) {
    auto it = weights_.find(name);
    if (it == weights_.end()) throw std::invalid_argument("missing weight '" + name + "'");
    at::Tensor w = std::move(it->second);
    weights_.erase(it);
    if (w.sizes() != at::IntArrayRef(shape)) {
      throw std::invalid_argument("weight '" + name + "' has shape " + shape_str(w.sizes()) +
                                  ", expected " + shape_str(shape));
    }
    w = w.to(device_, dtype_).contiguous();
    bytes_ += w.nbytes();
    return w;
  }
  at::Tensor take_if(bool present, const std::string& name, std::vector<int64_t> shape) {
    return present ? take(name, std::move(shape)) : at::Tensor();
  }
  void expect_all_taken() const {
    if (weights_.empty()) return;
    std::string names;
    for (const auto& [name, _] : weights_) names += (names.empty() ? "" : ", ") + name;
    throw std::invalid_argument("unexpected weights for this model config: " + names);
  }
  int64_t bytes() const { return bytes_; }

 private:
  WeightMap weights_;
  c10::Device device_;
  c10::ScalarType dtype_;
  int64_t bytes_ = 0;
};

// Decode-sized products stream the weights through fastpage::small_batch_linear: on the CPU in float32
// (BLAS gemv read them at about half the memory bandwidth), on a GPU in bf16/fp16 for up to 4 rows.
// Everything else goes to at::linear.
bool use_small_batch_linear(const at::Tensor& x, const at::Tensor& weight) {
  if (x.device().is_cpu()) return kernels::cpu::use_small_batch_linear(x, weight);
  const auto dtype = x.scalar_type();
  return x.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && weight.scalar_type() == dtype &&
         x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= kDeviceSmallBatchRows && x.size(1) % 8 == 0 &&
         weight.size(1) % 8 == 0 && x.is_contiguous() && weight.is_contiguous();
}

at::Tensor& linear_layer(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                         const at::Tensor& bias = {}) {
  if (use_small_batch_linear(x, weight)) {
    ops::small_batch_linear(out, x, weight, bias);
    return out;
  }
  return at::linear_out(out, x, weight, bias);
}

void check_config(const ModelConfig& c) {
  const auto positive = [](int64_t v, const char* name) {
    if (v <= 0) throw std::invalid_argument(std::string("ModelConfig.") + name + " must be positive");
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.num_layers, "num_layers");
  positive(c.num_heads, "num_heads");
  positive(c.num_kv_heads, "num_kv_heads");
  positive(c.head_dim, "head_dim");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.max_position_embeddings, "max_position_embeddings");
  if (c.num_heads % c.num_kv_heads != 0) {
    throw std::invalid_argument("ModelConfig.num_heads must be a multiple of num_kv_heads");
  }
  if (c.gated_mlp && c.activation != Activation::SiLU) {
    throw std::invalid_argument("ModelConfig.gated_mlp supports only the SiLU activation");
  }
  if (c.qk_norm && c.norm_type != NormType::RMSNorm) {
    throw std::invalid_argument("ModelConfig.qk_norm requires norm_type RMSNorm");
  }
}

}  // namespace

DecoderModel::DecoderModel(const ModelConfig& config, WeightMap weights, c10::Device device,
                           c10::ScalarType dtype, int64_t max_positions, const ModelShard& shard, Communicator* tp)
    : config_(config), shard_(shard), tp_(tp), attn_scale_(1.0 / std::sqrt(static_cast<double>(config.head_dim))) {
  check_config(config);
  if ((shard.tp_size > 1) != (tp != nullptr)) {
    throw std::invalid_argument("DecoderModel: a tensor-parallel group is needed exactly when tp_size > 1");
  }
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size;
  const int64_t q_size = shard.num_heads * c.head_dim;
  const int64_t kv_size = shard.num_kv_heads * c.head_dim;
  const int64_t intermediate = shard.intermediate_size;
  const int64_t vocab_rows = shard.vocab_rows;
  const bool layer_norm = c.norm_type == NormType::LayerNorm;
  WeightTaker w(std::move(weights), device, dtype);
  const auto norm = [&](const std::string& name) {
    return Norm{w.take(name + ".weight", {hidden}), w.take_if(layer_norm, name + ".bias", {hidden})};
  };

  if (shard.first_stage()) {
    embed_tokens_ = w.take("embed_tokens.weight", {vocab_rows, hidden});
    if (c.position_type == PositionType::Learned) {
      // OPT keeps two extra rows in front: position p reads row p + learned_position_offset.
      embed_positions_ = w.take("embed_positions.weight",
                                {c.max_position_embeddings + c.learned_position_offset, hidden});
    }
  }
  for (int64_t i = shard.layer_begin; i < shard.layer_end; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    Layer layer;
    layer.input_norm = norm(p + "input_norm");
    layer.qkv_weight = w.take(p + "qkv_proj.weight", {q_size + 2 * kv_size, hidden});
    layer.qkv_bias = w.take_if(c.qkv_bias, p + "qkv_proj.bias", {q_size + 2 * kv_size});
    layer.q_norm = w.take_if(c.qk_norm, p + "q_norm.weight", {c.head_dim});
    layer.k_norm = w.take_if(c.qk_norm, p + "k_norm.weight", {c.head_dim});
    layer.o_weight = w.take(p + "o_proj.weight", {hidden, q_size});
    layer.o_bias = w.take_if(c.o_bias, p + "o_proj.bias", {hidden});
    layer.post_attn_norm = norm(p + "post_attn_norm");
    if (c.gated_mlp) {
      layer.gate_up_weight = w.take(p + "gate_up_proj.weight", {2 * intermediate, hidden});
    } else {
      layer.up_weight = w.take(p + "up_proj.weight", {intermediate, hidden});
      layer.up_bias = w.take_if(c.mlp_bias, p + "up_proj.bias", {intermediate});
    }
    layer.down_weight = w.take(p + "down_proj.weight", {hidden, intermediate});
    layer.down_bias = w.take_if(c.mlp_bias, p + "down_proj.bias", {hidden});
    layers_.push_back(std::move(layer));
  }
  if (shard.last_stage()) {
    final_norm_ = norm("final_norm");
    // Tied: the last stage holds embed_tokens (its own copy unless it is also the first stage).
    if (!c.tie_word_embeddings) {
      lm_head_ = w.take("lm_head.weight", {vocab_rows, hidden});
    } else {
      lm_head_ = embed_tokens_.defined() ? embed_tokens_ : w.take("embed_tokens.weight", {vocab_rows, hidden});
    }
  }
  w.expect_all_taken();
  weight_bytes_ = w.bytes();

  if (c.position_type == PositionType::Rotary) {
    cos_sin_cache_ = build_cos_sin_cache(c, max_positions).to(device, dtype);
  }
}

at::Tensor DecoderModel::embed(const ForwardInputs& in) const {
  at::Tensor x;
  if (tp_) {
    // Vocab-parallel: ids outside this rank's rows read row 0 and are zeroed; the all-reduce then
    // sums the one rank's real row with zeros.
    at::Tensor local = in.input_ids.sub(shard_.vocab_begin());
    at::Tensor outside = local.lt(0).logical_or_(local.ge(shard_.vocab_rows));
    x = at::embedding(embed_tokens_, local.masked_fill_(outside, 0));
    x.masked_fill_(outside.unsqueeze(1), 0);
    tp_->all_reduce(x);
  } else {
    x = at::embedding(embed_tokens_, in.input_ids);
  }
  if (embed_positions_.defined()) {
    at::Tensor rows = config_.learned_position_offset ? at::add(in.positions, config_.learned_position_offset)
                                                      : in.positions;
    x.add_(at::embedding(embed_positions_, rows));
  }
  return x;
}

at::Tensor DecoderModel::add_and_norm(at::Tensor& hidden, at::Tensor& residual, const Norm& norm) const {
  const bool first = !residual.defined();
  if (first) residual = hidden;
  if (config_.norm_type == NormType::RMSNorm) {
    if (first) return ops::rms_norm(residual, norm.weight, config_.norm_eps);
    ops::fused_add_rms_norm(hidden, residual, norm.weight, config_.norm_eps);
    return hidden;
  }
  if (!first) residual.add_(hidden);
  return at::layer_norm(residual, {config_.hidden_size}, norm.weight, norm.bias, config_.norm_eps);
}

DecoderModel::Scratch DecoderModel::make_scratch(int64_t num_tokens, const at::TensorOptions& options) const {
  const ModelConfig& c = config_;
  const int64_t q_size = shard_.num_heads * c.head_dim;
  const int64_t mlp_in = c.gated_mlp ? 2 * shard_.intermediate_size : shard_.intermediate_size;
  return Scratch{
      at::empty({num_tokens, q_size + 2 * shard_.num_kv_heads * c.head_dim}, options),
      at::empty({num_tokens, shard_.num_heads, c.head_dim}, options),
      at::empty({num_tokens, c.hidden_size}, options),
      at::empty({num_tokens, mlp_in}, options),
      at::empty({num_tokens, c.hidden_size}, options),
  };
}

at::Tensor& DecoderModel::attention(const Layer& layer, int64_t layer_index, const at::Tensor& x,
                                    const ForwardInputs& in, const KVCache& cache, Scratch& scratch) const {
  const ModelConfig& c = config_;
  const int64_t num_tokens = x.size(0);
  const int64_t num_heads = shard_.num_heads, num_kv_heads = shard_.num_kv_heads;
  const int64_t q_size = num_heads * c.head_dim;
  const int64_t kv_size = num_kv_heads * c.head_dim;
  at::Tensor& qkv = linear_layer(scratch.qkv, x, layer.qkv_weight, layer.qkv_bias);
  // Views into qkv (row stride q_size + 2 * kv_size): no copies on the way to the kernels.
  at::Tensor q = qkv.narrow(1, 0, q_size).view({num_tokens, num_heads, c.head_dim});
  at::Tensor k = qkv.narrow(1, q_size, kv_size).view({num_tokens, num_kv_heads, c.head_dim});
  at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({num_tokens, num_kv_heads, c.head_dim});
  if (c.qk_norm) {
    q = ops::rms_norm(q, layer.q_norm, c.norm_eps);
    k = ops::rms_norm(k, layer.k_norm, c.norm_eps);
  }
  const at::Tensor& key_cache = cache.key(layer_index);
  const at::Tensor& value_cache = cache.value(layer_index);
  if (c.position_type == PositionType::Rotary) {
    // One kernel rotates q and k in place and writes the rotated k and v into the cache.
    ops::rotary_embedding_and_cache(in.positions, q, k, v, cos_sin_cache_, c.head_dim, key_cache, value_cache,
                                    in.slot_mapping);
  } else {
    ops::reshape_and_cache(k, v, key_cache, value_cache, in.slot_mapping);
  }
  ops::paged_attention(scratch.attn_out, q, key_cache, value_cache, in.query_start_loc, in.context_lens,
                       in.block_tables, attn_scale_, in.max_query_len, in.max_context_len);
  at::Tensor& out = linear_layer(scratch.o_proj, scratch.attn_out.view({num_tokens, q_size}), layer.o_weight,
                                 fused_bias(layer.o_bias));
  if (tp_) reduce_partial_sums(out, layer.o_bias);
  return out;
}

void DecoderModel::reduce_partial_sums(at::Tensor& out, const at::Tensor& bias) const {
  tp_->all_reduce(out);
  if (bias.defined()) out.add_(bias);
}

at::Tensor& DecoderModel::mlp(const Layer& layer, const at::Tensor& x, Scratch& scratch) const {
  if (config_.gated_mlp) {
    at::Tensor activated;
    if (x.is_cuda() && use_small_batch_linear(x, layer.gate_up_weight)) {
      // One kernel for the gate_up projection and the activation (bit-identical to the two).
      // Written contiguously into the front of the [rows, 2 * I] scratch.
      activated = scratch.gate_up.view(-1).narrow(0, 0, x.size(0) * shard_.intermediate_size)
                      .view({x.size(0), shard_.intermediate_size});
      ops::small_batch_linear_silu_and_mul(activated, x, layer.gate_up_weight);
    } else {
      linear_layer(scratch.gate_up, x, layer.gate_up_weight);
      activated = ops::silu_and_mul(scratch.gate_up);
    }
    at::Tensor& out = linear_layer(scratch.down_proj, activated, layer.down_weight);
    if (tp_) reduce_partial_sums(out, {});
    return out;
  }
  at::Tensor& up = linear_layer(scratch.gate_up, x, layer.up_weight, layer.up_bias);
  switch (config_.activation) {
    case Activation::GeluTanh: at::gelu_(up, "tanh"); break;
    case Activation::Gelu: at::gelu_(up, "none"); break;
    case Activation::ReLU: at::relu_(up); break;
    case Activation::SiLU: throw std::invalid_argument("SiLU needs gated_mlp");
  }
  at::Tensor& out = linear_layer(scratch.down_proj, up, layer.down_weight, fused_bias(layer.down_bias));
  if (tp_) reduce_partial_sums(out, layer.down_bias);
  return out;
}

at::Tensor DecoderModel::forward(const ForwardInputs& in, const KVCache& cache, const at::Tensor& stage_input) const {
  at::Tensor hidden, residual;
  if (shard_.first_stage()) {
    hidden = embed(in);
  } else {
    hidden = stage_input[0];
    residual = stage_input[1];
  }
  Scratch scratch = make_scratch(hidden.size(0), hidden.options());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    at::Tensor x = add_and_norm(hidden, residual, layer.input_norm);
    hidden = attention(layer, static_cast<int64_t>(i), x, in, cache, scratch);
    x = add_and_norm(hidden, residual, layer.post_attn_norm);
    hidden = mlp(layer, x, scratch);
  }
  if (!shard_.last_stage()) return at::stack({hidden, residual});
  // Only the rows that need logits go through the final norm and the lm_head.
  at::Tensor last_hidden = hidden.index_select(0, in.logits_indices);
  at::Tensor last_residual = residual.index_select(0, in.logits_indices);
  at::Tensor normed = add_and_norm(last_hidden, last_residual, final_norm_);
  at::Tensor logits = at::empty({normed.size(0), lm_head_.size(0)}, normed.options());
  linear_layer(logits, normed, lm_head_);
  if (tp_) logits = tp_->all_gather(logits, 1).narrow(1, 0, config_.vocab_size);  // vocab-parallel lm_head
  return logits.to(at::kFloat);
}

}  // namespace fastpage
