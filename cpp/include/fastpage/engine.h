// The public C++ engine: add requests in token ids, step, read outputs. No Python involved.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fastpage/config.h"
#include "fastpage/model_runner.h"
#include "fastpage/sampler.h"
#include "fastpage/sampling_params.h"
#include "fastpage/scheduler.h"

namespace fastpage {

struct StepOutput {
  std::string request_id;
  int32_t seq_index = 0;                 // which of the request's best_of sequences
  std::vector<int32_t> new_token_ids;
  std::vector<TokenLogprobs> logprobs;   // one per new token when params.logprobs is set
  std::vector<TokenLogprobs> prompt_logprobs;  // once, when the prompt is done: tokens 1..P-1
  double cumulative_logprob = 0.0;
  bool finished = false;
  FinishReason finish_reason = FinishReason::None;
  int32_t stop_token = -1;
  int32_t num_prompt_tokens = 0;
  int32_t num_cached_tokens = 0;  // prompt tokens served from the prefix cache
};

struct EngineStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int32_t num_swapped = 0;
  int32_t num_device_blocks = 0;
  int32_t num_free_device_blocks = 0;
  int64_t num_preemptions = 0;
  int64_t prefix_cache_queries = 0;  // tokens
  int64_t prefix_cache_hits = 0;     // tokens
  int64_t prompt_tokens = 0;         // computed so far
  int64_t generation_tokens = 0;
};

class ControlPlane;

// step() runs one scheduler step. With async scheduling (EngineConfig.async_scheduling) it launches
// step N and only then waits for step N-1's sampled ids, so the host's turn (update, outputs, the
// caller's handling of them, the next schedule and launch) overlaps the device's work: call N
// returns step N-1's outputs, and a sequence that finishes at N-1 (EOS, a stop id, a stop string)
// computes one discarded token in step N. A step whose rows want logprobs (or beam search, best_of
// > n) completes in its own call, as every step does without async scheduling.
//
// With config.parallel.world_size() > 1 the Engine is rank 0: it holds stage 0 / tp_rank 0's shard,
// schedules, sends every step's plan to the fastpage::Worker ranks, and samples. A failed collective
// makes step() throw std::runtime_error, and every later step() too; the destructor tells the
// workers to stop.
class Engine {
 public:
  Engine(const ModelConfig& model, const EngineConfig& config, WeightMap weights, c10::Device device,
         c10::ScalarType dtype);
  ~Engine();

  void add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                   const SamplingParams& params, std::vector<int32_t> eos_token_ids = {},
                   int32_t priority = 0);
  bool abort_request(const std::string& request_id);
  // Ends one sequence (a stop string seen by the caller); its blocks come back.
  void finish_sequence(const std::string& request_id, int32_t seq_index);
  std::vector<StepOutput> step();
  bool has_unfinished() const;
  EngineStats stats() const;
  const Scheduler& scheduler() const { return *scheduler_; }
  const ModelConfig& model_config() const { return model_config_; }
  const EngineConfig& config() const { return config_; }
  bool async_scheduling() const { return async_scheduling_; }

 private:
  void collect_prompt_logprobs(const StepPlan& plan, const at::Tensor& logits,
                               const std::vector<std::pair<int64_t, int64_t>>& prompt_rows);
  bool all_finished(const Request& request) const;
  // The plan's input tokens that are the in-flight step's sampled ids.
  DeferredInputIds deferred_inputs(const StepPlan& plan) const;
  // Waits for the in-flight step's ids, appends them (Scheduler::fill) and returns its outputs.
  std::vector<StepOutput> complete_in_flight();

  // A sampled step whose ids have not been appended yet: its rows' sequences, in row order.
  struct InFlightStep {
    PendingSample sample;
    std::vector<int64_t> seq_ids;
    std::unordered_map<int64_t, int64_t> row_of;  // seq_id -> row (async only: the next plan gathers by it)
  };

  ModelConfig model_config_;
  EngineConfig config_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<ControlPlane> control_;  // world_size > 1 only
  std::string failure_;  // why a step with the other ranks failed; the engine is unusable after it
  std::unique_ptr<Scheduler> scheduler_;
  Sampler sampler_;
  uint64_t next_seed_;
  bool async_scheduling_ = false;
  std::optional<InFlightStep> in_flight_;
  // Prompt logprobs gathered over a prompt's chunks, handed out with the first sampled token.
  std::unordered_map<std::string, std::vector<TokenLogprobs>> pending_prompt_logprobs_;
  std::unordered_set<std::string> prompt_logprobs_done_;  // not again after a recompute preemption
  int64_t num_prompt_tokens_ = 0;
  int64_t num_generation_tokens_ = 0;
};

}  // namespace fastpage
