// The public C++ engine: add requests in token ids, step, read outputs. No Python involved.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fastpage/config.h"
#include "fastpage/model_runner.h"
#include "fastpage/sampler.h"
#include "fastpage/sampling_params.h"
#include "fastpage/scheduler.h"
#include "fastpage/structured_output.h"

namespace fastpage {

// One sequence's new tokens from one step (a row of the step's outputs). Keep it lightweight: the
// engine makes one per sequence per step.
struct StepOutput {
  RequestHandle handle = -1;             // the caller's number for the request (add_request)
  int32_t seq_index = 0;                 // which of the request's best_of sequences
  std::vector<int32_t> new_token_ids;
  std::vector<TokenLogprobs> logprobs;   // one per new token when params.logprobs is set
  std::vector<TokenLogprobs> prompt_logprobs;  // once, when the prompt is done: tokens 1..P-1
  double cumulative_logprob = 0.0;
  FinishReason finish_reason = FinishReason::None;  // None: the sequence goes on
  int32_t stop_token = -1;
  int32_t num_cached_tokens = 0;  // prompt tokens served from the prefix cache

  bool finished() const { return finish_reason != FinishReason::None; }
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

  // Throws std::invalid_argument for a request that can never run (token ids outside the
  // vocabulary, logprobs above max_logprobs, n/best_of, a prompt too long). Reads only the
  // configuration: safe from any thread, so EngineLoop checks a request before queueing it.
  void validate_request(const std::vector<int32_t>& prompt_token_ids, const SamplingParams& params) const;
  // validate_request's checks, and a request_id in use. `handle` is echoed in the outputs; -1 lets
  // the engine number the request. A request with params.structured_output comes with its grammar,
  // compiled by the grammar backend (EngineLoop compiles it off the loop). Returns the handle.
  RequestHandle add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                            const SamplingParams& params, std::vector<int32_t> eos_token_ids = {},
                            int32_t priority = 0, RequestHandle handle = -1,
                            std::shared_ptr<const CompiledGrammar> grammar = nullptr);
  // The backend whose matchers fill the structured-output bitmasks; its vocabulary must be the model's.
  void set_grammar_backend(std::shared_ptr<GrammarBackend> backend);
  bool abort_request(const std::string& request_id);
  // Ends one sequence (a stop string seen by the caller); its blocks come back.
  void finish_sequence(const std::string& request_id, int32_t seq_index);
  std::vector<StepOutput> step();
  bool has_unfinished() const;
  // A sampled step not completed yet (async scheduling): the next step() completes it, even when
  // nothing is unfinished any more (its sequences finished or were aborted meanwhile).
  bool has_in_flight() const { return in_flight_.has_value(); }
  EngineStats stats() const;
  // The scheduler's invariants (free + used == total, refcounts, queues); std::logic_error if broken.
  void check_invariants() const;
  void reset_prefix_cache();
  const ModelConfig& model_config() const { return model_config_; }
  const EngineConfig& config() const { return config_; }
  c10::Device device() const;
  bool async_scheduling() const { return async_scheduling_; }

 private:
  // The flattened positions whose logits a plan needs, and which rows of them serve what.
  struct LogitsLayout {
    std::vector<int64_t> indices;
    std::vector<int64_t> sample_row;                        // per plan seq: its sampling row, or -1
    std::vector<std::pair<int64_t, int64_t>> prompt_rows;  // per plan seq: (first row, count), or (-1, 0)
  };
  // A sequence to sample this step, with its logits row.
  struct ToSample {
    int64_t seq_id, logits_row;
    const Sequence* seq;
    const Request* request;
  };

  LogitsLayout logits_layout(const StepPlan& plan) const;
  at::Tensor execute(const StepPlan& plan, const LogitsLayout& layout);
  void collect_prompt_logprobs(const StepPlan& plan, const at::Tensor& logits, const LogitsLayout& layout);
  // The plan's sampling rows whose sequences go on; a request's first sample forks it into best_of.
  std::vector<ToSample> sequences_to_sample(const StepPlan& plan, const LogitsLayout& layout);
  // Launches the sampler over the rows and reserves their tokens; true when the step must complete
  // in this call (no async scheduling, or rows that want logprobs).
  bool launch_sample(const at::Tensor& logits, const std::vector<ToSample>& to_sample);
  bool all_finished(const Request& request) const;
  void forget_request(const Request& request);
  // Structured outputs: the bitmasks of the rows whose grammar is enforcing, written to bitmask_ and
  // pointed to by the rows (the matchers of first-time sequences are made here).
  void fill_token_bitmasks(const std::vector<ToSample>& to_sample, std::vector<SamplingRow>& rows);
  // Advances the sequence's grammar by its new token; a token the grammar refuses (every token was
  // masked, e.g. by min_tokens) aborts the sequence; a finished sequence or a complete grammar drops
  // its matcher.
  void advance_grammar(int64_t seq_id, int32_t token, FilledToken& filled);
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
  // Prompt logprobs of a request that asked for them, gathered over its prompt's chunks and handed
  // out with its first sampled token. The entry lives as long as the request (done: not again
  // after a recompute preemption), keyed by handle so a reused request_id starts afresh.
  struct PromptLogprobs {
    std::vector<TokenLogprobs> entries;
    bool done = false;
  };
  std::unordered_map<RequestHandle, PromptLogprobs> prompt_logprobs_;
  // Structured outputs: each constrained request's grammar, and each of its sequences' matcher, which
  // enforces once the output holds the request's start_after ids (at once when there are none).
  struct SequenceGrammar {
    std::unique_ptr<GrammarMatcher> matcher;
    bool enforcing = false;
  };
  std::shared_ptr<GrammarBackend> grammar_backend_;
  std::unordered_map<RequestHandle, std::shared_ptr<const CompiledGrammar>> request_grammars_;
  std::unordered_map<int64_t, SequenceGrammar> sequence_grammars_;
  std::vector<int32_t> bitmask_;  // [constrained rows, words] of the step being launched
  RequestHandle next_handle_ = 0;
  int64_t num_prompt_tokens_ = 0;
  int64_t num_generation_tokens_ = 0;
};

}  // namespace fastpage
