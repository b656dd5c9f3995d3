#include "fastpage/worker.h"

#include <stdexcept>
#include <string>

#include "parallel/control_plane.h"

namespace fastpage {

Worker::Worker(const ModelConfig& model, const EngineConfig& config, WeightMap weights, c10::Device device,
               c10::ScalarType dtype) {
  const ParallelConfig& parallel = config.parallel;
  if (parallel.rank < 1 || parallel.rank >= parallel.world_size()) {
    throw std::invalid_argument("a Worker's ParallelConfig.rank must be in [1, " +
                                std::to_string(parallel.world_size()) + "), got " + std::to_string(parallel.rank));
  }
  runner_ = std::make_unique<ModelRunner>(model, config, std::move(weights), device, dtype);
  control_ = std::make_unique<ControlPlane>(parallel.world_group);
}

Worker::~Worker() = default;

void Worker::run() {
  StepPlan plan;
  std::vector<int64_t> logits_indices;
  while (control_->receive(plan, logits_indices)) {
    runner_->execute(plan, logits_indices);
    ++num_steps_;
  }
}

}  // namespace fastpage
