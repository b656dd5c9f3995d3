// One torch.distributed process group, found by its name (ProcessGroup.group_name, registered by
// Python's torch.distributed when it created the group). Only communicator.cpp includes c10d's
// (heavy) headers. Every call blocks until the operation is done on this rank and throws
// std::runtime_error naming the group when it fails (a peer died, or the group's timeout passed).
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>

namespace fastpage {

class Communicator {
 public:
  explicit Communicator(const std::string& group_name);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const;  // this process's rank within the group
  int size() const;
  const std::string& name() const { return name_; }

  void all_reduce(at::Tensor& tensor);  // sum, in place; `tensor` contiguous
  // The group's tensors concatenated along `dim`, in rank order.
  at::Tensor all_gather(const at::Tensor& tensor, int64_t dim);
  // Minimum over the group, waiting at most `timeout`.
  int64_t all_reduce_min(int64_t value, std::chrono::milliseconds timeout);
  void broadcast(at::Tensor& tensor, int root);  // in place; `tensor` contiguous
  void send(const at::Tensor& tensor, int peer);
  void recv(at::Tensor& tensor, int peer);  // into `tensor` (contiguous, the sender's shape)

 private:
  struct Impl;
  std::string name_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fastpage
