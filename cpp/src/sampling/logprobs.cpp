#include "logprobs.h"

#include <ATen/Parallel.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/topk.h>

#include <algorithm>
#include <numeric>

namespace fastpage::sampling {
namespace {

int64_t clamp_top(int32_t num_top, int64_t vocab) {
  return num_top < 0 ? vocab : std::min<int64_t>(num_top, vocab);
}

// logprob = logit - logsumexp(row); the rank and the top tokens come from the raw logits, whose
// order within a row is the logprobs' order.
void fill(const float* row_logits, int64_t vocab, float log_normalizer, const LogprobsRequest& request,
          const float* top_logits, const int64_t* top_indices) {
  TokenLogprobs& out = *request.out;
  const float logit = row_logits[request.token];
  int32_t num_at_least = 0;  // the token itself included
  for (int64_t j = 0; j < vocab; ++j) num_at_least += row_logits[j] >= logit;
  out.token = request.token;
  out.logprob = logit - log_normalizer;
  out.rank = num_at_least;
  const int64_t num_top = clamp_top(request.num_top, vocab);
  out.top_ids.assign(top_indices, top_indices + num_top);
  out.top_logprobs.resize(num_top);
  for (int64_t k = 0; k < num_top; ++k) out.top_logprobs[k] = top_logits[k] - log_normalizer;
}

}  // namespace

void compute_logprobs(const at::Tensor& logits, const std::vector<LogprobsRequest>& requests) {
  const int64_t vocab = logits.size(1);
  const float* logits_data = logits.const_data_ptr<float>();

  // Requests grouped by logits row: group g is order[group_begin[g] .. group_begin[g + 1]).
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return requests[a].logits_row < requests[b].logits_row; });
  std::vector<size_t> group_begin;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i == 0 || requests[order[i]].logits_row != requests[order[i - 1]].logits_row) group_begin.push_back(i);
  }
  group_begin.push_back(order.size());

  const int64_t num_groups = static_cast<int64_t>(group_begin.size()) - 1;
  at::parallel_for(0, num_groups, 1, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      const int64_t row = requests[order[group_begin[g]]].logits_row;
      const at::Tensor row_logits = logits.select(0, row);
      const float log_normalizer = at::logsumexp(row_logits, 0).item<float>();
      int64_t max_top = 0;
      for (size_t i = group_begin[g]; i < group_begin[g + 1]; ++i) {
        max_top = std::max(max_top, clamp_top(requests[order[i]].num_top, vocab));
      }
      at::Tensor top_logits, top_indices;
      if (max_top > 0) {
        auto top = at::topk(row_logits, max_top, 0, /*largest=*/true, /*sorted=*/true);
        top_logits = std::get<0>(top).contiguous();
        top_indices = std::get<1>(top).contiguous();
      }
      for (size_t i = group_begin[g]; i < group_begin[g + 1]; ++i) {
        fill(logits_data + row * vocab, vocab, log_normalizer, requests[order[i]],
             max_top > 0 ? top_logits.const_data_ptr<float>() : nullptr,
             max_top > 0 ? top_indices.const_data_ptr<int64_t>() : nullptr);
      }
    }
  });
}

}  // namespace fastpage::sampling
