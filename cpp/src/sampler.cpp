#include "fastpage/sampler.h"

#include <ATen/Parallel.h>
#include <ATen/ops/argmax.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "sampling/device_sampling.h"
#include "sampling/logits_processors.h"
#include "sampling/logprobs.h"
#include "sampling/random_draw.h"

namespace fastpage {
namespace {

void check_logits(const at::Tensor& logits) {
  if (logits.dim() != 2 || logits.size(1) == 0) {
    throw std::invalid_argument("logits must be [rows, vocab] with vocab > 0, got " +
                                std::to_string(logits.dim()) + " dims");
  }
  if (!at::isFloatingType(logits.scalar_type())) {
    throw std::invalid_argument("logits must have a floating dtype");
  }
}

// The logits as a contiguous CPU float32 [rows, vocab] tensor (a no-op for CPU runner output).
at::Tensor cpu_float_logits(const at::Tensor& logits) {
  check_logits(logits);
  return logits.to(at::kCPU, at::kFloat).contiguous();
}

void validate_row(const SamplingRow& row, int64_t num_logits_rows, int64_t vocab) {
  if (row.params == nullptr) throw std::invalid_argument("SamplingRow.params is null");
  if (row.logits_row < 0 || row.logits_row >= num_logits_rows) {
    throw std::invalid_argument("logits_row " + std::to_string(row.logits_row) +
                                " is outside the logits' " + std::to_string(num_logits_rows) + " rows");
  }
  sampling::validate_token_ids(row, vocab);
}

int32_t num_top_logprobs(const SamplingParams& params) {
  return params.logprobs.value_or(0);
}

// Greedy rows that no processor touches: argmax straight on their logits rows, no copy. (A plain
// loop: ATen's CPU argmax measured no faster per row, and batching would first gather the rows.)
// On a GPU the argmax of every logits row runs there and only the ids come back to the host.
void sample_plain_greedy(const at::Tensor& logits, const std::vector<SamplingRow>& rows,
                         const std::vector<int64_t>& row_indices, std::vector<int32_t>& tokens) {
  if (row_indices.empty()) return;
  if (!logits.is_cpu()) {
    const at::Tensor row_argmax = at::argmax(logits, /*dim=*/1).to(at::kCPU);
    const int64_t* best = row_argmax.const_data_ptr<int64_t>();
    for (int64_t i : row_indices) tokens[i] = static_cast<int32_t>(best[rows[i].logits_row]);
    return;
  }
  const int64_t vocab = logits.size(1);
  const float* logits_data = logits.const_data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(row_indices.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const SamplingRow& row = rows[row_indices[i]];
      tokens[row_indices[i]] = sampling::argmax(logits_data + row.logits_row * vocab, vocab);
    }
  });
}

// The other rows, each on its own float32 copy: processors, then argmax or a seeded draw.
void sample_processed(const at::Tensor& logits, const std::vector<SamplingRow>& rows,
                      const std::vector<int64_t>& row_indices, std::vector<int32_t>& tokens) {
  if (row_indices.empty()) return;
  const int64_t vocab = logits.size(1);
  const float* logits_data = logits.const_data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(row_indices.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row_logits(vocab);
    sampling::DrawScratch draw_scratch;
    sampling::ProcessorScratch processor_scratch;
    for (int64_t i = begin; i < end; ++i) {
      const SamplingRow& row = rows[row_indices[i]];
      const float* source = logits_data + row.logits_row * vocab;
      std::copy(source, source + vocab, row_logits.begin());
      sampling::apply_logits_processors(row_logits.data(), vocab, row, processor_scratch);
      tokens[row_indices[i]] =
          row.params->greedy()
              ? sampling::argmax(row_logits.data(), vocab)
              : sampling::draw_token(row_logits.data(), vocab, *row.params, row.seed, row.position,
                                     draw_scratch);
    }
  });
}

}  // namespace

bool wants_logprobs(const SamplingParams& params) {
  return params.logprobs.has_value() || params.best_of > params.n || params.beam_width > 0;
}

SampleResult Sampler::sample(const at::Tensor& logits_in, const std::vector<SamplingRow>& rows) const {
  check_logits(logits_in);
  const int64_t vocab = logits_in.size(1);
  for (const SamplingRow& row : rows) validate_row(row, logits_in.size(0), vocab);

  std::vector<int64_t> plain_greedy, processed;
  bool any_logprobs = false;
  for (size_t i = 0; i < rows.size(); ++i) {
    const bool plain = rows[i].params->greedy() && !sampling::has_logits_processors(rows[i]);
    (plain ? plain_greedy : processed).push_back(static_cast<int64_t>(i));
    any_logprobs = any_logprobs || wants_logprobs(*rows[i].params);
  }
  // Device logits never come to the host: rows that need more than their argmax run on the device.
  if (!logits_in.is_cpu() && (!processed.empty() || any_logprobs)) {
    return sampling::sample_on_device(logits_in, rows);
  }
  const at::Tensor logits = logits_in.is_cpu() ? cpu_float_logits(logits_in) : logits_in;
  SampleResult result;
  result.tokens.resize(rows.size());
  {
    RECORD_USER_SCOPE("fastpage::sample_kernels");  // the draws themselves, apart from the bookkeeping
    sample_plain_greedy(logits, rows, plain_greedy, result.tokens);
    sample_processed(logits, rows, processed, result.tokens);
  }

  result.logprobs.resize(rows.size());
  std::vector<sampling::LogprobsRequest> requests;
  for (size_t i = 0; i < rows.size(); ++i) {
    result.logprobs[i].token = result.tokens[i];
    if (!wants_logprobs(*rows[i].params)) continue;
    requests.push_back({rows[i].logits_row, result.tokens[i], num_top_logprobs(*rows[i].params),
                        &result.logprobs[i]});
  }
  if (!requests.empty()) sampling::compute_logprobs(logits, requests);
  return result;
}

std::vector<TokenLogprobs> Sampler::score(const at::Tensor& logits_in, const std::vector<int32_t>& tokens,
                                          int32_t num_top) {
  const at::Tensor logits = cpu_float_logits(logits_in);
  const int64_t vocab = logits.size(1);
  if (static_cast<int64_t>(tokens.size()) != logits.size(0)) {
    throw std::invalid_argument("score: " + std::to_string(tokens.size()) + " tokens for " +
                                std::to_string(logits.size(0)) + " logits rows");
  }
  std::vector<TokenLogprobs> scores(tokens.size());
  std::vector<sampling::LogprobsRequest> requests(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      throw std::invalid_argument("score: token id " + std::to_string(tokens[i]) +
                                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
    requests[i] = {static_cast<int64_t>(i), tokens[i], num_top, &scores[i]};
  }
  if (!requests.empty()) sampling::compute_logprobs(logits, requests);
  return scores;
}

}  // namespace fastpage
