// The logits processors that run before greedy selection or a draw, on one row's float32 copy.
#pragma once
#include <cstdint>
#include <vector>

#include "fastpage/sampler.h"

namespace fastpage::sampling {

// Throws std::invalid_argument (naming the field) for token ids the processors would index with
// that lie outside [0, vocab).
void validate_token_ids(const SamplingRow& row, int64_t vocab);

bool has_penalties(const SamplingParams& params);

// Appends the tokens the row bans outright this step: the last token of each bad word whose other
// tokens end the output so far, and before min_tokens the stop ids (and eos ids unless ignore_eos).
void append_banned_tokens(const SamplingRow& row, std::vector<int32_t>& banned);

// Sets the logits of the tokens a structured-output bitmask clears (bit t % 32 of word t / 32) to -inf.
void apply_token_bitmask(float* logits, int64_t vocab, const int32_t* bitmask);

// False when the processors would leave the row unchanged.
bool has_logits_processors(const SamplingRow& row);

// Reused across the rows one thread processes; sized to the vocabulary on first use and always left
// zeroed.
struct ProcessorScratch {
  std::vector<int32_t> counts;
  std::vector<float> saved;
  std::vector<int32_t> banned;
};

// The structured-output bitmask, allowed_token_ids, logit_bias, bans (bad_words, min_tokens),
// repetition, frequency and presence penalties, in this order (vLLM's).
void apply_logits_processors(float* logits, int64_t vocab, const SamplingRow& row,
                             ProcessorScratch& scratch);

}  // namespace fastpage::sampling
