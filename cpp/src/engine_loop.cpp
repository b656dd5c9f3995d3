#include "fastpage/engine_loop.h"

#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <exception>
#include <future>
#include <stdexcept>
#include <variant>

#include "structured/grammar_compile_queue.h"

#ifdef __linux__
#include <pthread.h>
#endif

namespace fastpage {
namespace {

double monotonic_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double thread_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

}  // namespace

struct EngineLoop::Command {
  struct Add {
    RequestHandle handle;
    std::string request_id;
    std::vector<int32_t> prompt_token_ids;
    SamplingParams params;
    std::vector<int32_t> eos_token_ids;
    int32_t priority;
    std::shared_ptr<const CompiledGrammar> grammar;  // structured outputs
  };
  struct Abort {
    std::string request_id;
  };
  struct Finish {
    std::string request_id;
    int32_t seq_index;
  };
  struct Call {
    std::function<void(Engine&)> fn;
    std::promise<void>* done;
  };
  std::variant<Add, Abort, Finish, Call> body;
};

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
  if (!engine_) throw std::invalid_argument("EngineLoop: engine must not be null");
  stats_ = engine_->stats();
}

EngineLoop::~EngineLoop() {
  stop();
  compile_queue_.reset();  // its workers end first: they call back into this loop
}

void EngineLoop::set_grammar_backend(std::shared_ptr<GrammarBackend> backend, int32_t compile_threads,
                                     double compile_timeout_s) {
  if (compile_queue_) throw std::logic_error("EngineLoop::set_grammar_backend: the backend is set already");
  run_between_steps([&](Engine& engine) { engine.set_grammar_backend(backend); });
  compile_queue_ = std::make_unique<GrammarCompileQueue>(
      std::move(backend), compile_threads, compile_timeout_s,
      [this](int64_t job, std::shared_ptr<const CompiledGrammar> grammar, const std::string& error) {
        grammar_done(job, std::move(grammar), error);
      });
}

void EngineLoop::add_request(RequestHandle handle, const std::string& request_id,
                             std::vector<int32_t> prompt_token_ids, const SamplingParams& params,
                             std::vector<int32_t> eos_token_ids, int32_t priority) {
  engine_->validate_request(prompt_token_ids, params);
  const bool structured = params.structured_output.active();
  if (structured && !compile_queue_) {
    throw std::invalid_argument("structured_output: this engine has no grammar backend");
  }
  Command add{Command::Add{handle, request_id, std::move(prompt_token_ids), params, std::move(eos_token_ids),
                           priority, nullptr}};
  {
    std::lock_guard lock(commands_mutex_);
    if (!failure_.empty()) throw std::runtime_error("fastpage: the engine failed: " + failure_);
    if (!structured) {
      commands_.push_back(std::move(add));
      work_ready_.notify_one();
      return;
    }
    if (!compiling_.emplace(handle, std::move(add)).second) {
      throw std::invalid_argument("request handle " + std::to_string(handle) + " is in use");
    }
  }
  compile_queue_->submit(handle, params.structured_output);
}

void EngineLoop::grammar_done(RequestHandle handle, std::shared_ptr<const CompiledGrammar> grammar,
                              const std::string& error) {
  {
    std::lock_guard lock(commands_mutex_);
    auto waiting = compiling_.find(handle);
    if (waiting == compiling_.end()) return;  // aborted while it compiled
    Command command = std::move(waiting->second);
    compiling_.erase(waiting);
    if (grammar && failure_.empty()) {
      std::get<Command::Add>(command.body).grammar = std::move(grammar);
      commands_.push_back(std::move(command));
      work_ready_.notify_one();
      return;
    }
  }
  reject(handle, grammar ? "fastpage: the engine failed: " + failure_ : error);
}

void EngineLoop::abort_request(const std::string& request_id) {
  {
    std::lock_guard lock(commands_mutex_);
    std::erase_if(compiling_, [&](const auto& entry) {
      return std::get<Command::Add>(entry.second.body).request_id == request_id;
    });
  }
  submit({Command::Abort{request_id}});
}

void EngineLoop::finish_sequence(const std::string& request_id, int32_t seq_index) {
  submit({Command::Finish{request_id, seq_index}});
}

void EngineLoop::submit(Command command) {
  if (!running()) {
    // The caller owns the engine between its step() calls: free the blocks now, and drop the
    // request if it is still queued.
    if (const auto* abort = std::get_if<Command::Abort>(&command.body)) {
      std::lock_guard lock(commands_mutex_);
      std::erase_if(commands_, [&](const Command& queued) {
        const auto* add = std::get_if<Command::Add>(&queued.body);
        return add != nullptr && add->request_id == abort->request_id;
      });
    }
    apply(command);
    return;
  }
  std::lock_guard lock(commands_mutex_);
  commands_.push_back(std::move(command));
  work_ready_.notify_one();
}

void EngineLoop::run_between_steps(const std::function<void(Engine&)>& fn) {
  if (!running()) {
    fn(*engine_);
    return;
  }
  std::promise<void> done;
  std::future<void> result = done.get_future();
  {
    std::lock_guard lock(commands_mutex_);
    if (!failure_.empty()) throw std::runtime_error("fastpage: the engine failed: " + failure_);
    commands_.push_back({Command::Call{fn, &done}});
    work_ready_.notify_one();
  }
  result.get();
}

void EngineLoop::start() {
  if (running()) return;
  {
    std::lock_guard lock(commands_mutex_);
    stopping_ = false;
  }
  thread_ = std::thread([this] { run(); });
}

void EngineLoop::stop() {
  if (!running()) return;
  {
    std::lock_guard lock(commands_mutex_);
    stopping_ = true;
    work_ready_.notify_one();
  }
  thread_.join();
  // What arrived after the thread's last step is applied now (aborts free their blocks at once;
  // requests join the engine for the next step).
  std::vector<Command> commands;
  {
    std::lock_guard lock(commands_mutex_);
    commands.swap(commands_);
  }
  for (Command& command : commands) apply(command);
}

void EngineLoop::run() {
#ifdef __linux__
  pthread_setname_np(pthread_self(), "fastpage-loop");
#endif
  at::init_num_threads();  // this thread's intra-op pool, as torch sets up its own threads
  const c10::DeviceGuard device(engine_->device());
  while (true) {
    std::vector<Command> commands;
    {
      std::unique_lock lock(commands_mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || !commands_.empty() || engine_busy_; });
      if (stopping_) break;
      commands.swap(commands_);
    }
    if (!apply_and_step(commands)) break;
  }
  // After a failure no step comes: a run_between_steps queued meanwhile must not wait for one.
  std::lock_guard lock(commands_mutex_);
  if (failure_.empty()) return;
  for (Command& command : commands_) {
    if (auto* call = std::get_if<Command::Call>(&command.body)) {
      call->done->set_exception(std::make_exception_ptr(std::runtime_error("fastpage: the engine failed: " + failure_)));
    }
  }
  commands_.clear();
}

void EngineLoop::step() {
  if (running()) throw std::logic_error("EngineLoop::step: the loop runs on its own thread (start() was called)");
  std::vector<Command> commands;
  {
    std::lock_guard lock(commands_mutex_);
    if (!failure_.empty()) throw std::runtime_error("fastpage: the engine failed: " + failure_);
    commands.swap(commands_);
  }
  if (apply_and_step(commands)) return;
  // apply_and_step published the failure; the caller hears of it too.
  std::lock_guard lock(commands_mutex_);
  throw std::runtime_error(failure_);
}

bool EngineLoop::apply_and_step(std::vector<Command>& commands) {
  for (Command& command : commands) apply(command);
  std::vector<StepOutput> outputs;
  try {
    const double cpu_before = thread_cpu_seconds();
    outputs = engine_->step();
    step_cpu_seconds_.fetch_add(thread_cpu_seconds() - cpu_before, std::memory_order_relaxed);
  } catch (const std::exception& e) {
    publish_failure(e.what());
    return false;
  }
  const bool busy = engine_->has_unfinished() || engine_->has_in_flight();
  {
    std::lock_guard lock(commands_mutex_);
    engine_busy_ = busy;
  }
  publish(std::move(outputs));
  return true;
}

void EngineLoop::apply(Command& command) {
  if (auto* add = std::get_if<Command::Add>(&command.body)) {
    try {
      engine_->add_request(add->request_id, std::move(add->prompt_token_ids), add->params,
                           std::move(add->eos_token_ids), add->priority, add->handle, std::move(add->grammar));
    } catch (const std::invalid_argument& e) {
      reject(add->handle, e.what());  // a request_id still in use: validated otherwise
    }
  } else if (auto* abort = std::get_if<Command::Abort>(&command.body)) {
    engine_->abort_request(abort->request_id);
  } else if (auto* finish = std::get_if<Command::Finish>(&command.body)) {
    try {
      engine_->finish_sequence(finish->request_id, finish->seq_index);
    } catch (const std::invalid_argument&) {
      // The request ended (and was erased) before the command arrived: nothing left to finish.
    }
  } else {
    auto& call = std::get<Command::Call>(command.body);
    try {
      call.fn(*engine_);
      call.done->set_value();
    } catch (...) {
      call.done->set_exception(std::current_exception());
    }
  }
}

void EngineLoop::publish(std::vector<StepOutput> outputs) {
  const EngineStats stats = engine_->stats();
  std::lock_guard lock(outputs_mutex_);
  for (StepOutput& out : outputs) {
    auto& rows = pending_rows_[out.handle];
    PendingRow* row = nullptr;
    for (const auto& [seq_index, index] : rows) {
      if (seq_index == out.seq_index) row = &pending_[index];
    }
    if (row == nullptr) {
      rows.emplace_back(out.seq_index, pending_.size());
      const bool has_logprobs = !out.logprobs.empty();
      pending_.push_back({std::move(out), has_logprobs});
      continue;
    }
    // A later step of a sequence whose earlier tokens were not taken yet: append to its row.
    StepOutput& merged = row->output;
    merged.new_token_ids.insert(merged.new_token_ids.end(), out.new_token_ids.begin(), out.new_token_ids.end());
    if (!out.logprobs.empty()) {
      row->has_logprobs = true;
      merged.logprobs.insert(merged.logprobs.end(), std::make_move_iterator(out.logprobs.begin()),
                             std::make_move_iterator(out.logprobs.end()));
    }
    if (!out.prompt_logprobs.empty()) merged.prompt_logprobs = std::move(out.prompt_logprobs);
    merged.cumulative_logprob = out.cumulative_logprob;
    merged.finish_reason = out.finish_reason;
    merged.stop_token = out.stop_token;
  }
  pending_meta_.timestamp = monotonic_seconds();
  ++pending_meta_.num_steps;
  stats_ = stats;
  if (!pending_.empty()) outputs_ready_.notify_all();
}

void EngineLoop::reject(RequestHandle handle, const std::string& why) {
  std::lock_guard lock(outputs_mutex_);
  pending_meta_.rejected_handles.push_back(handle);
  pending_meta_.rejected_reasons.push_back(why);
  outputs_ready_.notify_all();
}

void EngineLoop::publish_failure(const std::string& why) {
  {
    std::lock_guard lock(commands_mutex_);
    failure_ = why.empty() ? "unknown error" : why;
    engine_busy_ = false;
  }
  std::lock_guard lock(outputs_mutex_);
  pending_meta_.failure = why.empty() ? "unknown error" : why;
  outputs_ready_.notify_all();
}

StepBatch EngineLoop::take(double timeout_s) {
  std::unique_lock lock(outputs_mutex_);
  auto ready = [&] {
    return !pending_.empty() || !pending_meta_.rejected_handles.empty() || !pending_meta_.failure.empty();
  };
  if (timeout_s > 0 && !ready()) outputs_ready_.wait_for(lock, std::chrono::duration<double>(timeout_s), ready);
  StepBatch batch = std::move(pending_meta_);
  pending_meta_ = StepBatch{};
  if (!batch.failure.empty()) pending_meta_.failure = batch.failure;  // every later take() says so too
  batch.stats = stats_;
  const size_t num_rows = pending_.size();
  batch.handles.reserve(num_rows);
  batch.seq_indices.reserve(num_rows);
  batch.token_offsets.reserve(num_rows + 1);
  batch.finish_reasons.reserve(num_rows);
  batch.stop_tokens.reserve(num_rows);
  batch.cumulative_logprobs.reserve(num_rows);
  batch.num_cached_tokens.reserve(num_rows);
  for (size_t r = 0; r < num_rows; ++r) {
    StepOutput& out = pending_[r].output;
    batch.handles.push_back(out.handle);
    batch.seq_indices.push_back(out.seq_index);
    batch.token_ids.insert(batch.token_ids.end(), out.new_token_ids.begin(), out.new_token_ids.end());
    batch.token_offsets.push_back(static_cast<int32_t>(batch.token_ids.size()));
    batch.finish_reasons.push_back(static_cast<uint8_t>(out.finish_reason));
    batch.stop_tokens.push_back(out.stop_token);
    batch.cumulative_logprobs.push_back(out.cumulative_logprob);
    batch.num_cached_tokens.push_back(out.num_cached_tokens);
    if (pending_[r].has_logprobs) {
      batch.logprob_rows.push_back(static_cast<int32_t>(r));
      batch.logprobs.push_back(std::move(out.logprobs));
    }
    if (!out.prompt_logprobs.empty()) {
      batch.prompt_logprob_rows.push_back(static_cast<int32_t>(r));
      batch.prompt_logprobs.push_back(std::move(out.prompt_logprobs));
    }
  }
  pending_.clear();
  pending_rows_.clear();
  return batch;
}

bool EngineLoop::has_unfinished() const {
  std::lock_guard lock(commands_mutex_);
  // Not started, the caller owns the engine: ask it (engine_busy_ may predate an abort since).
  return !commands_.empty() || !compiling_.empty() || (running() ? engine_busy_ : engine_->has_unfinished());
}

EngineStats EngineLoop::stats() const {
  if (!running()) return engine_->stats();  // the caller owns the engine: its stats as of now
  std::lock_guard lock(outputs_mutex_);
  return stats_;
}

}  // namespace fastpage
