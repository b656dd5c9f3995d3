// Turns logits into tokens: penalties, biases, masks, temperature, top-k/top-p/min-p, seeded draws,
// and logprobs. Every draw depends only on (seed, position), never on the rest of the batch.
//
// Per row, on a float32 copy of its logits (vLLM's order): the structured-output bitmask,
// allowed_token_ids mask, logit_bias, bad_words, min_tokens (bans stop_token_ids, and eos_token_ids
// unless ignore_eos), repetition penalty (prompt + output), frequency and presence penalties
// (output). Then greedy rows take the argmax; the others divide by temperature, keep tokens by min_p,
// top_k and top_p, and draw with the Gumbel-max trick over counter-based noise keyed by (seed,
// position, token id).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "fastpage/sampling_params.h"

namespace fastpage {

struct SamplingRow {
  int64_t logits_row = 0;  // row of the logits tensor (rows may repeat: n > 1 samples one row n times)
  const SamplingParams* params = nullptr;
  const std::vector<int32_t>* token_ids = nullptr;  // prompt + output so far (null: none)
  int32_t num_prompt_tokens = 0;
  const std::vector<int32_t>* eos_token_ids = nullptr;  // banned with stop_token_ids before min_tokens
  uint64_t seed = 0;       // the sequence's stream
  int64_t position = 0;    // position of the token being drawn
  // Structured outputs: the tokens the row's grammar allows next, ceil(vocab / 32) int32 words (bit
  // t % 32 of word t / 32); null: no grammar. Read at launch only.
  const int32_t* token_bitmask = nullptr;
};

struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;  // of the raw model distribution (vLLM's default)
  int32_t rank = 0;      // 1 = most likely (ties count as better); 0 = not computed
  std::vector<int32_t> top_ids;  // the k most likely, best first (k = params.logprobs)
  std::vector<float> top_logprobs;
};

struct SampleResult {
  std::vector<int32_t> tokens;
  // One per row. logprob and rank are filled for rows that want them (see wants_logprobs), top_*
  // where params.logprobs > 0; other rows carry only the token.
  std::vector<TokenLogprobs> logprobs;
};

// A sample launched and not yet waited for. On a GPU the ids are copied to pinned host memory
// behind the sampler's kernels; wait() blocks on that copy alone. Complete at launch on the CPU, and
// on a GPU when a row wants logprobs (they are computed at launch).
class PendingSample {
 public:
  PendingSample() = default;
  // Done: the result, and its ids as an int32 tensor on the logits' device.
  static PendingSample completed(SampleResult result, at::Tensor tokens);
  // In flight: `device_tokens` [rows] int32 on a GPU; `logprobs` (one per row) get their tokens at wait().
  static PendingSample copying(at::Tensor device_tokens, std::vector<TokenLogprobs> logprobs);

  // The sampled ids, int32 [rows] in row order, on the logits' device (what the next step's input
  // ids are gathered from, before the ids reach the host).
  const at::Tensor& tokens() const { return tokens_; }
  bool complete() const { return !copied_.has_value(); }
  // Blocks until the ids are on the host; call once.
  SampleResult wait();

 private:
  at::Tensor tokens_;
  at::Tensor host_tokens_;             // pinned int32, the copy's destination
  std::optional<c10::Event> copied_;  // recorded behind the copy
  SampleResult result_;
};

// Rows whose sampled token's logprob is computed: asked for (logprobs), or needed by the engine to
// rank sequences by cumulative logprob (best_of > n).
bool wants_logprobs(const SamplingParams& params);

class Sampler {
 public:
  // logits: [num_logits_rows, vocab], any floating dtype and device. On a GPU everything runs
  // there (processors as batched tensor ops, the draw in fastpage::sample_tokens with the same
  // counter-based noise, logprobs) and only the ids and the asked-for logprobs come back.
  // Throws std::invalid_argument for a logits_row or a token id (logit_bias, allowed_token_ids,
  // bad_words, stop/eos ids, penalised token_ids) outside the tensor or the vocabulary.
  SampleResult sample(const at::Tensor& logits, const std::vector<SamplingRow>& rows) const;
  // sample() without waiting for a GPU: the ids stay on the device until wait(). The rows' token_ids
  // are read at launch only.
  PendingSample launch(const at::Tensor& logits, const std::vector<SamplingRow>& rows) const;
  // Logprobs of given tokens under each logits row (prompt_logprobs, beam search): tokens[i] is
  // scored under row i; num_top < 0 means the whole vocabulary.
  static std::vector<TokenLogprobs> score(const at::Tensor& logits, const std::vector<int32_t>& tokens,
                                          int32_t num_top);
};

}  // namespace fastpage
