#include "logits_processors.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace fastpage::sampling {
namespace {

constexpr float kBanned = -std::numeric_limits<float>::infinity();

void check_token(int32_t token, int64_t vocab, const char* field) {
  if (token < 0 || token >= vocab) {
    throw std::invalid_argument(std::string(field) + ": token id " + std::to_string(token) +
                                " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
}

const std::vector<int32_t>& tokens_of(const std::vector<int32_t>* tokens) {
  static const std::vector<int32_t> kNone;
  return tokens != nullptr ? *tokens : kNone;
}

int64_t num_output_tokens(const SamplingRow& row) {
  return static_cast<int64_t>(tokens_of(row.token_ids).size()) - row.num_prompt_tokens;
}

bool min_tokens_active(const SamplingRow& row) {
  return num_output_tokens(row) < row.params->min_tokens;
}

void apply_allowed_token_ids(float* logits, int64_t vocab, const std::vector<int32_t>& allowed,
                             std::vector<float>& saved) {
  saved.clear();
  for (int32_t token : allowed) saved.push_back(logits[token]);
  std::fill(logits, logits + vocab, kBanned);
  for (size_t i = 0; i < allowed.size(); ++i) logits[allowed[i]] = saved[i];
}

// counts is all zeros on entry and on exit.
void apply_penalties(float* logits, const SamplingRow& row, std::vector<int32_t>& counts) {
  const SamplingParams& p = *row.params;
  const auto& tokens = tokens_of(row.token_ids);
  const auto output_begin = tokens.begin() + row.num_prompt_tokens;

  if (p.repetition_penalty != 1.0f) {  // once per distinct token of prompt + output
    for (int32_t token : tokens) {
      if (counts[token] != 0) continue;
      counts[token] = 1;
      float& logit = logits[token];
      logit = logit > 0.0f ? logit / p.repetition_penalty : logit * p.repetition_penalty;
    }
    for (int32_t token : tokens) counts[token] = 0;
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    for (auto it = output_begin; it != tokens.end(); ++it) ++counts[*it];
    for (auto it = output_begin; it != tokens.end(); ++it) {
      const int32_t count = counts[*it];
      if (count == 0) continue;  // already applied
      // Two steps, as vLLM (and a torch reference) computes them.
      logits[*it] -= p.frequency_penalty * static_cast<float>(count);
      logits[*it] -= p.presence_penalty;
      counts[*it] = 0;
    }
  }
}

}  // namespace

bool has_penalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

// A bad word of k tokens bans its last token when its first k - 1 tokens end the output so far.
void append_banned_tokens(const SamplingRow& row, std::vector<int32_t>& banned) {
  const auto& tokens = tokens_of(row.token_ids);
  const size_t num_output = tokens.size() - row.num_prompt_tokens;
  for (const auto& word : row.params->bad_words) {
    if (word.empty() || word.size() - 1 > num_output) continue;
    if (std::equal(word.begin(), word.end() - 1, tokens.end() - (word.size() - 1))) {
      banned.push_back(word.back());
    }
  }
  if (min_tokens_active(row)) {
    banned.insert(banned.end(), row.params->stop_token_ids.begin(), row.params->stop_token_ids.end());
    if (!row.params->ignore_eos) {
      const auto& eos = tokens_of(row.eos_token_ids);
      banned.insert(banned.end(), eos.begin(), eos.end());
    }
  }
}

void validate_token_ids(const SamplingRow& row, int64_t vocab) {
  const SamplingParams& p = *row.params;
  for (int32_t token : p.allowed_token_ids) check_token(token, vocab, "allowed_token_ids");
  for (const auto& [token, bias] : p.logit_bias) check_token(token, vocab, "logit_bias");
  for (const auto& word : p.bad_words) {
    for (int32_t token : word) check_token(token, vocab, "bad_words");
  }
  for (int32_t token : p.stop_token_ids) check_token(token, vocab, "stop_token_ids");
  for (int32_t token : tokens_of(row.eos_token_ids)) check_token(token, vocab, "eos_token_ids");
  const auto& tokens = tokens_of(row.token_ids);
  if (row.num_prompt_tokens < 0 || static_cast<size_t>(row.num_prompt_tokens) > tokens.size()) {
    throw std::invalid_argument("num_prompt_tokens " + std::to_string(row.num_prompt_tokens) +
                                " is outside [0, len(token_ids) = " + std::to_string(tokens.size()) +
                                "]");
  }
  if (has_penalties(p)) {
    for (int32_t token : tokens) check_token(token, vocab, "token_ids");
  }
}

void apply_token_bitmask(float* logits, int64_t vocab, const int32_t* bitmask) {
  for (int64_t word = 0; word * 32 < vocab; ++word) {
    const uint32_t bits = static_cast<uint32_t>(bitmask[word]);
    if (bits == 0xffffffffu) continue;
    const int64_t end = std::min<int64_t>(vocab, (word + 1) * 32);
    for (int64_t token = word * 32; token < end; ++token) {
      if (((bits >> (token & 31)) & 1u) == 0u) logits[token] = kBanned;
    }
  }
}

bool has_logits_processors(const SamplingRow& row) {
  const SamplingParams& p = *row.params;
  return row.token_bitmask != nullptr || !p.allowed_token_ids.empty() || !p.logit_bias.empty() || !p.bad_words.empty() ||
         min_tokens_active(row) || has_penalties(p);
}

void apply_logits_processors(float* logits, int64_t vocab, const SamplingRow& row,
                             ProcessorScratch& scratch) {
  const SamplingParams& p = *row.params;
  if (row.token_bitmask != nullptr) apply_token_bitmask(logits, vocab, row.token_bitmask);
  if (!p.allowed_token_ids.empty()) apply_allowed_token_ids(logits, vocab, p.allowed_token_ids, scratch.saved);
  for (const auto& [token, bias] : p.logit_bias) logits[token] += bias;
  scratch.banned.clear();
  append_banned_tokens(row, scratch.banned);
  for (int32_t token : scratch.banned) logits[token] = kBanned;
  if (has_penalties(p)) {
    if (scratch.counts.size() != static_cast<size_t>(vocab)) scratch.counts.assign(vocab, 0);
    apply_penalties(logits, row, scratch.counts);
  }
}

}  // namespace fastpage::sampling
