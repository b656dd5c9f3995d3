// A tiny Llama-shaped model with random weights, for the embedding example and the C++ tests.
// A real service fills WeightMap from its own checkpoint reader, using the canonical names of
// fastpage/model_runner.h.
#pragma once
#include <ATen/Context.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>

#include <memory>
#include <string>

#include "fastpage/config.h"
#include "fastpage/engine.h"
#include "fastpage/model_runner.h"

namespace fastpage_example {

inline fastpage::ModelConfig tiny_llama_config() {
  fastpage::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 128;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.max_position_embeddings = 256;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

inline fastpage::WeightMap random_weights(const fastpage::ModelConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  auto linear = [](int64_t out, int64_t in) { return at::randn({out, in}).mul_(0.1); };
  fastpage::WeightMap w;
  w["embed_tokens.weight"] = at::randn({c.vocab_size, c.hidden_size});
  w["final_norm.weight"] = at::ones({c.hidden_size});
  const int64_t qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    w[p + "input_norm.weight"] = at::ones({c.hidden_size});
    w[p + "post_attn_norm.weight"] = at::ones({c.hidden_size});
    w[p + "qkv_proj.weight"] = linear(qkv, c.hidden_size);
    w[p + "o_proj.weight"] = linear(c.hidden_size, c.num_heads * c.head_dim);
    w[p + "gate_up_proj.weight"] = linear(2 * c.intermediate_size, c.hidden_size);
    w[p + "down_proj.weight"] = linear(c.hidden_size, c.intermediate_size);
  }
  return w;
}

// An engine on the CPU over the tiny model, with a fixed pool of KV blocks.
inline std::unique_ptr<fastpage::Engine> tiny_llama_engine(int64_t num_blocks, int64_t block_size) {
  const fastpage::ModelConfig model = tiny_llama_config();
  fastpage::EngineConfig config;
  config.num_gpu_blocks = num_blocks;
  config.block_size = block_size;
  return std::make_unique<fastpage::Engine>(model, config, random_weights(model, 0), c10::Device("cpu"),
                                            c10::ScalarType::Float);
}

inline fastpage::SamplingParams greedy(int32_t max_tokens) {
  fastpage::SamplingParams params;
  params.temperature = 0.0f;
  params.max_tokens = max_tokens;
  return params;
}

}  // namespace fastpage_example
