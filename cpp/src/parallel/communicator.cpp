#include "communicator.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/tensor.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <exception>
#include <stdexcept>
#include <vector>

namespace fastpage {

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
};

namespace {

// Runs a c10d call and waits for it; any failure becomes one std::runtime_error naming the group.
template <typename Call>
void run(const std::string& group, const char* what, Call&& call,
         std::chrono::milliseconds timeout = kNoTimeout) {  // c10d: the group's own timeout
  try {
    c10::intrusive_ptr<c10d::Work> work = call();
    work->wait(timeout);
  } catch (const std::exception& e) {
    throw std::runtime_error("fastpage: " + std::string(what) + " on process group '" + group +
                             "' failed (a peer rank died or timed out): " + e.what());
  }
}

}  // namespace

Communicator::Communicator(const std::string& group_name) : name_(group_name), impl_(std::make_unique<Impl>()) {
  try {
    impl_->group = c10d::resolve_process_group(group_name);
  } catch (const std::exception& e) {
    throw std::invalid_argument("no torch.distributed process group named '" + group_name + "': " + e.what());
  }
}

Communicator::~Communicator() = default;

int Communicator::rank() const { return impl_->group->getRank(); }
int Communicator::size() const { return impl_->group->getSize(); }

void Communicator::all_reduce(at::Tensor& tensor) {
  std::vector<at::Tensor> tensors{tensor};
  run(name_, "all_reduce", [&] { return impl_->group->allreduce(tensors); });
}

at::Tensor Communicator::all_gather(const at::Tensor& tensor, int64_t dim) {
  std::vector<at::Tensor> input{tensor.contiguous()};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int i = 0; i < size(); ++i) output[0].push_back(at::empty_like(input[0]));
  run(name_, "all_gather", [&] { return impl_->group->allgather(output, input); });
  return at::cat(output[0], dim);
}

int64_t Communicator::all_reduce_min(int64_t value, std::chrono::milliseconds timeout) {
  std::vector<at::Tensor> tensors{at::tensor({value}, at::TensorOptions().dtype(at::kLong))};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::MIN;
  run(name_, "all_reduce(MIN)", [&] { return impl_->group->allreduce(tensors, options); }, timeout);
  return tensors[0].item<int64_t>();
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  std::vector<at::Tensor> tensors{tensor};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  run(name_, "broadcast", [&] { return impl_->group->broadcast(tensors, options); });
}

void Communicator::send(const at::Tensor& tensor, int peer) {
  std::vector<at::Tensor> tensors{tensor.contiguous()};
  run(name_, "send", [&] { return impl_->group->send(tensors, peer, /*tag=*/0); });
}

void Communicator::recv(at::Tensor& tensor, int peer) {
  std::vector<at::Tensor> tensors{tensor};
  run(name_, "recv", [&] { return impl_->group->recv(tensors, peer, /*tag=*/0); });
}

}  // namespace fastpage
