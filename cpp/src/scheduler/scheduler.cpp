// Scheduler's public API around the request table: add, abort, update, fork, finish, queries.
#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>

#include "state.h"

namespace fastpage {
namespace {

uint64_t random_salt() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

int32_t checked_int32(int64_t value, const char* field) {
  if (value <= 0 || value > INT32_MAX) {
    throw std::invalid_argument(std::string("Scheduler: ") + field + " must be in [1, 2^31), got " +
                                std::to_string(value));
  }
  return static_cast<int32_t>(value);
}

bool contains(const std::vector<int32_t>& ids, int32_t token) {
  return std::find(ids.begin(), ids.end(), token) != ids.end();
}

}  // namespace

Scheduler::State::State(const EngineConfig& config, int64_t max_model_len, int32_t num_device_blocks,
                        int32_t num_host_blocks)
    : config(config),
      block_size(checked_int32(config.block_size, "block_size")),
      max_model_len(checked_int32(max_model_len, "max_model_len")),
      max_seq_len(std::min<int64_t>(max_model_len, static_cast<int64_t>(num_device_blocks) * block_size + 1)),
      device(checked_int32(num_device_blocks, "num_device_blocks")),
      host(num_host_blocks),
      cache(device, block_size, config.enable_prefix_caching, random_salt()) {
  checked_int32(config.max_num_seqs, "max_num_seqs");
  checked_int32(config.max_num_batched_tokens, "max_num_batched_tokens");
  if (!config.enable_chunked_prefill && config.max_num_batched_tokens < max_model_len) {
    throw std::invalid_argument("Scheduler: max_num_batched_tokens (" + std::to_string(config.max_num_batched_tokens) +
                                ") is smaller than max_model_len (" + std::to_string(max_model_len) +
                                ") with chunked prefill disabled; increase max_num_batched_tokens, decrease "
                                "max_model_len or enable chunked prefill");
  }
}

Sequence& Scheduler::State::seq(int64_t seq_id) {
  auto it = seqs.find(seq_id);
  if (it == seqs.end()) throw std::out_of_range("Scheduler: unknown seq_id " + std::to_string(seq_id));
  return it->second;
}

const Sequence& Scheduler::State::seq(int64_t seq_id) const { return const_cast<State*>(this)->seq(seq_id); }

QueueKey Scheduler::State::key(const Sequence& seq) const {
  const Request& req = request(seq);
  return {req.priority, req.arrival_order, seq.seq_id};
}

std::set<QueueKey>* Scheduler::State::queue_of(SequenceStatus status) {
  switch (status) {
    case SequenceStatus::Waiting: return &waiting;
    case SequenceStatus::Running: return &running;
    case SequenceStatus::Swapped: return &swapped;
    case SequenceStatus::Finished: return nullptr;
  }
  return nullptr;
}

bool Scheduler::State::request_finished(const Request& req) const {
  return std::all_of(req.seq_ids.begin(), req.seq_ids.end(), [&](int64_t id) { return seq(id).finished(); });
}

void Scheduler::State::extend_block_hashes(Sequence& seq) {
  if (!caching()) return;
  const std::span<const int32_t> tokens(seq.token_ids);
  for (size_t index = seq.block_hashes.size(); (index + 1) * block_size <= tokens.size(); ++index) {
    const BlockHash parent = index == 0 ? kNoHash : seq.block_hashes[index - 1];
    seq.block_hashes.push_back(cache.hash_block(parent, tokens.subspan(index * block_size, block_size)));
  }
}

bool Scheduler::State::reached_length_limit(const Sequence& seq) const {
  return seq.num_output_tokens() >= request(seq).params.max_tokens || seq.num_tokens() >= max_seq_len;
}

void Scheduler::State::finish(Sequence& seq, FinishReason reason, int32_t stop_token) {
  if (seq.awaiting_token) {  // its sampled token will be dropped: no placeholder outlives it
    seq.token_ids.pop_back();
    seq.num_computed_tokens = std::min(seq.num_computed_tokens, seq.num_tokens());  // it may have been scheduled
    seq.awaiting_token = false;
    seq.ends_with_awaited_token = false;
  }
  if (auto* queue = queue_of(seq.status)) queue->erase(key(seq));
  device.free_all(seq.block_table);
  host.free_all(seq.swapped_blocks);
  seq.block_table.clear();
  seq.swapped_blocks.clear();
  seq.status = SequenceStatus::Finished;
  seq.finish_reason = reason;
  seq.stop_token = stop_token;
  finished_requests.push_back(seq.request_index);
}

void Scheduler::State::erase_request(int64_t request_index) {
  auto it = requests.find(request_index);
  if (it == requests.end()) return;
  for (int64_t seq_id : it->second.seq_ids) seqs.erase(seq_id);
  auto id = request_ids.find(it->second.request_id);
  if (id != request_ids.end() && id->second == request_index) request_ids.erase(id);
  requests.erase(it);
}

Scheduler::Scheduler(const EngineConfig& config, int64_t max_model_len, int32_t num_device_blocks,
                     int32_t num_host_blocks)
    : state_(std::make_unique<State>(config, max_model_len, num_device_blocks, num_host_blocks)) {}

Scheduler::~Scheduler() = default;

void Scheduler::validate_request(const std::vector<int32_t>& prompt_token_ids, const SamplingParams& params) const {
  const State& s = *state_;
  const int64_t num_prompt = static_cast<int64_t>(prompt_token_ids.size());
  if (num_prompt == 0) throw std::invalid_argument("add_request: prompt_token_ids must not be empty");
  if (auto it = std::find_if(prompt_token_ids.begin(), prompt_token_ids.end(), [](int32_t t) { return t < 0; });
      it != prompt_token_ids.end()) {
    throw std::invalid_argument("add_request: prompt_token_ids[" + std::to_string(it - prompt_token_ids.begin()) +
                                "] = " + std::to_string(*it) + " is negative");
  }
  if (num_prompt >= s.max_model_len) {
    throw std::invalid_argument("add_request: prompt_token_ids has " + std::to_string(num_prompt) +
                                " tokens, which must be less than max_model_len (" + std::to_string(s.max_model_len) +
                                ")");
  }
  const int64_t blocks_needed = (num_prompt + 1 + s.block_size - 1) / s.block_size;
  if (blocks_needed > s.device.num_blocks()) {
    throw std::invalid_argument("add_request: prompt_token_ids has " + std::to_string(num_prompt) + " tokens and needs " +
                                std::to_string(blocks_needed) + " KV blocks (prompt + 1 token, block_size " +
                                std::to_string(s.block_size) + ") but the device pool has only " +
                                std::to_string(s.device.num_blocks()));
  }
  if (params.max_tokens < 1) {
    throw std::invalid_argument("add_request: max_tokens must be at least 1, got " + std::to_string(params.max_tokens));
  }
  if (params.min_tokens < 0 || params.min_tokens > params.max_tokens) {
    throw std::invalid_argument("add_request: min_tokens must be in [0, max_tokens=" +
                                std::to_string(params.max_tokens) + "], got " + std::to_string(params.min_tokens));
  }
}

int64_t Scheduler::add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                               const SamplingParams& params, std::vector<int32_t> eos_token_ids, int32_t priority,
                               RequestHandle handle) {
  State& s = *state_;
  validate_request(prompt_token_ids, params);
  const int64_t num_prompt = static_cast<int64_t>(prompt_token_ids.size());
  if (auto it = s.request_ids.find(request_id); it != s.request_ids.end()) {
    if (!s.request_finished(s.requests.at(it->second))) {
      throw std::invalid_argument("add_request: request_id '" + request_id + "' is already in use");
    }
    s.erase_request(it->second);  // a finished request under the same id: its outputs were read
  }

  const int64_t request_index = s.next_request_index++;
  Request& req = s.requests[request_index];
  req.request_id = request_id;
  req.handle = handle;
  req.params = params;
  req.eos_token_ids = std::move(eos_token_ids);
  req.priority = priority;
  req.arrival_order = request_index;

  const int64_t seq_id = s.next_seq_id++;
  req.seq_ids.push_back(seq_id);
  Sequence& seq = s.seqs[seq_id];
  seq.seq_id = seq_id;
  seq.request_index = request_index;
  seq.token_ids = std::move(prompt_token_ids);
  seq.num_prompt_tokens = static_cast<int32_t>(num_prompt);
  s.extend_block_hashes(seq);
  s.request_ids[request_id] = request_index;
  s.waiting.insert(s.key(seq));
  return seq_id;
}

bool Scheduler::abort_request(const std::string& request_id) {
  State& s = *state_;
  auto it = s.request_ids.find(request_id);
  if (it == s.request_ids.end()) return false;
  const Request& req = s.requests.at(it->second);
  bool aborted = false;
  for (int64_t seq_id : req.seq_ids) {
    Sequence& seq = s.seq(seq_id);
    if (seq.finished()) continue;
    s.finish(seq, FinishReason::Abort, -1);
    aborted = true;
  }
  return aborted;
}

std::vector<FinishedSeq> Scheduler::update(const std::vector<SampledToken>& tokens) {
  std::vector<int64_t> seq_ids;
  seq_ids.reserve(tokens.size());
  for (const SampledToken& sampled : tokens) seq_ids.push_back(sampled.seq_id);
  reserve(seq_ids);
  std::vector<FinishedSeq> finished;
  const std::vector<FilledToken> filled = fill(tokens);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (filled[i].finish_reason != FinishReason::None) {
      finished.push_back({tokens[i].seq_id, filled[i].finish_reason, filled[i].stop_token});
    }
  }
  return finished;
}

void Scheduler::reserve(const std::vector<int64_t>& seq_ids) {
  State& s = *state_;
  for (int64_t seq_id : seq_ids) {
    Sequence& seq = s.seq(seq_id);
    if (seq.finished()) continue;  // aborted or finished between schedule() and here: fill() drops it
    if (seq.status != SequenceStatus::Running || seq.awaiting_token || seq.num_computed_tokens != seq.num_tokens()) {
      throw std::invalid_argument("reserve: seq_id " + std::to_string(seq.seq_id) +
                                  " was not scheduled to sample a token");
    }
    seq.token_ids.push_back(kPlaceholderToken);
    seq.awaiting_token = true;
    seq.ends_with_awaited_token = s.reached_length_limit(seq);
  }
}

std::vector<FilledToken> Scheduler::fill(const std::vector<SampledToken>& tokens) {
  State& s = *state_;
  std::vector<FilledToken> filled(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const SampledToken& sampled = tokens[i];
    auto it = s.seqs.find(sampled.seq_id);
    if (it == s.seqs.end() || it->second.finished()) continue;  // finished meanwhile: the token is dropped
    Sequence& seq = it->second;
    if (!seq.awaiting_token) {
      throw std::invalid_argument("fill: seq_id " + std::to_string(seq.seq_id) + " has no reserved token");
    }
    seq.token_ids.back() = sampled.token;
    seq.awaiting_token = false;
    seq.ends_with_awaited_token = false;
    seq.cumulative_logprob += sampled.logprob;
    s.extend_block_hashes(seq);

    const Request& req = s.request(seq);
    const SamplingParams& params = req.params;
    FinishReason reason = FinishReason::None;
    int32_t stop_token = -1;
    if (seq.num_output_tokens() >= params.min_tokens) {
      if (!params.ignore_eos && contains(req.eos_token_ids, sampled.token)) {
        reason = FinishReason::Stop;
      } else if (contains(params.stop_token_ids, sampled.token)) {
        reason = FinishReason::Stop;
        stop_token = sampled.token;
      }
    }
    if (reason == FinishReason::None && s.reached_length_limit(seq)) reason = FinishReason::Length;
    // Waiting or Swapped (preempted since the reserve) is fine: finish() takes it off its queue.
    if (reason != FinishReason::None) s.finish(seq, reason, stop_token);
    filled[i] = {&seq, &req, reason, stop_token};
  }
  return filled;
}

int64_t Scheduler::fork(int64_t seq_id) {
  State& s = *state_;
  Sequence& parent = s.seq(seq_id);
  if (parent.status != SequenceStatus::Running) {
    throw std::invalid_argument("fork: seq_id " + std::to_string(seq_id) + " is not running");
  }
  if (parent.awaiting_token) {
    throw std::invalid_argument("fork: seq_id " + std::to_string(seq_id) + " awaits its sampled token");
  }
  Request& req = s.requests.at(parent.request_index);
  const int64_t child_id = s.next_seq_id++;
  Sequence& child = s.seqs[child_id];
  child.seq_id = child_id;
  child.request_index = parent.request_index;
  child.index = static_cast<int32_t>(req.seq_ids.size());
  child.token_ids = parent.token_ids;
  child.num_prompt_tokens = parent.num_prompt_tokens;
  child.num_computed_tokens = parent.num_computed_tokens;
  child.num_cached_prompt_tokens = parent.num_cached_prompt_tokens;
  child.block_table = parent.block_table;
  child.block_hashes = parent.block_hashes;
  child.status = SequenceStatus::Running;
  child.cumulative_logprob = parent.cumulative_logprob;
  for (BlockId block : child.block_table) s.device.incref(block);
  req.seq_ids.push_back(child_id);
  s.running.insert(s.key(child));
  return child_id;
}

void Scheduler::finish_sequence(int64_t seq_id, FinishReason reason) {
  State& s = *state_;
  Sequence& seq = s.seq(seq_id);
  if (seq.finished()) return;
  if (reason == FinishReason::None) throw std::invalid_argument("finish_sequence: reason must not be None");
  s.finish(seq, reason, -1);
}

bool Scheduler::has_unfinished() const {
  return !state_->waiting.empty() || !state_->running.empty() || !state_->swapped.empty();
}

int32_t Scheduler::num_waiting() const {
  return static_cast<int32_t>(state_->waiting.size());
}

int32_t Scheduler::num_running() const {
  return static_cast<int32_t>(state_->running.size());
}

int32_t Scheduler::num_swapped() const {
  return static_cast<int32_t>(state_->swapped.size());
}

int64_t Scheduler::num_preemptions() const {
  return state_->num_preemptions;
}

const Sequence& Scheduler::sequence(int64_t seq_id) const {
  return state_->seq(seq_id);
}

const Request& Scheduler::request_of(int64_t seq_id) const {
  return state_->request(state_->seq(seq_id));
}

std::optional<int64_t> Scheduler::request_index(const std::string& request_id) const {
  auto it = state_->request_ids.find(request_id);
  if (it == state_->request_ids.end()) return std::nullopt;
  return it->second;
}

const Request* Scheduler::find_request(const std::string& request_id) const {
  auto it = state_->request_ids.find(request_id);
  if (it == state_->request_ids.end()) return nullptr;
  return &state_->requests.at(it->second);
}

BlockAllocator& Scheduler::device_blocks() { return state_->device; }
const BlockAllocator& Scheduler::device_blocks() const { return state_->device; }
const BlockAllocator& Scheduler::host_blocks() const { return state_->host; }
const PrefixCache& Scheduler::prefix_cache() const { return state_->cache; }

void Scheduler::reset_prefix_cache() {
  state_->cache.reset();
  state_->pending_blocks.clear();
}

void Scheduler::check_invariants() const {
  state_->check_invariants();
}

}  // namespace fastpage
