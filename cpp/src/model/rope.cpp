#include "rope.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/where.h>

#include <numbers>
#include <stdexcept>

namespace fastpage {
namespace {

// Llama 3.1 scaling: long wavelengths are divided by `factor`, short ones kept, the band between
// low_freq_factor and high_freq_factor interpolated smoothly.
at::Tensor apply_llama3_scaling(const at::Tensor& inv_freq, const ModelConfig& c) {
  const double old_len = static_cast<double>(c.rope_original_max_position);
  const double low_freq_wavelen = old_len / c.rope_low_freq_factor;
  const double high_freq_wavelen = old_len / c.rope_high_freq_factor;
  at::Tensor wavelen = (2.0 * std::numbers::pi) / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / c.rope_scaling_factor, inv_freq);
  at::Tensor smooth = (old_len / wavelen - c.rope_low_freq_factor) /
                      (c.rope_high_freq_factor - c.rope_low_freq_factor);
  at::Tensor smoothed = (1.0 - smooth) * scaled / c.rope_scaling_factor + smooth * scaled;
  at::Tensor is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return at::where(is_medium, smoothed, scaled);
}

}  // namespace

at::Tensor rope_inv_freq(const ModelConfig& c) {
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    throw std::invalid_argument("head_dim must be positive and even for rotary embeddings");
  }
  // 1 / theta^(2i / d), float32 like HF so positions rotate by the same angles.
  at::Tensor exponents = at::arange(0, c.head_dim, 2, at::kFloat) / static_cast<double>(c.head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(c.rope_theta, exponents);
  if (c.rope_scaling_type.empty() || c.rope_scaling_type == "default") return inv_freq;
  if (c.rope_scaling_type == "linear") return inv_freq / c.rope_scaling_factor;
  if (c.rope_scaling_type == "llama3") return apply_llama3_scaling(inv_freq, c);
  throw std::invalid_argument("rope_scaling_type '" + c.rope_scaling_type + "' is not supported");
}

at::Tensor build_cos_sin_cache(const ModelConfig& c, int64_t max_positions) {
  at::Tensor freqs = at::outer(at::arange(max_positions, at::kFloat), rope_inv_freq(c));
  return at::cat({at::cos(freqs), at::sin(freqs)}, /*dim=*/1).contiguous();
}

}  // namespace fastpage
