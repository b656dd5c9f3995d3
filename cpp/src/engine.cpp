#include "fastpage/engine.h"

#include <ATen/ops/index_select.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "parallel/control_plane.h"

namespace fastpage {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Sequence k of a request draws from its own stream, derived from the request's seed.
uint64_t sequence_seed(uint64_t request_seed, int32_t seq_index) {
  return seq_index == 0 ? request_seed : splitmix64(request_seed ^ (0x5851f42d4c957f2dull * seq_index));
}

int64_t resolve_max_model_len(const ModelConfig& model, const EngineConfig& config) {
  int64_t limit = model.max_position_embeddings;
  if (config.max_model_len <= 0) return limit;
  if (limit > 0 && config.max_model_len > limit && model.position_type == PositionType::Learned) {
    throw std::invalid_argument("max_model_len " + std::to_string(config.max_model_len) +
                                " exceeds the model's learned positions (" + std::to_string(limit) + ")");
  }
  return config.max_model_len;
}

}  // namespace

Engine::Engine(const ModelConfig& model, const EngineConfig& config, WeightMap weights, c10::Device device,
               c10::ScalarType dtype)
    : model_config_(model), config_(config), next_seed_(splitmix64(config.seed)) {
  config_.max_model_len = resolve_max_model_len(model, config);
  const bool parallel = config.parallel.world_size() > 1;
  if (parallel && config.async_scheduling.value_or(false)) {
    throw std::invalid_argument(
        "async_scheduling needs world_size 1 (tensor_parallel_size x pipeline_parallel_size = " +
        std::to_string(config.parallel.world_size()) + "): the workers would need each step's sampled ids");
  }
  if (config.parallel.rank != 0) {
    throw std::invalid_argument("the Engine is rank 0; ranks 1.. run fastpage::Worker (ParallelConfig.rank " +
                                std::to_string(config.parallel.rank) + ")");
  }
  runner_ = std::make_unique<ModelRunner>(model_config_, config_, std::move(weights), device, dtype);
  if (config.parallel.world_size() > 1) control_ = std::make_unique<ControlPlane>(config.parallel.world_group);
  scheduler_ = std::make_unique<Scheduler>(config_, config_.max_model_len, runner_->num_device_blocks(),
                                           runner_->num_host_blocks());
  async_scheduling_ = config.async_scheduling.value_or(runner_->device().is_cuda() && !parallel);
}

Engine::~Engine() {
  if (!control_ || !failure_.empty()) return;
  try {
    control_->send_shutdown();
  } catch (const std::exception&) {
    // A worker already gone: nothing left to tell it.
  }
}

void Engine::validate_request(const std::vector<int32_t>& prompt_token_ids, const SamplingParams& params) const {
  const int64_t vocab = model_config_.vocab_size;
  for (int32_t token : prompt_token_ids) {
    if (token < 0 || token >= vocab) {
      throw std::invalid_argument("prompt_token_ids: token id " + std::to_string(token) +
                                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
  for (const auto* field : {&params.logprobs, &params.prompt_logprobs}) {
    if (*field && (**field < 0 || **field > config_.max_logprobs)) {
      throw std::invalid_argument(std::string(field == &params.logprobs ? "logprobs" : "prompt_logprobs") +
                                  " must be in [0, " + std::to_string(config_.max_logprobs) + "], got " +
                                  std::to_string(**field));
    }
  }
  if (params.n < 1 || params.best_of < params.n) {
    throw std::invalid_argument("n must be >= 1 and best_of >= n");
  }
  scheduler_->validate_request(prompt_token_ids, params);
}

void Engine::set_grammar_backend(std::shared_ptr<GrammarBackend> backend) {
  if (backend && backend->vocab_size() != model_config_.vocab_size) {
    throw std::invalid_argument("the grammar backend's vocabulary (" + std::to_string(backend->vocab_size()) +
                                " tokens) is not the model's (" + std::to_string(model_config_.vocab_size) + ")");
  }
  grammar_backend_ = std::move(backend);
}

RequestHandle Engine::add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                                  const SamplingParams& params, std::vector<int32_t> eos_token_ids,
                                  int32_t priority, RequestHandle handle,
                                  std::shared_ptr<const CompiledGrammar> grammar) {
  validate_request(prompt_token_ids, params);
  if (params.structured_output.active() && (!grammar || !grammar_backend_)) {
    throw std::invalid_argument("structured_output: the request needs a grammar compiled by the engine's backend");
  }
  SamplingParams resolved = params;
  if (!resolved.seed) {
    // Unseeded requests still get a fixed stream, so a run is reproducible from the engine seed.
    next_seed_ = splitmix64(next_seed_);
    resolved.seed = next_seed_;
  }
  if (handle < 0) handle = next_handle_++;
  scheduler_->add_request(request_id, std::move(prompt_token_ids), resolved, std::move(eos_token_ids), priority,
                          handle);
  if (params.prompt_logprobs) prompt_logprobs_[handle] = {};
  if (params.structured_output.active()) request_grammars_[handle] = std::move(grammar);
  return handle;
}

bool Engine::abort_request(const std::string& request_id) {
  const Request* request = scheduler_->find_request(request_id);
  if (request) forget_request(*request);
  return scheduler_->abort_request(request_id);
}

void Engine::finish_sequence(const std::string& request_id, int32_t seq_index) {
  const Request* request = scheduler_->find_request(request_id);
  if (!request) throw std::invalid_argument("unknown request_id " + request_id);
  for (int64_t seq_id : request->seq_ids) {
    const Sequence& seq = scheduler_->sequence(seq_id);
    if (seq.index == seq_index && !seq.finished()) scheduler_->finish_sequence(seq_id, FinishReason::Stop);
  }
  if (all_finished(*request)) forget_request(*request);
}

void Engine::forget_request(const Request& request) {
  prompt_logprobs_.erase(request.handle);
  if (request_grammars_.erase(request.handle) == 0) return;
  for (int64_t seq_id : request.seq_ids) sequence_grammars_.erase(seq_id);
}

bool Engine::has_unfinished() const { return scheduler_->has_unfinished(); }

// Call N: schedule step N, launch its forward pass, then (its inputs are queued) complete step N-1,
// score step N's prompt logprobs, and launch step N's sampler without waiting. Without async
// scheduling step N is completed in the same call; with it, in the next call.
std::vector<StepOutput> Engine::step() {
  if (!failure_.empty()) throw std::runtime_error("fastpage: the engine failed earlier: " + failure_);
  // The RECORD_USER_SCOPEs name the step's phases in torch.profiler traces (bench/host_overhead.py);
  // they cost one branch each while no profiler runs. The whole step (the logits freed included):
  RECORD_USER_SCOPE("fastpage::engine_step");
  StepPlan plan;
  {
    RECORD_USER_SCOPE("fastpage::schedule");
    plan = scheduler_->schedule();
  }
  if (plan.empty()) return in_flight_ ? complete_in_flight() : std::vector<StepOutput>{};
  const LogitsLayout layout = logits_layout(plan);
  at::Tensor logits = execute(plan, layout);
  // Step N-1's tokens are appended before step N samples: its penalties and min_tokens see them, and
  // a sequence that step N-1 finished samples nothing more (its token in step N is discarded).
  std::vector<StepOutput> outputs;
  if (in_flight_) outputs = complete_in_flight();
  collect_prompt_logprobs(plan, logits, layout);
  const std::vector<ToSample> to_sample = sequences_to_sample(plan, layout);
  const bool complete_now = !to_sample.empty() && launch_sample(logits, to_sample);
  {
    // On the CPU, freeing [rows, vocab] float32 logits is an munmap that costs tens of ms at large
    // batches (e.g. 256 x 128k: ~40 ms); named, so a profile tells it from the rest.
    RECORD_USER_SCOPE("fastpage::release_logits");
    logits = at::Tensor();
  }
  if (complete_now) {
    std::vector<StepOutput> now = complete_in_flight();
    outputs.insert(outputs.end(), std::make_move_iterator(now.begin()), std::make_move_iterator(now.end()));
  }
  return outputs;
}

Engine::LogitsLayout Engine::logits_layout(const StepPlan& plan) const {
  // The last position of every sampling chunk, and every prompt position of chunks that want
  // prompt logprobs.
  LogitsLayout layout;
  layout.sample_row.assign(plan.seqs.size(), -1);
  layout.prompt_rows.assign(plan.seqs.size(), {-1, 0});
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSeq& s = plan.seqs[i];
    const int64_t first_token = plan.query_start_loc[i];
    if (s.prompt_logprobs) {
      const Sequence& seq = scheduler_->sequence(s.seq_id);
      // Position p predicts token p + 1; only prompt tokens 1..P-1 are scored.
      const int64_t last_scored = std::min<int64_t>(s.start_position + s.num_new_tokens, seq.num_prompt_tokens - 1);
      const int64_t count = last_scored - s.start_position;
      auto entry = prompt_logprobs_.find(scheduler_->request_of(s.seq_id).handle);
      if (count > 0 && entry != prompt_logprobs_.end() && !entry->second.done) {
        layout.prompt_rows[i] = {static_cast<int64_t>(layout.indices.size()), count};
        for (int64_t k = 0; k < count; ++k) layout.indices.push_back(first_token + k);
      }
    }
    if (s.sample) {
      layout.sample_row[i] = static_cast<int64_t>(layout.indices.size());
      layout.indices.push_back(first_token + s.num_new_tokens - 1);
    }
  }
  return layout;
}

at::Tensor Engine::execute(const StepPlan& plan, const LogitsLayout& layout) {
  RECORD_USER_SCOPE("fastpage::execute");
  at::Tensor logits;
  try {
    if (control_) control_->send_step(plan, layout.indices);
    logits = runner_->execute(plan, layout.indices, deferred_inputs(plan));
  } catch (const std::runtime_error& e) {
    if (control_) failure_ = e.what();  // the ranks are out of step: no further steps
    throw;
  }
  num_prompt_tokens_ += plan.num_tokens() - plan.num_decode_seqs;
  return logits;
}

std::vector<Engine::ToSample> Engine::sequences_to_sample(const StepPlan& plan, const LogitsLayout& layout) {
  // All forks happen before any row is built. Sequences are looked up once per row; the references
  // stay valid until the next schedule().
  std::vector<ToSample> to_sample;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (layout.sample_row[i] < 0) continue;
    const int64_t parent = plan.seqs[i].seq_id;
    const Sequence& seq = scheduler_->sequence(parent);
    if (seq.finished()) continue;  // by step N-1's token, an abort or finish_sequence
    const Request& request = scheduler_->request_of(parent);
    to_sample.push_back({parent, layout.sample_row[i], &seq, &request});
    if (request.params.best_of > 1 && request.seq_ids.size() == 1 && seq.num_output_tokens() == 0) {
      for (int32_t k = 1; k < request.params.best_of; ++k) {
        const int64_t child = scheduler_->fork(parent);
        to_sample.push_back({child, layout.sample_row[i], &scheduler_->sequence(child), &request});
      }
    }
  }
  return to_sample;
}

bool Engine::launch_sample(const at::Tensor& logits, const std::vector<ToSample>& to_sample) {
  std::vector<SamplingRow> rows;
  rows.reserve(to_sample.size());
  // Completed in this call without async scheduling, and for rows whose logprobs the sampler
  // computes at once anyway (logprobs, best_of > n, beam search).
  bool complete_now = !async_scheduling_;
  for (const ToSample& entry : to_sample) {
    const Sequence& seq = *entry.seq;
    const Request& req = *entry.request;
    SamplingRow row;
    row.logits_row = entry.logits_row;
    row.params = &req.params;
    row.token_ids = &seq.token_ids;
    row.num_prompt_tokens = seq.num_prompt_tokens;
    row.eos_token_ids = &req.eos_token_ids;
    row.seed = sequence_seed(*req.params.seed, seq.index);
    row.position = seq.num_tokens();
    rows.push_back(row);
    complete_now = complete_now || wants_logprobs(req.params);
  }
  if (!request_grammars_.empty()) fill_token_bitmasks(to_sample, rows);
  InFlightStep step;
  {
    RECORD_USER_SCOPE("fastpage::sample");
    step.sample = sampler_.launch(logits, rows);
  }
  step.seq_ids.reserve(to_sample.size());
  for (const ToSample& entry : to_sample) step.seq_ids.push_back(entry.seq_id);
  scheduler_->reserve(step.seq_ids);
  if (!complete_now) {
    step.row_of.reserve(step.seq_ids.size());
    for (size_t r = 0; r < step.seq_ids.size(); ++r) step.row_of.emplace(step.seq_ids[r], static_cast<int64_t>(r));
  }
  in_flight_ = std::move(step);
  return complete_now;
}

void Engine::fill_token_bitmasks(const std::vector<ToSample>& to_sample, std::vector<SamplingRow>& rows) {
  RECORD_USER_SCOPE("fastpage::grammar_bitmask");
  std::vector<GrammarMatcher*> matchers;
  std::vector<size_t> masked_rows;
  for (size_t r = 0; r < to_sample.size(); ++r) {
    auto grammar = request_grammars_.find(to_sample[r].request->handle);
    if (grammar == request_grammars_.end()) continue;
    auto [entry, created] = sequence_grammars_.try_emplace(to_sample[r].seq_id);
    if (created) {
      entry->second.matcher = grammar->second->new_matcher();
      entry->second.enforcing = to_sample[r].request->params.structured_output.start_after.empty();
    }
    if (!entry->second.enforcing) continue;
    matchers.push_back(entry->second.matcher.get());
    masked_rows.push_back(r);
  }
  if (matchers.empty()) return;
  const int64_t words = grammar_backend_->words_per_row();
  bitmask_.resize(matchers.size() * words);
  grammar_backend_->fill_bitmasks(matchers, bitmask_.data());
  for (size_t i = 0; i < masked_rows.size(); ++i) rows[masked_rows[i]].token_bitmask = bitmask_.data() + i * words;
}

void Engine::advance_grammar(int64_t seq_id, int32_t token, FilledToken& filled) {
  auto entry = sequence_grammars_.find(seq_id);
  if (entry == sequence_grammars_.end()) return;
  SequenceGrammar& grammar = entry->second;
  if (!grammar.enforcing) {
    // The grammar starts after the output ends with start_after (this token included).
    const std::vector<int32_t>& marker = filled.request->params.structured_output.start_after;
    const std::vector<int32_t>& tokens = filled.seq->token_ids;
    const size_t num_output = tokens.size() - filled.seq->num_prompt_tokens;
    grammar.enforcing = num_output >= marker.size() && std::equal(marker.rbegin(), marker.rend(), tokens.rbegin());
    return;
  }
  if (filled.finish_reason == FinishReason::None && !grammar.matcher->accept(token)) {
    filled.finish_reason = FinishReason::Abort;  // every token was masked (e.g. min_tokens banned the end)
    scheduler_->finish_sequence(seq_id, filled.finish_reason);
  } else if (filled.finish_reason == FinishReason::None && !grammar.matcher->terminated()) {
    return;
  }
  // Done with the grammar: finished, or complete with its stop token ignored (ignore_eos), after
  // which the output goes on unconstrained, as in vLLM.
  sequence_grammars_.erase(entry);
}

DeferredInputIds Engine::deferred_inputs(const StepPlan& plan) const {
  DeferredInputIds deferred;
  if (!in_flight_ || in_flight_->row_of.empty()) return deferred;
  // A placeholder is always its sequence's last token, so it can only end a chunk.
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const int32_t last = plan.query_start_loc[i + 1] - 1;
    if (plan.input_ids[last] != kPlaceholderToken) continue;
    auto row = in_flight_->row_of.find(plan.seqs[i].seq_id);
    if (row == in_flight_->row_of.end()) {
      throw std::logic_error("fastpage: seq_id " + std::to_string(plan.seqs[i].seq_id) +
                             " awaits a token that no step in flight samples");
    }
    deferred.token_indices.push_back(last);
    deferred.rows.push_back(row->second);
  }
  if (!deferred.empty()) deferred.sampled_ids = in_flight_->sample.tokens();
  return deferred;
}

std::vector<StepOutput> Engine::complete_in_flight() {
  InFlightStep step = std::move(*in_flight_);
  in_flight_.reset();
  SampleResult sampled;
  {
    RECORD_USER_SCOPE("fastpage::wait_sample");
    sampled = step.sample.wait();
  }
  const size_t num_rows = step.seq_ids.size();
  std::vector<FilledToken> filled;
  {
    RECORD_USER_SCOPE("fastpage::update");
    std::vector<SampledToken> tokens(num_rows);
    for (size_t r = 0; r < num_rows; ++r) {
      tokens[r] = SampledToken{step.seq_ids[r], sampled.tokens[r], sampled.logprobs[r].logprob};
    }
    filled = scheduler_->fill(tokens);
    if (!sequence_grammars_.empty()) {
      RECORD_USER_SCOPE("fastpage::grammar_accept");
      for (size_t r = 0; r < num_rows; ++r) {
        if (filled[r].seq) advance_grammar(step.seq_ids[r], sampled.tokens[r], filled[r]);
      }
    }
  }
  std::vector<StepOutput> outputs;
  {
    RECORD_USER_SCOPE("fastpage::step_outputs");
    outputs.reserve(num_rows);
    for (size_t r = 0; r < num_rows; ++r) {
      if (!filled[r].seq) continue;  // its sequence finished before the token arrived
      const Sequence& seq = *filled[r].seq;
      const Request& req = *filled[r].request;
      StepOutput out;
      out.handle = req.handle;
      out.seq_index = seq.index;
      out.new_token_ids = {sampled.tokens[r]};
      if (req.params.logprobs) out.logprobs.push_back(std::move(sampled.logprobs[r]));
      if (seq.index == 0 && seq.num_output_tokens() == 1 && req.params.prompt_logprobs) {
        auto pending = prompt_logprobs_.find(req.handle);
        if (pending != prompt_logprobs_.end()) out.prompt_logprobs = std::move(pending->second.entries);
      }
      out.cumulative_logprob = seq.cumulative_logprob;
      out.num_cached_tokens = seq.num_cached_prompt_tokens;
      out.finish_reason = filled[r].finish_reason;
      out.stop_token = filled[r].stop_token;
      outputs.push_back(std::move(out));
    }
  }
  num_generation_tokens_ += static_cast<int64_t>(outputs.size());
  for (size_t r = 0; r < num_rows; ++r) {
    if (filled[r].finish_reason != FinishReason::None && all_finished(*filled[r].request)) {
      forget_request(*filled[r].request);
    }
  }
  return outputs;
}

void Engine::collect_prompt_logprobs(const StepPlan& plan, const at::Tensor& logits, const LogitsLayout& layout) {
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const auto [first_row, count] = layout.prompt_rows[i];
    if (first_row < 0) continue;
    const ScheduledSeq& s = plan.seqs[i];
    const Sequence& seq = scheduler_->sequence(s.seq_id);
    const Request& req = scheduler_->request_of(s.seq_id);
    std::vector<int32_t> targets(seq.token_ids.begin() + s.start_position + 1,
                                 seq.token_ids.begin() + s.start_position + 1 + count);
    at::Tensor rows = logits.narrow(0, first_row, count);
    auto scored = Sampler::score(rows, targets, *req.params.prompt_logprobs);
    PromptLogprobs& pending = prompt_logprobs_.at(req.handle);
    pending.entries.insert(pending.entries.end(), std::make_move_iterator(scored.begin()),
                           std::make_move_iterator(scored.end()));
    if (s.start_position + s.num_new_tokens >= seq.num_prompt_tokens) pending.done = true;
  }
}

bool Engine::all_finished(const Request& request) const {
  for (int64_t seq_id : request.seq_ids) {
    if (!scheduler_->sequence(seq_id).finished()) return false;
  }
  return true;
}

void Engine::check_invariants() const { scheduler_->check_invariants(); }

void Engine::reset_prefix_cache() { scheduler_->reset_prefix_cache(); }

c10::Device Engine::device() const { return runner_->device(); }

EngineStats Engine::stats() const {
  EngineStats s;
  s.num_running = scheduler_->num_running();
  s.num_waiting = scheduler_->num_waiting();
  s.num_swapped = scheduler_->num_swapped();
  s.num_device_blocks = scheduler_->device_blocks().num_blocks();
  s.num_free_device_blocks = scheduler_->device_blocks().num_free_blocks();
  s.num_preemptions = scheduler_->num_preemptions();
  s.prefix_cache_queries = scheduler_->prefix_cache().num_queried_tokens();
  s.prefix_cache_hits = scheduler_->prefix_cache().num_hit_tokens();
  s.prompt_tokens = num_prompt_tokens_;
  s.generation_tokens = num_generation_tokens_;
  return s;
}

}  // namespace fastpage
