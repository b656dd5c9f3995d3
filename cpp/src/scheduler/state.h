// The scheduler's private state, shared by the files of cpp/src/scheduler/.
#pragma once
#include <compare>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "fastpage/scheduler.h"

namespace fastpage {

// Queue order: lower priority value first, then arrival, then seq_id (forks after their parent).
struct QueueKey {
  int32_t priority = 0;
  int64_t arrival = 0;
  int64_t seq_id = -1;
  auto operator<=>(const QueueKey&) const = default;
};

// A block filled by a step; it becomes findable at the next schedule(), once its K/V is written.
struct PendingBlock {
  BlockId block = 0;
  int64_t seq_id = -1;
  int32_t index = 0;  // position in the sequence's block table / block_hashes
};

struct Scheduler::State {
  State(const EngineConfig& config, int64_t max_model_len, int32_t num_device_blocks, int32_t num_host_blocks);

  EngineConfig config;
  int32_t block_size;
  int64_t max_model_len;
  // A sequence ends (Length) when it reaches this many tokens: max_model_len, or one past what
  // the whole device pool can hold, so a lone sequence can always make progress.
  int64_t max_seq_len;
  BlockAllocator device;
  BlockAllocator host;
  PrefixCache cache;

  std::unordered_map<int64_t, Sequence> seqs;  // node-based: references stay valid across inserts
  std::unordered_map<int64_t, Request> requests;
  std::unordered_map<std::string, int64_t> request_ids;
  std::set<QueueKey> waiting, running, swapped;
  std::vector<PendingBlock> pending_blocks;
  std::vector<int64_t> finished_requests;  // erased at the next schedule()
  int64_t next_seq_id = 0;
  int64_t next_request_index = 0;
  int64_t num_preemptions = 0;

  Sequence& seq(int64_t seq_id);
  const Sequence& seq(int64_t seq_id) const;
  const Request& request(const Sequence& seq) const { return requests.at(seq.request_index); }
  QueueKey key(const Sequence& seq) const;
  std::set<QueueKey>* queue_of(SequenceStatus status);
  bool caching() const { return cache.enabled(); }
  bool request_finished(const Request& request) const;

  // Chained hashes of any newly full blocks of seq.token_ids (no-op with caching off).
  void extend_block_hashes(Sequence& seq);
  // Its last token ends it by length: max_tokens outputs or max_seq_len tokens.
  bool reached_length_limit(const Sequence& seq) const;
  // Frees the sequence's blocks, takes it off its queue, drops a reserved placeholder, marks
  // it Finished.
  void finish(Sequence& seq, FinishReason reason, int32_t stop_token);
  void erase_request(int64_t request_index);

  // schedule() steps (schedule.cpp).
  void register_pending_blocks();
  void erase_finished_requests();
  int32_t blocks_needed(const Sequence& seq, int32_t num_new_tokens) const;
  // Allocates what `num_new_tokens` more tokens need (copy-on-write of a shared last block
  // included), queues the blocks they fill for registration, and advances num_computed_tokens.
  void append_slots(Sequence& seq, int32_t num_new_tokens, StepPlan& plan);
  void preempt(Sequence& seq, StepPlan& plan);
  void check_invariants() const;
};

}  // namespace fastpage
