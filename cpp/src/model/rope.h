// Rotary position embedding tables, computed from the model config.
#pragma once
#include <ATen/core/Tensor.h>

#include "fastpage/config.h"

namespace fastpage {

// The per-frequency inverse wavelengths [head_dim / 2], with the config's rope scaling applied
// (none, "linear", "llama3"), in float32 as HF computes them.
at::Tensor rope_inv_freq(const ModelConfig& config);

// cos_sin_cache [max_positions, head_dim] = [cos | sin] of position * inv_freq, the layout
// fastpage::ops::rotary_embedding reads.
at::Tensor build_cos_sin_cache(const ModelConfig& config, int64_t max_positions);

}  // namespace fastpage
