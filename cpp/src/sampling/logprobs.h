// Logprobs of the raw model distribution: the token's logprob, its rank and the top tokens.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "fastpage/sampler.h"

namespace fastpage::sampling {

struct LogprobsRequest {
  int64_t logits_row = 0;
  int32_t token = 0;
  int32_t num_top = 0;  // < 0: the whole vocabulary
  TokenLogprobs* out = nullptr;
};

// logits: CPU float32 [rows, vocab], contiguous. Works on the raw logits, one distinct row at a
// time (log-normalizer, topk, rank count), so nothing of the tensor's size is allocated.
void compute_logprobs(const at::Tensor& logits, const std::vector<LogprobsRequest>& requests);

}  // namespace fastpage::sampling
