// Turns logits into tokens: penalties, biases, masks, temperature, top-k/top-p/min-p, seeded draws,
// and logprobs. Every draw depends only on (seed, position), never on the rest of the batch.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "fastpage/sampling_params.h"

namespace fastpage {

struct SamplingRow {
  int64_t logits_row = 0;  // row of the logits tensor (rows may repeat: n > 1 samples one row n times)
  const SamplingParams* params = nullptr;
  const std::vector<int32_t>* token_ids = nullptr;  // prompt + output so far
  int32_t num_prompt_tokens = 0;
  const std::vector<int32_t>* eos_token_ids = nullptr;  // banned with stop_token_ids before min_tokens
  uint64_t seed = 0;       // the sequence's stream
  int64_t position = 0;    // position of the token being drawn
};

struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;  // of the raw model distribution (vLLM's default)
  int32_t rank = 0;      // 1 = most likely
  std::vector<int32_t> top_ids;  // the k most likely, best first (k = params.logprobs)
  std::vector<float> top_logprobs;
};

struct SampleResult {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;  // one per row; top_* filled only where asked for
};

class Sampler {
 public:
  SampleResult sample(const at::Tensor& logits, const std::vector<SamplingRow>& rows) const;
  // Logprobs of given tokens under each logits row (prompt_logprobs, beam search).
  static std::vector<TokenLogprobs> score(const at::Tensor& logits, const std::vector<int32_t>& tokens,
                                          int32_t num_top);
};

}  // namespace fastpage
