// The logits processors that run before greedy selection or a draw, on one row's float32 copy.
#pragma once
#include <cstdint>
#include <vector>

#include "fastpage/sampler.h"

namespace fastpage::sampling {

// Throws std::invalid_argument (naming the field) for token ids the processors would index with
// that lie outside [0, vocab).
void validate_token_ids(const SamplingRow& row, int64_t vocab);

// False when the processors would leave the row unchanged.
bool has_logits_processors(const SamplingRow& row);

// Reused across the rows one thread processes; sized to the vocabulary on first use and always left
// zeroed.
struct ProcessorScratch {
  std::vector<int32_t> counts;
  std::vector<float> saved;
};

// allowed_token_ids, logit_bias, bad_words, min_tokens, repetition, frequency and presence penalties.
void apply_logits_processors(float* logits, int64_t vocab, const SamplingRow& row,
                             ProcessorScratch& scratch);

}  // namespace fastpage::sampling
