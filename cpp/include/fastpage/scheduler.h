// Iteration-level continuous batching over the paged KV cache.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fastpage/block_allocator.h"
#include "fastpage/config.h"
#include "fastpage/prefix_cache.h"
#include "fastpage/sequence.h"
#include "fastpage/step_plan.h"

namespace fastpage {

struct SampledToken {
  int64_t seq_id = -1;
  int32_t token = 0;
  float logprob = 0.0f;
};

struct FinishedSeq {
  int64_t seq_id = -1;
  FinishReason reason = FinishReason::None;
  int32_t stop_token = -1;  // the stop_token_ids entry that ended it; -1 for EOS and Length
};

// What fill() did with one sampled token.
struct FilledToken {
  // The sequence it was appended to (valid until the next schedule()); null when dropped: the
  // sequence finished meanwhile (abort, finish_sequence) or is gone.
  const Sequence* seq = nullptr;
  const Request* request = nullptr;
  FinishReason finish_reason = FinishReason::None;  // None: it goes on
  int32_t stop_token = -1;
};

// One step, in order: running sequences (in (priority, arrival) order: decodes, or the next chunk of
// a chunked prefill), then swapped ones come back, then waiting ones are admitted, all within
// max_num_batched_tokens and max_num_seqs. Nothing is swapped in or admitted in a step that had
// to preempt. The victim of a preemption is the running sequence with the largest
// (priority, arrival): by swap when the host pool has room, else by recompute.
// Single-threaded: the engine's loop thread owns it (EngineLoop's command queue is the one door in
// from other threads). References returned by sequence()/request_of() stay valid until the next
// schedule() (a request is erased at the first schedule() after it finished).
class Scheduler {
 public:
  // Throws std::invalid_argument on a bad configuration (non-positive sizes, or with chunked
  // prefill disabled a token budget smaller than max_model_len).
  Scheduler(const EngineConfig& config, int64_t max_model_len, int32_t num_device_blocks,
            int32_t num_host_blocks);
  ~Scheduler();

  // Throws std::invalid_argument on an empty or negative prompt, a prompt that can never fit, or
  // max_tokens/min_tokens out of range. Reads only the configuration: safe from any thread.
  void validate_request(const std::vector<int32_t>& prompt_token_ids, const SamplingParams& params) const;
  // Returns the seq_id of the request's first sequence. Throws std::invalid_argument where
  // validate_request does, and on a duplicate id. `handle` is the caller's, echoed in Request.
  int64_t add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                      const SamplingParams& params, std::vector<int32_t> eos_token_ids = {},
                      int32_t priority = 0, RequestHandle handle = -1);
  // Frees every block of the request at once; false if unknown or already finished.
  bool abort_request(const std::string& request_id);

  // Decides the next step and advances num_computed_tokens of what it scheduled.
  StepPlan schedule();
  // Appends sampled tokens, finishes sequences (EOS, stop ids, max_tokens, min_tokens, ignore_eos,
  // max_model_len, or a length the whole device pool cannot hold) and frees their blocks.
  // Returns the sequences that finished in this call.
  // update() is reserve() then fill() in one call.
  std::vector<FinishedSeq> update(const std::vector<SampledToken>& tokens);
  // Async scheduling, in two halves: reserve() appends kPlaceholderToken to each sequence (scheduled
  // to sample, at most one placeholder each) whose token is sampled but not yet on the host, so the
  // next schedule() plans its decode with the right positions and slots; a sequence whose reserved
  // token is its last by length is not scheduled again. fill() (one per reserve(), in the same order
  // or later) replaces the placeholders and applies update()'s finish rules; a token whose sequence
  // finished meanwhile is dropped, one preempted meanwhile keeps it. Returns one entry per token.
  void reserve(const std::vector<int64_t>& seq_ids);
  std::vector<FilledToken> fill(const std::vector<SampledToken>& tokens);
  // Shares all of seq_id's blocks with a new Running sequence of the same request (n > 1, beam
  // search); the fork runs right after its request's other sequences. Returns its seq_id.
  int64_t fork(int64_t seq_id);
  // Ends one sequence early (stop string, beam pruned) and frees its blocks.
  void finish_sequence(int64_t seq_id, FinishReason reason);

  bool has_unfinished() const;
  int32_t num_waiting() const;
  int32_t num_running() const;
  int32_t num_swapped() const;
  int64_t num_preemptions() const;

  // Throw std::out_of_range for an unknown (or already erased) id.
  const Sequence& sequence(int64_t seq_id) const;
  const Request& request_of(int64_t seq_id) const;
  std::optional<int64_t> request_index(const std::string& request_id) const;
  const Request* find_request(const std::string& request_id) const;  // nullptr when unknown

  BlockAllocator& device_blocks();
  const BlockAllocator& device_blocks() const;
  const BlockAllocator& host_blocks() const;
  const PrefixCache& prefix_cache() const;
  void reset_prefix_cache();
  // free + used == total, refcounts >= 0 and equal to the references the sequences hold, queues
  // consistent with statuses, and (when idle) every block free. Throws std::logic_error.
  void check_invariants() const;

 private:
  // Implementation detail owned by cpp/src/scheduler/.
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace fastpage
