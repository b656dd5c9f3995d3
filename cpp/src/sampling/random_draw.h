// Token selection on one processed row: greedy argmax, or the seeded draw with its filters.
#pragma once
#include <cstdint>
#include <vector>

#include "fastpage/sampling_params.h"

namespace fastpage::sampling {

struct Candidate {
  float logit;
  float weight;  // exp(logit - max logit)
};

// Buffers reused between the draws of one thread.
struct DrawScratch {
  std::vector<float> values;
  std::vector<Candidate> candidates;
};

// First index of the largest logit.
int32_t argmax(const float* logits, int64_t vocab);

// Divides the row by the temperature (in place), keeps tokens by min_p, top_k and top_p (vLLM v1's
// order: top_p renormalizes over what min_p and top_k kept) and draws one with the Gumbel-max trick
// over the counter-based noise of (seed, position).
int32_t draw_token(float* logits, int64_t vocab, const SamplingParams& params, uint64_t seed,
                   int64_t position, DrawScratch& scratch);

}  // namespace fastpage::sampling
