// A tensor / pipeline parallel rank other than 0: holds its shard of the weights and its KV cache,
// and runs every step plan that rank 0 (the Engine) broadcasts until the Engine shuts down.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>

#include "fastpage/config.h"
#include "fastpage/model_runner.h"

namespace fastpage {

class ControlPlane;

class Worker {
 public:
  // config.parallel names this rank (1..world_size-1) and its process groups; `weights` are this
  // rank's shard (fastpage/parallel.h). Constructing every rank's ModelRunner together (the Engine's
  // included) agrees on the KV-cache size.
  Worker(const ModelConfig& model, const EngineConfig& config, WeightMap weights, c10::Device device,
         c10::ScalarType dtype);
  ~Worker();

  // Runs the Engine's steps until it sends shutdown; waits for the next step as long as the Engine is
  // idle. std::runtime_error when the connection to another rank fails (a rank died) or a data
  // collective times out.
  void run();
  int64_t num_steps() const { return num_steps_; }

 private:
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<ControlPlane> control_;
  int64_t num_steps_ = 0;
};

}  // namespace fastpage
