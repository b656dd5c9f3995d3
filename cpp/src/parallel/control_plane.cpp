#include "control_plane.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <stdexcept>

#include "communicator.h"
#include "plan_codec.h"

namespace fastpage {
namespace {

enum MessageKind : int64_t { kStep = 1, kShutdown = 2 };
constexpr int kRoot = 0;

at::Tensor int64_tensor(int64_t size) { return at::empty({size}, at::TensorOptions().dtype(at::kLong)); }

at::Tensor header(int64_t kind, int64_t payload_size) {
  at::Tensor t = int64_tensor(2);
  t.data_ptr<int64_t>()[0] = kind;
  t.data_ptr<int64_t>()[1] = payload_size;
  return t;
}

}  // namespace

ControlPlane::ControlPlane(const std::string& world_group)
    : world_(std::make_unique<Communicator>(world_group)) {}

ControlPlane::~ControlPlane() = default;

void ControlPlane::send_step(const StepPlan& plan, const std::vector<int64_t>& logits_indices) {
  std::vector<int64_t> payload = encode_plan(plan, logits_indices);
  at::Tensor head = header(kStep, static_cast<int64_t>(payload.size()));
  world_->broadcast(head, kRoot);
  at::Tensor body = at::from_blob(payload.data(), {static_cast<int64_t>(payload.size())},
                                  at::TensorOptions().dtype(at::kLong));
  world_->broadcast(body, kRoot);
}

void ControlPlane::send_shutdown() {
  at::Tensor head = header(kShutdown, 0);
  world_->broadcast(head, kRoot);
}

bool ControlPlane::receive(StepPlan& plan, std::vector<int64_t>& logits_indices) {
  at::Tensor head = int64_tensor(2);
  world_->broadcast(head, kRoot);
  const int64_t kind = head.data_ptr<int64_t>()[0];
  if (kind == kShutdown) return false;
  if (kind != kStep) throw std::runtime_error("fastpage: unknown control message " + std::to_string(kind));
  at::Tensor body = int64_tensor(head.data_ptr<int64_t>()[1]);
  world_->broadcast(body, kRoot);
  decode_plan(body.data_ptr<int64_t>(), body.size(0), plan, logits_indices);
  return true;
}

}  // namespace fastpage
