// Rank 0 -> every other rank: each step's plan, then shutdown, broadcast over the world group
// (Gloo, CPU tensors). A message is two broadcasts: a header {kind, payload length}, then the
// payload (plan_codec's int64 array). The world group is created with a very long timeout, so an
// idle server's workers wait for the next step as long as it takes; a dead rank 0 breaks the
// connection and receive() throws.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastpage/step_plan.h"

namespace fastpage {

class Communicator;

class ControlPlane {
 public:
  explicit ControlPlane(const std::string& world_group);
  ~ControlPlane();

  Communicator& world() { return *world_; }

  // Rank 0.
  void send_step(const StepPlan& plan, const std::vector<int64_t>& logits_indices);
  void send_shutdown();
  // Other ranks: the next step into plan / logits_indices; false when rank 0 sent shutdown.
  bool receive(StepPlan& plan, std::vector<int64_t>& logits_indices);

 private:
  std::unique_ptr<Communicator> world_;
};

}  // namespace fastpage
