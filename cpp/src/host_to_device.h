// Moves host vectors to a device in one copy per dtype (the step's inputs, the sampler's parameters).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace fastpage {

// Concatenates `parts` (pointer, length) into one host buffer and moves it to `device` in one copy:
// on a GPU from pinned memory with non_blocking, so the host does not wait (the caching host
// allocator keeps the buffer until the copy has run); on the CPU the host buffer is used as is.
// Returns one 1-D tensor per part, views into the copy.
template <typename T>
inline std::vector<at::Tensor> upload(std::initializer_list<std::pair<const T*, int64_t>> parts, c10::Device device) {
  int64_t total = 0;
  for (const auto& part : parts) total += part.second;
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  at::Tensor host = at::empty({total}, at::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda()));
  T* dst = host.data_ptr<T>();
  for (const auto& [src, n] : parts) dst = std::copy(src, src + n, dst);
  at::Tensor on_device = device.is_cpu() ? host : host.to(device, dtype, /*non_blocking=*/true);
  std::vector<at::Tensor> views;
  int64_t offset = 0;
  for (const auto& part : parts) {
    views.push_back(on_device.narrow(0, offset, part.second));
    offset += part.second;
  }
  return views;
}

template <typename T>
inline std::pair<const T*, int64_t> part(const std::vector<T>& values) {
  return {values.data(), static_cast<int64_t>(values.size())};
}

}  // namespace fastpage
