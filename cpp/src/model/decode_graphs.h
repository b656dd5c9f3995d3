// CUDA graphs of the decode forward pass: one per padded batch size (1, 2, 4, ..., 64, then multiples
// of 64 up to max_num_seqs) and context bucket (the longest context rounded up to a power of two, from 256 to
// max_model_len), captured the first time a pure-decode step of that shape runs. The graphs read their
// inputs from static device buffers with room for the largest batch and the longest block table, so
// a step only copies its plan into them and replays; padding rows write no KV (slot -1).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <vector>

#include "fastpage/model_runner.h"
#include "fastpage/step_plan.h"

namespace fastpage {

class DecoderModel;
struct KVCache;

class DecodeGraphs {
 public:
  DecodeGraphs(const DecoderModel& model, const KVCache& cache, int64_t max_num_seqs, int64_t max_model_len,
               int64_t block_size, c10::Device device);
  ~DecodeGraphs();

  // A step the graphs can run: every sequence decodes one token and wants its logits, in order.
  bool accepts(const StepPlan& plan, const std::vector<int64_t>& logits_indices) const;
  // float32 logits [num_seqs, vocab]: a view of the graph's own output, rewritten by the next replay of
  // that graph (the engine enqueues every read of a step's logits before the next step's replay).
  // `deferred` ids are gathered into the static input buffer before the replay.
  at::Tensor run(const StepPlan& plan, const DeferredInputIds& deferred);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fastpage
