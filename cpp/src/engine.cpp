#include "fastpage/engine.h"

#include <ATen/ops/index_select.h>
#include <ATen/record_function.h>

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
  if (config.parallel.rank != 0) {
    throw std::invalid_argument("the Engine is rank 0; ranks 1.. run fastpage::Worker (ParallelConfig.rank " +
                                std::to_string(config.parallel.rank) + ")");
  }
  runner_ = std::make_unique<ModelRunner>(model_config_, config_, std::move(weights), device, dtype);
  if (config.parallel.world_size() > 1) control_ = std::make_unique<ControlPlane>(config.parallel.world_group);
  scheduler_ = std::make_unique<Scheduler>(config_, config_.max_model_len, runner_->num_device_blocks(),
                                           runner_->num_host_blocks());
}

Engine::~Engine() {
  if (!control_ || !failure_.empty()) return;
  try {
    control_->send_shutdown();
  } catch (const std::exception&) {
    // A worker already gone: nothing left to tell it.
  }
}

void Engine::add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                         const SamplingParams& params, std::vector<int32_t> eos_token_ids, int32_t priority) {
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
  SamplingParams resolved = params;
  if (!resolved.seed) {
    // Unseeded requests still get a fixed stream, so a run is reproducible from the engine seed.
    next_seed_ = splitmix64(next_seed_);
    resolved.seed = next_seed_;
  }
  scheduler_->add_request(request_id, std::move(prompt_token_ids), resolved, std::move(eos_token_ids), priority);
}

bool Engine::abort_request(const std::string& request_id) {
  pending_prompt_logprobs_.erase(request_id);
  return scheduler_->abort_request(request_id);
}

void Engine::finish_sequence(const std::string& request_id, int32_t seq_index) {
  const Request* request = scheduler_->find_request(request_id);
  if (!request) throw std::invalid_argument("unknown request_id " + request_id);
  for (int64_t seq_id : request->seq_ids) {
    const Sequence& seq = scheduler_->sequence(seq_id);
    if (seq.index == seq_index && !seq.finished()) scheduler_->finish_sequence(seq_id, FinishReason::Stop);
  }
}

bool Engine::has_unfinished() const { return scheduler_->has_unfinished(); }

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
  if (plan.empty()) return {};

  // Which flattened token positions need logits: the last one of every sampling chunk, and every
  // prompt position of chunks that want prompt logprobs.
  std::vector<int64_t> logits_indices;
  std::vector<int64_t> sample_row(plan.seqs.size(), -1);
  std::vector<std::pair<int64_t, int64_t>> prompt_rows(plan.seqs.size(), {-1, 0});  // first row, count
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSeq& s = plan.seqs[i];
    const int64_t first_token = plan.query_start_loc[i];
    if (s.prompt_logprobs) {
      const Sequence& seq = scheduler_->sequence(s.seq_id);
      // Position p predicts token p + 1; only prompt tokens 1..P-1 are scored.
      const int64_t last_scored = std::min<int64_t>(s.start_position + s.num_new_tokens, seq.num_prompt_tokens - 1);
      const int64_t count = last_scored - s.start_position;
      if (count > 0 && !prompt_logprobs_done_.count(scheduler_->request_of(s.seq_id).request_id)) {
        prompt_rows[i] = {static_cast<int64_t>(logits_indices.size()), count};
        for (int64_t k = 0; k < count; ++k) logits_indices.push_back(first_token + k);
      }
    }
    if (s.sample) {
      sample_row[i] = static_cast<int64_t>(logits_indices.size());
      logits_indices.push_back(first_token + s.num_new_tokens - 1);
    }
  }
  at::Tensor logits;
  try {
    RECORD_USER_SCOPE("fastpage::execute");
    if (control_) control_->send_step(plan, logits_indices);
    logits = runner_->execute(plan, logits_indices);
  } catch (const std::runtime_error& e) {
    if (control_) failure_ = e.what();  // the ranks are out of step: no further steps
    throw;
  }
  num_prompt_tokens_ += plan.num_tokens() - plan.num_decode_seqs;

  std::vector<StepOutput> outputs;
  collect_prompt_logprobs(plan, logits, prompt_rows);

  // A request's first sample forks it into best_of sequences that draw from the same logits row.
  // All forks happen before any row points into a sequence.
  std::vector<std::pair<int64_t, int64_t>> to_sample;  // (seq_id, logits row)
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (sample_row[i] < 0) continue;
    const int64_t parent = plan.seqs[i].seq_id;
    to_sample.emplace_back(parent, sample_row[i]);
    const Request& request = scheduler_->request_of(parent);
    if (request.params.best_of > 1 && request.seq_ids.size() == 1 &&
        scheduler_->sequence(parent).num_output_tokens() == 0) {
      for (int32_t k = 1; k < request.params.best_of; ++k) {
        to_sample.emplace_back(scheduler_->fork(parent), sample_row[i]);
      }
    }
  }
  std::vector<SamplingRow> rows;
  rows.reserve(to_sample.size());
  // Looked up once per row (each lookup takes the scheduler's lock); valid until the next schedule().
  std::vector<std::pair<const Sequence*, const Request*>> row_owners;
  row_owners.reserve(to_sample.size());
  for (const auto& [seq_id, logits_row] : to_sample) {
    const Sequence& seq = scheduler_->sequence(seq_id);
    const Request& req = scheduler_->request_of(seq_id);
    row_owners.emplace_back(&seq, &req);
    SamplingRow row;
    row.logits_row = logits_row;
    row.params = &req.params;
    row.token_ids = &seq.token_ids;
    row.num_prompt_tokens = seq.num_prompt_tokens;
    row.eos_token_ids = &req.eos_token_ids;
    row.seed = sequence_seed(*req.params.seed, seq.index);
    row.position = seq.num_tokens();
    rows.push_back(row);
  }
  if (rows.empty()) return outputs;

  SampleResult sampled;
  {
    RECORD_USER_SCOPE("fastpage::sample");
    sampled = sampler_.sample(logits, rows);
  }
  {
    // On the CPU, freeing [rows, vocab] float32 logits is an munmap that costs tens of ms at large
    // batches (e.g. 256 x 128k: ~40 ms); named, so a profile tells it from the rest.
    RECORD_USER_SCOPE("fastpage::release_logits");
    logits = at::Tensor();
  }
  num_generation_tokens_ += static_cast<int64_t>(rows.size());
  std::unordered_map<int64_t, FinishedSeq> finished;
  {
    RECORD_USER_SCOPE("fastpage::update");
    std::vector<SampledToken> tokens(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      tokens[r] = SampledToken{to_sample[r].first, sampled.tokens[r], sampled.logprobs[r].logprob};
    }
    for (const FinishedSeq& f : scheduler_->update(tokens)) finished.emplace(f.seq_id, f);
  }
  {
    RECORD_USER_SCOPE("fastpage::step_outputs");
    outputs.reserve(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const Sequence& seq = *row_owners[r].first;
      const Request& req = *row_owners[r].second;
      StepOutput out;
      out.request_id = req.request_id;
      out.seq_index = seq.index;
      out.new_token_ids = {sampled.tokens[r]};
      if (req.params.logprobs) out.logprobs.push_back(std::move(sampled.logprobs[r]));
      if (seq.index == 0 && seq.num_output_tokens() == 1) {
        auto pending = pending_prompt_logprobs_.find(req.request_id);
        if (pending != pending_prompt_logprobs_.end()) {
          out.prompt_logprobs = std::move(pending->second);
          pending_prompt_logprobs_.erase(pending);
        }
      }
      out.cumulative_logprob = seq.cumulative_logprob;
      out.num_prompt_tokens = seq.num_prompt_tokens;
      out.num_cached_tokens = seq.num_cached_prompt_tokens;
      if (auto f = finished.find(to_sample[r].first); f != finished.end()) {
        out.finished = true;
        out.finish_reason = f->second.reason;
        out.stop_token = f->second.stop_token;
      }
      outputs.push_back(std::move(out));
    }
  }
  for (const auto& [seq_id, f] : finished) {
    const Request& req = scheduler_->request_of(seq_id);
    if (all_finished(req)) prompt_logprobs_done_.erase(req.request_id);
  }
  return outputs;
}

void Engine::collect_prompt_logprobs(const StepPlan& plan, const at::Tensor& logits,
                                     const std::vector<std::pair<int64_t, int64_t>>& prompt_rows) {
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const auto [first_row, count] = prompt_rows[i];
    if (first_row < 0) continue;
    const ScheduledSeq& s = plan.seqs[i];
    const Sequence& seq = scheduler_->sequence(s.seq_id);
    const Request& req = scheduler_->request_of(s.seq_id);
    std::vector<int32_t> targets(seq.token_ids.begin() + s.start_position + 1,
                                 seq.token_ids.begin() + s.start_position + 1 + count);
    at::Tensor rows = logits.narrow(0, first_row, count);
    auto scored = Sampler::score(rows, targets, *req.params.prompt_logprobs);
    auto& pending = pending_prompt_logprobs_[req.request_id];
    pending.insert(pending.end(), std::make_move_iterator(scored.begin()), std::make_move_iterator(scored.end()));
    if (s.start_position + s.num_new_tokens >= seq.num_prompt_tokens) prompt_logprobs_done_.insert(req.request_id);
  }
}

bool Engine::all_finished(const Request& request) const {
  for (int64_t seq_id : request.seq_ids) {
    if (!scheduler_->sequence(seq_id).finished()) return false;
  }
  return true;
}

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
