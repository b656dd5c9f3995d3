// Compiles requests' grammars on worker threads, off the step loop. Every job ends exactly once, by a
// call of `done` from a worker or the watchdog: with its compiled grammar, or with why not (a spec the
// backend refuses, or no result within the time limit). A compile past its limit cannot be
// interrupted: its worker finishes it and the result is dropped; the limit counts from submit(), so
// jobs queued behind a stuck worker end on time too.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fastpage/structured_output.h"

namespace fastpage {

class GrammarCompileQueue {
 public:
  // grammar null: `error` says why.
  using Done = std::function<void(int64_t job, std::shared_ptr<const CompiledGrammar> grammar, const std::string& error)>;

  GrammarCompileQueue(std::shared_ptr<GrammarBackend> backend, int32_t num_workers, double timeout_s, Done done);
  ~GrammarCompileQueue();  // waits for the compiles in progress; queued jobs end with an error

  void submit(int64_t job, StructuredOutput output);

 private:
  struct Job;
  using Clock = std::chrono::steady_clock;

  void work();
  void watch();
  // First call per job wins; false when the job had ended already.
  bool finish(Job& job, std::shared_ptr<const CompiledGrammar> grammar, const std::string& error);

  std::shared_ptr<GrammarBackend> backend_;
  const std::chrono::duration<double> timeout_;
  Done done_;
  std::mutex mutex_;
  std::condition_variable queued_;     // workers wait for jobs
  std::condition_variable deadlines_;  // the watchdog waits for the next deadline
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> pending_;  // submitted and not ended, in submit order
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  std::thread watchdog_;
};

}  // namespace fastpage
