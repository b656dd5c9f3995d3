#include "fastpage/sampler.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "fastpage/ops.h"
#include "host_to_device.h"
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
void sample_plain_greedy(const at::Tensor& logits, const std::vector<SamplingRow>& rows,
                         const std::vector<int64_t>& row_indices, std::vector<int32_t>& tokens) {
  if (row_indices.empty()) return;
  const int64_t vocab = logits.size(1);
  const float* logits_data = logits.const_data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(row_indices.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const SamplingRow& row = rows[row_indices[i]];
      tokens[row_indices[i]] = sampling::argmax(logits_data + row.logits_row * vocab, vocab);
    }
  });
}

// Every row plain greedy on a GPU: the argmax runs there and the ids stay there until wait().
PendingSample launch_greedy_on_device(const at::Tensor& logits, const std::vector<SamplingRow>& rows) {
  at::Tensor ids = ops::argmax_rows(logits);
  std::vector<int64_t> logits_rows;
  logits_rows.reserve(rows.size());
  for (const SamplingRow& row : rows) logits_rows.push_back(row.logits_row);
  bool one_per_logits_row = static_cast<int64_t>(rows.size()) == logits.size(0);
  for (size_t r = 0; one_per_logits_row && r < rows.size(); ++r) one_per_logits_row = logits_rows[r] == int64_t(r);
  if (!one_per_logits_row) ids = ids.index_select(0, upload<int64_t>({part(logits_rows)}, logits.device())[0]);
  return PendingSample::copying(ids.to(at::kInt), std::vector<TokenLogprobs>(rows.size()));
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
  return params.logprobs.has_value() || params.best_of > params.n;
}

PendingSample PendingSample::completed(SampleResult result, at::Tensor tokens) {
  PendingSample pending;
  pending.tokens_ = std::move(tokens);
  pending.result_ = std::move(result);
  return pending;
}

PendingSample PendingSample::copying(at::Tensor device_tokens, std::vector<TokenLogprobs> logprobs) {
  PendingSample pending;
  const c10::Device device = device_tokens.device();
  pending.host_tokens_ = at::empty({device_tokens.size(0)}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  pending.host_tokens_.copy_(device_tokens, /*non_blocking=*/true);
  c10::Event copied(device.type());
  copied.record(c10::impl::getDeviceGuardImpl(device.type())->getStream(device));
  pending.copied_.emplace(std::move(copied));
  pending.tokens_ = std::move(device_tokens);
  pending.result_.logprobs = std::move(logprobs);
  return pending;
}

SampleResult PendingSample::wait() {
  if (copied_) {
    copied_->synchronize();
    copied_.reset();
    const int32_t* ids = host_tokens_.const_data_ptr<int32_t>();
    result_.tokens.assign(ids, ids + host_tokens_.numel());
    for (size_t r = 0; r < result_.tokens.size(); ++r) result_.logprobs[r].token = result_.tokens[r];
    host_tokens_ = at::Tensor();
  }
  return std::move(result_);
}

SampleResult Sampler::sample(const at::Tensor& logits, const std::vector<SamplingRow>& rows) const {
  return launch(logits, rows).wait();
}

PendingSample Sampler::launch(const at::Tensor& logits_in, const std::vector<SamplingRow>& rows) const {
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
  if (!logits_in.is_cpu()) {
    if (!processed.empty() || any_logprobs) return sampling::launch_on_device(logits_in, rows);
    return launch_greedy_on_device(logits_in, rows);
  }
  const at::Tensor logits = cpu_float_logits(logits_in);
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
  at::Tensor tokens = at::empty({static_cast<int64_t>(rows.size())}, at::TensorOptions().dtype(at::kInt));
  std::copy(result.tokens.begin(), result.tokens.end(), tokens.data_ptr<int32_t>());
  return PendingSample::completed(std::move(result), std::move(tokens));
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
