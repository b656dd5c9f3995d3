#include "grammar_compile_queue.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <stdexcept>

#ifdef __linux__
#include <pthread.h>
#endif

namespace fastpage {

struct GrammarCompileQueue::Job {
  int64_t id;
  StructuredOutput output;
  Clock::time_point deadline;
  bool ended = false;  // guarded by mutex_
};

GrammarCompileQueue::GrammarCompileQueue(std::shared_ptr<GrammarBackend> backend, int32_t num_workers,
                                         double timeout_s, Done done)
    : backend_(std::move(backend)), timeout_(timeout_s), done_(std::move(done)) {
  if (!backend_) throw std::invalid_argument("GrammarCompileQueue: backend must not be null");
  if (num_workers < 1 || !(timeout_s > 0)) {
    throw std::invalid_argument("GrammarCompileQueue: needs at least one worker and a positive time limit");
  }
  for (int32_t i = 0; i < num_workers; ++i) workers_.emplace_back([this] { work(); });
  watchdog_ = std::thread([this] { watch(); });
}

GrammarCompileQueue::~GrammarCompileQueue() {
  std::vector<std::shared_ptr<Job>> unstarted;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    unstarted.assign(queue_.begin(), queue_.end());
    queue_.clear();
  }
  queued_.notify_all();
  deadlines_.notify_all();
  for (const auto& job : unstarted) finish(*job, nullptr, "the engine stopped before the grammar was compiled");
  for (std::thread& worker : workers_) worker.join();
  watchdog_.join();
}

void GrammarCompileQueue::submit(int64_t id, StructuredOutput output) {
  auto job = std::make_shared<Job>(Job{id, std::move(output),
                                       Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout_)});
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw std::runtime_error("fastpage: the grammar compiler has stopped");
    queue_.push_back(job);
    pending_.push_back(job);
  }
  queued_.notify_one();
  deadlines_.notify_one();
}

bool GrammarCompileQueue::finish(Job& job, std::shared_ptr<const CompiledGrammar> grammar, const std::string& error) {
  {
    std::lock_guard lock(mutex_);
    if (job.ended) return false;
    job.ended = true;
    std::erase_if(pending_, [&](const std::shared_ptr<Job>& p) { return p.get() == &job; });
  }
  done_(job.id, std::move(grammar), error);
  return true;
}

void GrammarCompileQueue::work() {
#ifdef __linux__
  pthread_setname_np(pthread_self(), "fastpage-grammar");
#endif
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(mutex_);
      queued_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      job = std::move(queue_.front());
      queue_.pop_front();
      if (job->ended) continue;  // timed out while queued
    }
    std::shared_ptr<const CompiledGrammar> grammar;
    std::string error;
    try {
      grammar = backend_->compile(job->output);
    } catch (const std::exception& e) {
      error = e.what();
    }
    finish(*job, std::move(grammar), error);
  }
}

void GrammarCompileQueue::watch() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    // pending_ is in submit order, and every job has the same limit: the first ends first.
    if (pending_.empty()) {
      deadlines_.wait(lock);
      continue;
    }
    std::shared_ptr<Job> first = pending_.front();
    if (deadlines_.wait_until(lock, first->deadline) == std::cv_status::no_timeout) continue;
    if (first->ended) continue;
    lock.unlock();
    char limit[32];
    std::snprintf(limit, sizeof(limit), "%g", timeout_.count());
    finish(*first, nullptr, std::string("structured_output: the grammar did not compile within ") + limit + " s");
    lock.lock();
  }
}

}  // namespace fastpage
