// The sampler on the logits' device (a GPU): processors as batched tensor ops, the draw in
// fastpage::sample_tokens, logprobs with torch reductions; only the ids and the asked-for logprobs
// come back to the host.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "fastpage/sampler.h"

namespace fastpage::sampling {

// logits: [rows, vocab] on a non-CPU device; rows already validated. Same results as the host path
// up to float rounding: the processors apply the same float operations in the same order, and the
// draw reads the same counter-based noise of (seed, position, token id).
// Launched without waiting unless a row wants logprobs (computed at once: they need the ids).
PendingSample launch_on_device(const at::Tensor& logits, const std::vector<SamplingRow>& rows);

}  // namespace fastpage::sampling
