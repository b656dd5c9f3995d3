#include "device_sampling.h"

#include <ATen/ops/logsumexp.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "../host_to_device.h"
#include "fastpage/ops.h"
#include "logits_processors.h"

namespace fastpage::sampling {
namespace {

constexpr float kBanned = -std::numeric_limits<float>::infinity();

// Everything the processors and the draw need, gathered on the host in one pass over the rows:
// per-row parameters and sparse edits as flat indices row * vocab + token into the [rows, vocab]
// working copy. Sent to the device in two copies (one int64, one float32).
struct DeviceInputs {
  // [rows] each
  std::vector<int64_t> logits_rows, top_ks, seeds, positions;
  std::vector<float> temperatures, top_ps, min_ps;
  std::vector<float> repetition_penalties, frequency_penalties, presence_penalties;
  // sparse edits
  std::vector<int64_t> allowed_rows, allowed_at, bias_at, banned_at, seen_at, output_at;
  std::vector<float> biases;
  // structured outputs: per row its mask's index in `masks` or -1; the masks, concatenated
  std::vector<int64_t> bitmask_index;
  std::vector<int32_t> masks;
  bool any_repetition_penalty = false, any_count_penalty = false;

  DeviceInputs(const std::vector<SamplingRow>& rows, int64_t vocab) {
    std::vector<int32_t> banned;
    for (size_t r = 0; r < rows.size(); ++r) {
      const SamplingRow& row = rows[r];
      const SamplingParams& p = *row.params;
      const int64_t base = static_cast<int64_t>(r) * vocab;
      logits_rows.push_back(row.logits_row);
      temperatures.push_back(p.greedy() ? 0.0f : p.temperature);
      top_ks.push_back(p.top_k);
      top_ps.push_back(p.top_p);
      min_ps.push_back(p.min_p);
      int64_t seed_bits;
      std::memcpy(&seed_bits, &row.seed, sizeof(seed_bits));
      seeds.push_back(seed_bits);
      positions.push_back(row.position);
      if (row.token_bitmask != nullptr) {
        const int64_t words = (vocab + 31) / 32;
        bitmask_index.push_back(static_cast<int64_t>(masks.size()) / words);
        masks.insert(masks.end(), row.token_bitmask, row.token_bitmask + words);
      } else {
        bitmask_index.push_back(-1);
      }

      if (!p.allowed_token_ids.empty()) {
        allowed_rows.push_back(static_cast<int64_t>(r));
        for (int32_t token : p.allowed_token_ids) allowed_at.push_back(base + token);
      }
      for (const auto& [token, bias] : p.logit_bias) {
        bias_at.push_back(base + token);
        biases.push_back(bias);
      }
      banned.clear();
      append_banned_tokens(row, banned);
      for (int32_t token : banned) banned_at.push_back(base + token);

      repetition_penalties.push_back(p.repetition_penalty);
      frequency_penalties.push_back(p.frequency_penalty);
      presence_penalties.push_back(p.presence_penalty);
      if (!has_penalties(p) || row.token_ids == nullptr) continue;
      const std::vector<int32_t>& tokens = *row.token_ids;
      if (p.repetition_penalty != 1.0f) {
        any_repetition_penalty = true;
        for (int32_t token : tokens) seen_at.push_back(base + token);
      }
      if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
        any_count_penalty = true;
        for (auto it = tokens.begin() + row.num_prompt_tokens; it != tokens.end(); ++it) {
          output_at.push_back(base + *it);
        }
      }
    }
  }
};

// The host path's processors (logits_processors.cpp), in its order, on the whole batch at once.
void apply_processors(at::Tensor& x, const DeviceInputs& in, const std::vector<at::Tensor>& longs,
                      const std::vector<at::Tensor>& floats) {
  const at::Tensor& allowed_rows = longs[4];
  const at::Tensor& allowed_at = longs[5];
  const at::Tensor& bias_at = longs[6];
  const at::Tensor& banned_at = longs[7];
  const at::Tensor& seen_at = longs[8];
  const at::Tensor& output_at = longs[9];
  at::Tensor flat = x.view({-1});
  if (!in.allowed_rows.empty()) {
    const at::Tensor kept = flat.index_select(0, allowed_at);
    x.index_fill_(0, allowed_rows, kBanned);
    flat.index_copy_(0, allowed_at, kept);
  }
  if (!in.bias_at.empty()) flat.index_add_(0, bias_at, floats[6]);
  if (!in.banned_at.empty()) flat.index_fill_(0, banned_at, kBanned);
  if (in.any_repetition_penalty) {  // once per distinct token of prompt + output
    const at::Tensor penalty = floats[3].unsqueeze(1);
    at::Tensor seen = at::zeros_like(flat, flat.options().dtype(at::kBool));
    seen.index_fill_(0, seen_at, true);
    x = at::where(seen.view_as(x), at::where(x.gt(0), x.div(penalty), x.mul(penalty)), x);
  }
  if (in.any_count_penalty) {  // output tokens only; two steps, as the host path
    at::Tensor counts = at::zeros_like(flat);
    counts.index_add_(0, output_at, at::ones({output_at.size(0)}, flat.options()));
    counts = counts.view_as(x);
    x = x.sub(counts.mul(floats[4].unsqueeze(1)));
    x = x.sub(counts.gt(0).to(at::kFloat).mul(floats[5].unsqueeze(1)));
  }
}

// Logprobs of the raw model distribution for the rows that want them, as compute_logprobs does on
// the host: logprob = logit - logsumexp(row), rank = tokens at least as likely, the top ids.
void fill_logprobs(const at::Tensor& logits, const std::vector<SamplingRow>& rows, const at::Tensor& tokens,
                   SampleResult& result) {
  std::vector<int64_t> wanted, wanted_logits_rows;
  int64_t max_top = 0;
  const int64_t vocab = logits.size(1);
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!wants_logprobs(*rows[r].params)) continue;
    wanted.push_back(static_cast<int64_t>(r));
    wanted_logits_rows.push_back(rows[r].logits_row);
    max_top = std::max<int64_t>(max_top, std::min<int64_t>(rows[r].params->logprobs.value_or(0), vocab));
  }
  if (wanted.empty()) return;
  const std::vector<at::Tensor> index = upload<int64_t>({part(wanted), part(wanted_logits_rows)}, logits.device());
  const at::Tensor raw = logits.index_select(0, index[1]).to(at::kFloat);
  const at::Tensor chosen = tokens.index_select(0, index[0]).unsqueeze(1);
  const at::Tensor log_normalizer = at::logsumexp(raw, {1}, /*keepdim=*/true);
  const at::Tensor chosen_logit = raw.gather(1, chosen);
  const at::Tensor logprob = chosen_logit.sub(log_normalizer).squeeze(1).cpu();
  const at::Tensor rank = raw.ge(chosen_logit).sum(1).cpu();
  at::Tensor top_logprobs, top_ids;
  if (max_top > 0) {
    auto [values, ids] = at::topk(raw, max_top, 1, /*largest=*/true, /*sorted=*/true);
    top_logprobs = values.sub(log_normalizer).cpu();
    top_ids = ids.cpu();
  }
  for (size_t w = 0; w < wanted.size(); ++w) {
    TokenLogprobs& out = result.logprobs[wanted[w]];
    out.logprob = logprob.const_data_ptr<float>()[w];
    out.rank = static_cast<int32_t>(rank.const_data_ptr<int64_t>()[w]);
    const int64_t num_top = std::min<int64_t>(rows[wanted[w]].params->logprobs.value_or(0), vocab);
    for (int64_t k = 0; k < num_top; ++k) {
      out.top_ids.push_back(static_cast<int32_t>(top_ids.const_data_ptr<int64_t>()[w * max_top + k]));
      out.top_logprobs.push_back(top_logprobs.const_data_ptr<float>()[w * max_top + k]);
    }
  }
}

}  // namespace

PendingSample launch_on_device(const at::Tensor& logits, const std::vector<SamplingRow>& rows) {
  const int64_t vocab = logits.size(1);
  const DeviceInputs in(rows, vocab);
  const c10::Device device = logits.device();
  const std::vector<at::Tensor> longs = upload<int64_t>(
      {part(in.logits_rows), part(in.top_ks), part(in.seeds), part(in.positions), part(in.allowed_rows),
       part(in.allowed_at), part(in.bias_at), part(in.banned_at), part(in.seen_at), part(in.output_at),
       part(in.bitmask_index)},
      device);
  const std::vector<at::Tensor> floats = upload<float>(
      {part(in.temperatures), part(in.top_ps), part(in.min_ps), part(in.repetition_penalties),
       part(in.frequency_penalties), part(in.presence_penalties), part(in.biases)},
      device);

  at::Tensor x = logits.index_select(0, longs[0]).to(at::kFloat).contiguous();
  apply_processors(x, in, longs, floats);
  std::optional<at::Tensor> token_bitmask, bitmask_index;
  if (!in.masks.empty()) {
    token_bitmask = upload<int32_t>({part(in.masks)}, device)[0].view({-1, (vocab + 31) / 32});
    bitmask_index = longs[10];
  }
  const at::Tensor tokens = ops::sample_tokens(x.contiguous(), floats[0], longs[1], floats[1], floats[2],
                                                longs[2], longs[3], token_bitmask, bitmask_index);
  at::Tensor ids = tokens.to(at::kInt);
  const bool any_logprobs =
      std::any_of(rows.begin(), rows.end(), [](const SamplingRow& row) { return wants_logprobs(*row.params); });
  if (!any_logprobs) return PendingSample::copying(std::move(ids), std::vector<TokenLogprobs>(rows.size()));

  SampleResult result;
  const at::Tensor host_tokens = ids.cpu();  // the step's wait for the device
  result.tokens.assign(host_tokens.const_data_ptr<int32_t>(), host_tokens.const_data_ptr<int32_t>() + rows.size());
  result.logprobs.resize(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) result.logprobs[r].token = result.tokens[r];
  fill_logprobs(logits, rows, tokens, result);
  return PendingSample::completed(std::move(result), std::move(ids));
}

}  // namespace fastpage::sampling
