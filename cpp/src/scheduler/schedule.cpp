// Scheduler::schedule(): one step's decision (running, then swapped, then waiting) and its plan.
#include <algorithm>
#include <iterator>

#include "state.h"

namespace fastpage {
namespace {

int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

struct Scheduled {
  Sequence* seq;
  int32_t num_new_tokens;
};

}  // namespace

void Scheduler::State::register_pending_blocks() {
  for (const PendingBlock& pending : pending_blocks) {
    auto it = seqs.find(pending.seq_id);
    if (it == seqs.end()) continue;  // its request was replaced by a new one with the same id
    const Sequence& owner = it->second;
    // A block whose last token was a placeholder dropped by an abort between schedule() and fill()
    // (possible only when another thread aborts mid-step) was never hashed: nothing to register.
    if (static_cast<size_t>(pending.index) >= owner.block_hashes.size()) continue;
    const std::span<const int32_t> tokens(owner.token_ids);
    const BlockHash parent = pending.index == 0 ? kNoHash : owner.block_hashes[pending.index - 1];
    cache.register_block(pending.block, owner.block_hashes[pending.index], parent,
                         tokens.subspan(static_cast<size_t>(pending.index) * block_size, block_size));
  }
  pending_blocks.clear();
}

void Scheduler::State::erase_finished_requests() {
  for (int64_t request_index : finished_requests) {
    auto it = requests.find(request_index);
    if (it != requests.end() && request_finished(it->second)) erase_request(request_index);
  }
  finished_requests.clear();
}

int32_t Scheduler::State::blocks_needed(const Sequence& seq, int32_t num_new_tokens) const {
  const int32_t computed = seq.num_computed_tokens;
  int32_t needed = ceil_div(computed + num_new_tokens, block_size) - static_cast<int32_t>(seq.block_table.size());
  // The next token lands in a partly filled block: if another sequence shares it, copy it first.
  if (computed % block_size != 0 && device.ref_count(seq.block_table[computed / block_size]) > 1) ++needed;
  return needed;
}

void Scheduler::State::append_slots(Sequence& seq, int32_t num_new_tokens, StepPlan& plan) {
  const int32_t computed = seq.num_computed_tokens;
  if (computed % block_size != 0) {
    BlockId& last = seq.block_table[computed / block_size];
    if (device.ref_count(last) > 1) {  // copy-on-write
      const BlockId copy = device.allocate();
      plan.block_copies.emplace_back(last, copy);
      device.free(last);
      last = copy;
    }
  }
  const size_t total = ceil_div(computed + num_new_tokens, block_size);
  while (seq.block_table.size() < total) seq.block_table.push_back(device.allocate());
  if (caching()) {
    for (int32_t index = computed / block_size; index < (computed + num_new_tokens) / block_size; ++index) {
      pending_blocks.push_back({seq.block_table[index], seq.seq_id, index});
    }
  }
  seq.num_computed_tokens += num_new_tokens;
}

void Scheduler::State::preempt(Sequence& seq, StepPlan& plan) {
  running.erase(key(seq));
  ++seq.num_preemptions;
  ++num_preemptions;
  plan.preempted_seq_ids.push_back(seq.seq_id);
  const int32_t num_blocks = static_cast<int32_t>(seq.block_table.size());
  if (host.num_blocks() > 0 && host.can_allocate(num_blocks)) {
    for (BlockId block : seq.block_table) {
      const BlockId host_block = host.allocate();
      plan.swap_out.emplace_back(block, host_block);
      seq.swapped_blocks.push_back(host_block);
    }
    device.free_all(seq.block_table);
    seq.block_table.clear();
    seq.status = SequenceStatus::Swapped;
    swapped.insert(key(seq));
  } else {
    // Recompute: prompt and output are prefilled again; its cached full blocks may still hit.
    device.free_all(seq.block_table);
    seq.block_table.clear();
    seq.num_computed_tokens = 0;
    seq.status = SequenceStatus::Waiting;
    waiting.insert(key(seq));  // (priority, arrival) order puts it ahead of later arrivals
  }
}

StepPlan Scheduler::schedule() {
  State& s = *state_;
  s.register_pending_blocks();
  s.erase_finished_requests();

  StepPlan plan;
  const int32_t max_seqs = static_cast<int32_t>(s.config.max_num_seqs);
  const bool chunked = s.config.enable_chunked_prefill;
  int32_t budget = static_cast<int32_t>(s.config.max_num_batched_tokens);
  std::vector<Scheduled> scheduled;
  // How many of the remaining tokens fit the budget; 0 when a chunk is needed but not allowed.
  auto chunk = [&](const Sequence& seq) {
    const int32_t remaining = seq.num_tokens() - seq.num_computed_tokens;
    if (remaining <= budget) return remaining;
    return chunked ? budget : 0;
  };
  auto room = [&] { return budget > 0 && static_cast<int32_t>(scheduled.size()) < max_seqs; };
  // Forks can push the running count past max_num_seqs; nothing joins it until it is back below.
  auto can_join = [&] { return room() && static_cast<int32_t>(s.running.size()) < max_seqs; };
  // A swapped or waiting sequence (already taken off its queue) joins the running set this step.
  auto start_running = [&](Sequence& seq, int32_t num_new) {
    seq.status = SequenceStatus::Running;
    s.running.insert(s.key(seq));
    s.append_slots(seq, num_new, plan);
    scheduled.push_back({&seq, num_new});
    budget -= num_new;
  };

  // 1. Running sequences, preempting from the back when blocks run out.
  bool preempted = false;
  for (auto it = s.running.begin(); it != s.running.end() && room();) {
    Sequence& seq = s.seq(it->seq_id);
    // A sequence whose in-flight token is its last waits for fill() to finish it.
    const int32_t num_new = seq.ends_with_awaited_token ? 0 : chunk(seq);
    if (num_new == 0) {
      ++it;
      continue;
    }
    bool self_preempted = false;
    while (!s.device.can_allocate(s.blocks_needed(seq, num_new))) {
      Sequence& victim = s.seq(std::prev(s.running.end())->seq_id);
      self_preempted = &victim == &seq;
      s.preempt(victim, plan);
      preempted = true;
      if (self_preempted) break;
    }
    if (self_preempted) break;  // it was the last running sequence
    s.append_slots(seq, num_new, plan);
    scheduled.push_back({&seq, num_new});
    budget -= num_new;
    ++it;
  }

  // 2. Swapped sequences come back (never in a step that preempted: its blocks are spoken for).
  for (auto it = s.swapped.begin(); !preempted && it != s.swapped.end() && can_join();) {
    Sequence& seq = s.seq(it->seq_id);
    const int32_t num_new = chunk(seq);
    // Its swapped blocks come back as the start of a block table that then grows for num_new.
    if (num_new == 0 || !s.device.can_allocate(ceil_div(seq.num_computed_tokens + num_new, s.block_size))) break;
    for (BlockId host_block : seq.swapped_blocks) {
      const BlockId block = s.device.allocate();
      plan.swap_in.emplace_back(host_block, block);
      seq.block_table.push_back(block);
    }
    s.host.free_all(seq.swapped_blocks);
    seq.swapped_blocks.clear();
    it = s.swapped.erase(it);
    start_running(seq, num_new);
  }

  // 3. Waiting sequences in order, each starting after its longest cached prefix.
  for (auto it = s.waiting.begin(); !preempted && s.swapped.empty() && it != s.waiting.end() && can_join();) {
    Sequence& seq = s.seq(it->seq_id);
    const Request& req = s.request(seq);
    const std::span<const int32_t> tokens(seq.token_ids);
    // At least one token must be computed to produce logits; prompt logprobs need every position.
    const int32_t max_hit_blocks = req.params.prompt_logprobs ? 0 : (seq.num_tokens() - 1) / s.block_size;
    const std::vector<BlockId> hit = s.cache.find_prefix(tokens, seq.block_hashes, max_hit_blocks);
    const int32_t num_hit = static_cast<int32_t>(hit.size());
    seq.num_computed_tokens = num_hit * s.block_size;
    const int32_t num_new = chunk(seq);
    const auto num_free_hits = std::count_if(hit.begin(), hit.end(), [&](BlockId b) { return s.device.ref_count(b) == 0; });
    if (num_new == 0 || !s.device.can_allocate(ceil_div(seq.num_computed_tokens + num_new, s.block_size) - num_hit +
                                               static_cast<int32_t>(num_free_hits))) {
      seq.num_computed_tokens = 0;
      break;  // first come, first served: nobody overtakes the head of the queue
    }
    seq.block_table = s.cache.acquire_prefix(tokens, seq.block_hashes, num_hit);
    if (seq.num_preemptions == 0) {
      seq.num_cached_prompt_tokens = std::min(seq.num_computed_tokens, seq.num_prompt_tokens);
    }
    it = s.waiting.erase(it);
    start_running(seq, num_new);
  }

  // The plan: decodes (one new token past the prompt) first, then prefill chunks.
  auto is_decode = [](const Scheduled& entry) {
    return entry.num_new_tokens == 1 && entry.seq->num_computed_tokens > entry.seq->num_prompt_tokens;
  };
  std::stable_partition(scheduled.begin(), scheduled.end(), is_decode);
  const int32_t num_seqs = static_cast<int32_t>(scheduled.size());
  int32_t num_tokens = 0;
  for (const Scheduled& entry : scheduled) {
    plan.max_blocks_per_seq = std::max(plan.max_blocks_per_seq, static_cast<int32_t>(entry.seq->block_table.size()));
    num_tokens += entry.num_new_tokens;
  }
  plan.seqs.reserve(num_seqs);
  plan.input_ids.reserve(num_tokens);
  plan.positions.reserve(num_tokens);
  plan.slot_mapping.reserve(num_tokens);
  plan.query_start_loc.reserve(num_seqs + 1);
  plan.context_lens.reserve(num_seqs);
  plan.block_tables.assign(static_cast<size_t>(num_seqs) * plan.max_blocks_per_seq, 0);
  plan.query_start_loc.push_back(0);
  for (int32_t row = 0; row < num_seqs; ++row) {
    const Sequence& seq = *scheduled[row].seq;
    const int32_t num_new = scheduled[row].num_new_tokens;
    const int32_t start = seq.num_computed_tokens - num_new;
    // (The request is looked up only for prompt chunks: decodes skip a hash lookup per row.)
    const bool prompt_logprobs = start < seq.num_prompt_tokens && seq.num_output_tokens() == 0 &&
                                 s.request(seq).params.prompt_logprobs.has_value();
    plan.seqs.push_back({seq.seq_id, num_new, start, seq.num_computed_tokens == seq.num_tokens(), prompt_logprobs});
    plan.num_decode_seqs += is_decode(scheduled[row]);
    for (int32_t pos = start; pos < start + num_new; ++pos) {
      plan.input_ids.push_back(seq.token_ids[pos]);
      plan.positions.push_back(pos);
      plan.slot_mapping.push_back(static_cast<int64_t>(seq.block_table[pos / s.block_size]) * s.block_size +
                                  pos % s.block_size);
    }
    plan.query_start_loc.push_back(plan.query_start_loc.back() + num_new);
    plan.context_lens.push_back(seq.num_computed_tokens);
    std::copy(seq.block_table.begin(), seq.block_table.end(),
              plan.block_tables.begin() + static_cast<size_t>(row) * plan.max_blocks_per_seq);
  }
  return plan;
}

}  // namespace fastpage
