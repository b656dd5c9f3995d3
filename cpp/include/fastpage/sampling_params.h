// Per-request sampling parameters in token ids (stop strings and detokenization live in Python).
#pragma once
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "fastpage/structured_output.h"

namespace fastpage {

struct SamplingParams {
  int32_t n = 1;
  int32_t best_of = 1;  // >= n; the engine runs best_of sequences
  float temperature = 1.0f;  // below 1e-5 (vLLM's _SAMPLING_EPS) = greedy
  float top_p = 1.0f;
  int32_t top_k = 0;  // 0 or -1: off
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::vector<int32_t>> bad_words;  // token sequences that must not be completed
  bool ignore_eos = false;
  int32_t max_tokens = 16;
  int32_t min_tokens = 0;
  std::optional<int32_t> logprobs;         // top-k logprobs per sampled token (+ the sampled one)
  std::optional<int32_t> prompt_logprobs;  // same for each prompt token
  std::unordered_map<int32_t, float> logit_bias;
  std::vector<int32_t> allowed_token_ids;  // empty: all allowed
  StructuredOutput structured_output;       // the grammar the output must follow (kind None: free)

  bool greedy() const { return temperature < 1e-5f; }
};

}  // namespace fastpage
