// The engine on a thread of its own. Other threads talk to it through one queue of typed commands
// (add, abort, finish a sequence), drained between steps, and take the steps' outputs as one batch.
// That queue is the only thread-safe door into the core: the Engine and its Scheduler are touched by
// the loop's thread alone (or, without start(), by whoever calls step()).
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fastpage/engine.h"
#include "fastpage/structured_output.h"

namespace fastpage {

class GrammarCompileQueue;

// The outputs published since the last take(), struct-of-arrays: one row per sequence that got
// tokens or finished; the rows of several steps for one sequence are merged into one, in order.
struct StepBatch {
  std::vector<RequestHandle> handles;
  std::vector<int32_t> seq_indices;
  std::vector<int32_t> token_offsets{0};  // rows + 1: row r's tokens are token_ids[offsets[r], offsets[r + 1])
  std::vector<int32_t> token_ids;
  std::vector<uint8_t> finish_reasons;  // FinishReason; None while the sequence goes on
  std::vector<int32_t> stop_tokens;     // the stop_token_ids entry that ended it, else -1
  std::vector<double> cumulative_logprobs;
  std::vector<int32_t> num_cached_tokens;  // prompt tokens served from the prefix cache
  // Only the rows that asked: their row index, and one entry per token of the row (logprobs) or
  // per prompt token 1..P-1 (prompt logprobs, once).
  std::vector<int32_t> logprob_rows;
  std::vector<std::vector<TokenLogprobs>> logprobs;
  std::vector<int32_t> prompt_logprob_rows;
  std::vector<std::vector<TokenLogprobs>> prompt_logprobs;
  // Requests the engine refused when their add command ran (a request_id in use), with why.
  std::vector<RequestHandle> rejected_handles;
  std::vector<std::string> rejected_reasons;
  double timestamp = 0.0;  // steady-clock seconds (Python's time.monotonic()) when the last step ended
  int64_t num_steps = 0;   // steps merged into this batch
  EngineStats stats;       // after the last step
  std::string failure;     // non-empty: a step failed; the engine is dead and no batch follows

  size_t num_rows() const { return handles.size(); }
};

class EngineLoop {
 public:
  explicit EngineLoop(std::unique_ptr<Engine> engine);
  ~EngineLoop();  // stops the thread

  // From any thread. abort_request and finish_sequence take effect at once while the thread is not
  // started (the caller owns the engine then), else before the next step. add_request validates at
  // once (std::invalid_argument, as Engine::validate_request); the request joins the engine before
  // the next step, or, with a structured output, once its grammar is compiled (off the loop; a
  // grammar that fails to compile, or not within the time limit, rejects the request). The handle is
  // the caller's number for the request (unique among its live requests); outputs carry it. The
  // caller picks it so that it can be ready for the request's outputs before they can exist.
  void add_request(RequestHandle handle, const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                   const SamplingParams& params, std::vector<int32_t> eos_token_ids = {}, int32_t priority = 0);
  void abort_request(const std::string& request_id);
  void finish_sequence(const std::string& request_id, int32_t seq_index);
  // Structured outputs: the backend that compiles grammars (on `compile_threads` workers, each
  // within `compile_timeout_s`) and fills their bitmasks. Call before requests with one arrive.
  void set_grammar_backend(std::shared_ptr<GrammarBackend> backend, int32_t compile_threads,
                           double compile_timeout_s);
  // Runs fn on the engine between two steps and waits for it (its exception is rethrown here).
  void run_between_steps(const std::function<void(Engine&)>& fn);

  // A thread of its own runs steps back to back while there is work, until stop(), which then
  // applies the commands that came after the thread's last step.
  void start();
  void stop();
  bool running() const { return thread_.joinable(); }
  // Without start(): applies the queued commands and runs one step on the calling thread, publishing
  // its outputs as the thread would. Rethrows a failed step (after publishing the failure).
  void step();
  // Waits up to timeout_s (0: not at all) for published outputs and returns them all, merged.
  StepBatch take(double timeout_s);

  // Queued commands, or unfinished work in the engine (as of the last step while started).
  bool has_unfinished() const;
  EngineStats stats() const;  // as of the last step while started
  // CPU time of the thread that ran the steps, spent inside them (the step's own threads not counted).
  double step_cpu_seconds() const { return step_cpu_seconds_.load(std::memory_order_relaxed); }
  // Immutable after construction (config, model_config, async_scheduling): safe from any thread.
  const Engine& engine() const { return *engine_; }

 private:
  struct Command;
  // One sequence's outputs not taken yet.
  struct PendingRow {
    StepOutput output;
    bool has_logprobs = false;
  };

  void run();
  // Queued while the thread runs; applied at once otherwise.
  void submit(Command command);
  // Applies commands, runs one step, publishes; false once the engine failed.
  bool apply_and_step(std::vector<Command>& commands);
  void apply(Command& command);
  void publish(std::vector<StepOutput> outputs);
  void publish_failure(const std::string& why);
  void reject(RequestHandle handle, const std::string& why);
  // A grammar compiled (or not): its request joins the engine, unless it was aborted meanwhile.
  void grammar_done(RequestHandle handle, std::shared_ptr<const CompiledGrammar> grammar, const std::string& error);

  std::unique_ptr<Engine> engine_;
  std::thread thread_;

  mutable std::mutex commands_mutex_;
  std::condition_variable work_ready_;
  std::vector<Command> commands_;
  std::unordered_map<RequestHandle, Command> compiling_;  // adds waiting for their grammar
  bool stopping_ = false;
  bool engine_busy_ = false;  // the engine had unfinished work after the last step
  std::string failure_;

  mutable std::mutex outputs_mutex_;
  std::condition_variable outputs_ready_;
  std::vector<PendingRow> pending_;
  std::unordered_map<RequestHandle, std::vector<std::pair<int32_t, size_t>>> pending_rows_;  // handle -> (seq, row)
  StepBatch pending_meta_;  // timestamp, num_steps, stats, failure, rejected requests
  EngineStats stats_;

  std::atomic<double> step_cpu_seconds_{0.0};
  std::unique_ptr<GrammarCompileQueue> compile_queue_;  // declared last: destroyed first, its callbacks use the rest
};

}  // namespace fastpage
