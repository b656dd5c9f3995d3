// Kernel launches with programmatic dependent launch (PDL, sm_90+): a kernel launched through
// launch_with_pdl may start while the previous kernel in the stream is still running, once every
// block of that kernel has called allow_dependent_launch() (or exited). Its blocks then get
// resident, do what does not depend on the previous kernel (index math, L2 prefetch of weights),
// and block in wait_for_previous_grid() until the previous grid has completed and its writes are
// visible. That hides the launch and block-scheduling gap between the small kernels and the
// weight-streaming GEMVs of a decode step, in eager mode and inside CUDA graphs (stream capture
// records a programmatic edge).
//
// Rules for a kernel launched this way: call wait_for_previous_grid() before its first global read
// of anything an earlier kernel may write and before its first global write. Kernels that follow
// a non-PDL kernel, or precede one, are serialized as usual: a kernel that never calls
// allow_dependent_launch() triggers its dependents when it exits, and a launch without the
// attribute waits for the whole previous grid. Both device calls are no-ops when the kernel was
// launched without the attribute. FASTPAGE_PDL=0 in the environment turns the attribute off (for
// A/B measurements).
#pragma once
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace fastpage::cuda {

// Blocks until the grids this one depends on have completed and their memory is visible.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream (if launched with PDL) start once every block got here.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Prefetches [p, p + bytes) into L2 (bytes a multiple of 16, p 16-byte aligned). Safe before
// wait_for_previous_grid(): it changes no value a thread reads (L2 is the point of coherence).
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Whether launches on `device` get the PDL attribute: compute capability >= 9 and not disabled.
inline bool pdl_enabled(int device) {
  static const bool disabled = [] {
    const char* v = std::getenv("FASTPAGE_PDL");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  if (disabled) return false;
  static std::array<std::atomic<int8_t>, 64> cached{};  // 0 unknown, 1 yes, -1 no
  if (device < 0 || device >= static_cast<int>(cached.size())) return false;
  int8_t state = cached[device].load(std::memory_order_relaxed);
  if (state == 0) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    state = major >= 9 ? 1 : -1;
    cached[device].store(state, std::memory_order_relaxed);
  }
  return state > 0;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), with the PDL attribute where enabled.
template <typename... KernelArgs, typename... Args>
void launch_with_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes,
                     cudaStream_t stream, int device, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = pdl_enabled(device) ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace fastpage::cuda
