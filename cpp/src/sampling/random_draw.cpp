#include "random_draw.h"

#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>

#include "counter_rng.h"

namespace fastpage::sampling {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The k-th largest logit (0 < k < vocab) without sorting the row: a min-heap of the k best so far
// for small k, a selection on a copy otherwise.
float kth_largest(const float* logits, int64_t vocab, int64_t k, std::vector<float>& scratch) {
  const auto min_first = std::greater<float>();
  if (k * 16 > vocab) {
    scratch.assign(logits, logits + vocab);
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), min_first);
    return scratch[k - 1];
  }
  scratch.assign(logits, logits + k);
  std::make_heap(scratch.begin(), scratch.end(), min_first);
  for (int64_t i = k; i < vocab; ++i) {
    if (logits[i] <= scratch.front()) continue;
    std::pop_heap(scratch.begin(), scratch.end(), min_first);
    scratch.back() = logits[i];
    std::push_heap(scratch.begin(), scratch.end(), min_first);
  }
  return scratch.front();
}

// Finds the boundary token of top_p among candidates in [lo, hi) without sorting them all: a
// quickselect on mass (three-way partitions around a pivot logit, descending into the side that holds
// the boundary), then a sort of the last few. `mass_before` is the mass of the tokens above them.
float boundary_logit(std::vector<Candidate>::iterator lo, std::vector<Candidate>::iterator hi,
                     double mass_before, double target, float cut) {
  auto mass = [](auto first, auto last) {
    double sum = 0.0;
    for (auto it = first; it != last; ++it) sum += it->weight;
    return sum;
  };
  while (hi - lo > 64) {
    const float a = lo->logit, b = lo[(hi - lo) / 2].logit, c = hi[-1].logit;
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    const auto greater_end = std::partition(lo, hi, [&](const Candidate& x) { return x.logit > pivot; });
    const auto equal_end = std::partition(greater_end, hi, [&](const Candidate& x) { return x.logit == pivot; });
    const double mass_greater = mass(lo, greater_end);
    if (mass_before + mass_greater >= target) {
      hi = greater_end;
      continue;
    }
    const double mass_equal = mass(greater_end, equal_end);
    if (mass_before + mass_greater + mass_equal >= target) return pivot;
    mass_before += mass_greater + mass_equal;
    lo = equal_end;
  }
  std::sort(lo, hi, [](const Candidate& x, const Candidate& y) { return x.logit > y.logit; });
  for (auto it = lo; it != hi && mass_before < target; ++it) {
    cut = it->logit;
    mass_before += it->weight;
  }
  return cut;
}

// Mass histogram of top_p: bucket b holds the tokens kBucketsPerLogit * (max_logit - logit) in
// [b, b + 1); the last bucket takes everything further down.
constexpr int kNumBuckets = 256;
constexpr float kBucketsPerLogit = 8.0f;

int bucket_of(float logit, float max_logit) {
  return static_cast<int>(std::min((max_logit - logit) * kBucketsPerLogit, kNumBuckets - 1.0f));
}

// The smallest logit top_p keeps among the tokens at or above `floor`. In descending order a token is
// kept while the probability mass before it is below top_p (vLLM's rule: the top token always stays).
// One pass builds a mass histogram by logit; only the bucket where the kept mass reaches top_p is
// then searched token by token.
float top_p_floor(const float* logits, int64_t vocab, float floor, float max_logit, float top_p,
                  DrawScratch& scratch) {
  auto kept = [&](float logit) { return logit >= floor && logit != kNegInf; };
  std::vector<float>& weights = scratch.values;
  weights.resize(vocab);
  for (int64_t i = 0; i < vocab; ++i) weights[i] = kept(logits[i]) ? logits[i] - max_logit : kNegInf;
  at::from_blob(weights.data(), {vocab}, at::kFloat).exp_();  // ATen's vectorized exp

  std::array<double, kNumBuckets> bucket_mass{};
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (!kept(logits[i])) continue;
    bucket_mass[bucket_of(logits[i], max_logit)] += weights[i];
    total += weights[i];
  }
  const double target = static_cast<double>(top_p) * total;
  double mass_before = 0.0;
  int boundary = 0;
  while (boundary < kNumBuckets - 1 && mass_before + bucket_mass[boundary] < target) {
    mass_before += bucket_mass[boundary++];
  }

  std::vector<Candidate>& candidates = scratch.candidates;
  candidates.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    if (kept(logits[i]) && bucket_of(logits[i], max_logit) == boundary) {
      candidates.push_back({logits[i], weights[i]});
    }
  }
  if (candidates.empty()) return floor;  // rounding kept the mass below target: keep everything
  return boundary_logit(candidates.begin(), candidates.end(), mass_before, target, max_logit);
}

// Upper bounds of the Gumbel noise for each value of the top kBoundBits of the noise bits (the noise
// grows with the bits): a token whose logit plus its bound cannot beat the best key so far is
// skipped after the hash, without the two logarithms.
constexpr int kBoundBits = 10;

const std::array<float, 1 << kBoundBits>& gumbel_upper_bounds() {
  static const std::array<float, 1 << kBoundBits> bounds = [] {
    std::array<float, 1 << kBoundBits> b{};
    for (size_t i = 0; i + 1 < b.size(); ++i) {
      const double upper_uniform = static_cast<double>(i + 1) / b.size();
      // The margin covers float rounding in gumbel_from_bits (~1e-6 at most).
      b[i] = static_cast<float>(-std::log(-std::log(upper_uniform))) + 1e-3f;
    }
    b.back() = kMaxGumbel;
    return b;
  }();
  return bounds;
}

}  // namespace

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  float best_logit = logits[0];
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > best_logit) {
      best = i;
      best_logit = logits[i];
    }
  }
  return static_cast<int32_t>(best);
}

int32_t draw_token(float* logits, int64_t vocab, const SamplingParams& params, uint64_t seed,
                   int64_t position, DrawScratch& scratch) {
  for (int64_t i = 0; i < vocab; ++i) logits[i] /= params.temperature;
  const int32_t top = argmax(logits, vocab);
  const float max_logit = logits[top];
  if (max_logit == kNegInf) return top;  // every token banned: nothing to draw from

  // Kept tokens are those at or above `floor`.
  float floor = kNegInf;
  if (params.min_p > 0.0f) floor = max_logit + std::log(params.min_p);  // p >= min_p * p_max
  if (params.top_k > 0 && params.top_k < vocab) {
    floor = std::max(floor, kth_largest(logits, vocab, params.top_k, scratch.values));
  }
  if (params.top_p < 1.0f) {
    floor = std::max(floor, top_p_floor(logits, vocab, floor, max_logit, params.top_p, scratch));
  }

  // Gumbel-max over the kept tokens, starting from the most likely one so that tokens which cannot
  // win are skipped early: first against the largest possible noise, then against a bound of their
  // own noise read from its top bits. Both skips are exact: the winner is the same without them.
  const auto& bounds = gumbel_upper_bounds();
  const uint64_t stream = draw_stream(seed, position);
  int32_t best = top;
  float best_key = max_logit + gumbel_noise(stream, top);
  for (int64_t i = 0; i < vocab; ++i) {
    const float logit = logits[i];
    if (logit < floor || logit + kMaxGumbel < best_key || i == top) continue;
    const uint64_t bits = noise_bits(stream, i);
    if (logit + bounds[bits >> (64 - kBoundBits)] < best_key) continue;
    const float key = logit + gumbel_from_bits(bits);
    if (key > best_key || (key == best_key && i < best)) {
      best = static_cast<int32_t>(i);
      best_key = key;
    }
  }
  return best;
}

}  // namespace fastpage::sampling
