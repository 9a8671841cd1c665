// The CUDA kernels of csrc/cuda, run on the CPU for tests on machines without a GPU.
//
// csrc/common/cuda_platform.cuh includes this header instead of the CUDA runtime when FASTSN_CUDA_EMULATION is
// defined; tests/cuda_emulation/build.py then compiles the .cu files as C++ into a library that registers their
// host code as the CPU kernels of the fastsn ops (in a test process of its own). Every launch runs its blocks one
// after another on the calling thread (launches from several threads take turns); each CUDA thread of a block is a
// fiber with its own stack (a register switch on x86-64, ucontext elsewhere), and the fibers switch only at
// __syncthreads and warp shuffles, so the emulation is deterministic. What it checks:
// indexing, bounds (with the host's tools), the algorithm, barriers reached by every thread (a fiber waiting on a
// barrier that can never complete aborts with a message). What it cannot: timing, the memory model, races
// between blocks, anything of the hardware.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <ucontext.h>

#include <math.h>  // the float overloads of sqrt etc. in the global namespace, as device code calls them

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block at a time, on one thread: a static is the block's shared memory
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

namespace fastsn::emulation {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kLaneBytes = 16;  // the widest value a shuffle moves

enum class Wait { kNone, kBlock, kWarp, kDone };

#if defined(__x86_64__)
extern "C" void fastsn_emulation_switch(void** save_sp, void* load_sp);
#endif

struct Fiber {
  std::unique_ptr<char[]> stack;
  dim3 thread_idx;
  unsigned linear = 0;  // threadIdx in x-major order: warp = linear / 32
  Wait wait = Wait::kNone;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
};

struct Launch {
  dim3 grid, block, block_idx;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> dynamic_shared;
  std::vector<unsigned char> lanes;  // kLaneBytes per thread: the values a warp shuffle exchanges
  std::function<void()> body;
  Fiber* current = nullptr;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler;
#endif
};

Launch*& active();  // the launch running now on this thread (cuda_emulation.cpp)
std::mutex& launch_mutex();  // held by the launch running now (shared memory is static: one block at a time)

inline Launch& launch() {
  TORCH_CHECK(active() != nullptr, "CUDA emulation: device code called outside a launch");
  return *active();
}

// From the current fiber back to the scheduler, which resumes it later where it left.
inline void to_scheduler() {
  Launch& l = *active();
#if defined(__x86_64__)
  fastsn_emulation_switch(&l.current->sp, l.scheduler_sp);
#else
  swapcontext(&l.current->context, &l.scheduler);
#endif
}

inline void fiber_main() {
  Launch& l = *active();
  l.body();
  l.current->wait = Wait::kDone;
  to_scheduler();  // never resumed
  std::abort();
}

// Prepares f to run fiber_main on its own stack from the start.
inline void start(Fiber& f) {
#if defined(__x86_64__)
  // the stack fastsn_emulation_switch pops: six registers, then fiber_main as the return address, above it a null
  // return address for fiber_main's frame (entered with rsp = 8 mod 16, as after a call)
  auto top = (reinterpret_cast<uintptr_t>(f.stack.get()) + kStackBytes) / 16 * 16;
  void** sp = reinterpret_cast<void**>(top) - 8;
  for (int k = 0; k < 6; ++k) sp[k] = nullptr;
  sp[6] = reinterpret_cast<void*>(&fiber_main);
  sp[7] = nullptr;
  f.sp = sp;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack.get();
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiber_main, 0);
#endif
}

// From the scheduler into fiber f, until it waits at a barrier or ends.
inline void resume(Launch& l, Fiber& f) {
  l.current = &f;
#if defined(__x86_64__)
  fastsn_emulation_switch(&l.scheduler_sp, f.sp);
#else
  swapcontext(&l.scheduler, &f.context);
#endif
}

// The current fiber waits at a barrier of `kind`; the scheduler resumes it once every live thread of the block
// (kBlock) or of its warp (kWarp) is there. Exited threads count as arrived, as on the GPU.
inline void wait_at(Wait kind) {
  launch().current->wait = kind;
  to_scheduler();
}

inline void run_block(Launch& l) {
  const unsigned n = l.block.x * l.block.y * l.block.z;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = l.fibers[t];
    f.linear = t;
    f.thread_idx = dim3(t % l.block.x, t / l.block.x % l.block.y, t / (l.block.x * l.block.y));
    f.wait = Wait::kNone;
    start(f);
  }
  for (;;) {
    bool ran = false;
    for (unsigned t = 0; t < n; ++t) {  // run every runnable fiber up to its next barrier or its end
      Fiber& f = l.fibers[t];
      if (f.wait != Wait::kNone) continue;
      resume(l, f);
      ran = true;
    }
    bool live = false, released = false;
    bool all_at_block = true;
    for (unsigned t = 0; t < n; ++t) {
      if (l.fibers[t].wait == Wait::kDone) continue;
      live = true;
      if (l.fibers[t].wait != Wait::kBlock) all_at_block = false;
    }
    if (!live) return;
    if (all_at_block) {
      for (unsigned t = 0; t < n; ++t) {
        if (l.fibers[t].wait == Wait::kBlock) l.fibers[t].wait = Wait::kNone;
      }
      released = true;
    }
    for (unsigned w = 0; w * 32 < n; ++w) {  // a warp whose live lanes all wait at a shuffle goes on
      const unsigned begin = w * 32, end = std::min(n, begin + 32);
      bool any = false, all = true;
      for (unsigned t = begin; t < end; ++t) {
        const Wait s = l.fibers[t].wait;
        if (s == Wait::kDone) continue;
        any = true;
        if (s != Wait::kWarp) all = false;
      }
      if (any && all) {
        for (unsigned t = begin; t < end; ++t) {
          if (l.fibers[t].wait == Wait::kWarp) l.fibers[t].wait = Wait::kNone;
        }
        released = true;
      }
    }
    TORCH_CHECK(ran || released, "CUDA emulation: block (", l.block_idx.x, ", ", l.block_idx.y,
                ") deadlocked: threads wait at __syncthreads or a shuffle that the others never reach");
  }
}

// Runs kernel(args...) over grid x block; `shared` bytes of dynamic shared memory per block.
template <typename... Params, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t shared, void (*kernel)(Params...), Args&&... args) {
  const unsigned n = block.x * block.y * block.z;
  TORCH_CHECK(n >= 1 && n <= 1024, "CUDA emulation: ", n, " threads per block (1..1024 on the GPU)");
  TORCH_CHECK(grid.y <= 65535 && grid.z <= 65535, "CUDA emulation: grid.y and grid.z must be <= 65535");
  TORCH_CHECK(shared <= 227 * 1024, "CUDA emulation: ", shared, " bytes of dynamic shared memory (sm_90: 227 KB)");
  TORCH_CHECK(active() == nullptr, "CUDA emulation: a launch from device code");
  const std::lock_guard<std::mutex> lock(launch_mutex());
  Launch l;
  l.grid = grid;
  l.block = block;
  l.fibers.resize(n);
  for (Fiber& f : l.fibers) f.stack.reset(new char[kStackBytes]);
  l.dynamic_shared.assign(shared + 16, 0xCD);  // not zeroed on the GPU either: a read before a write shows
  l.lanes.assign(static_cast<size_t>(n) * kLaneBytes, 0);
  // the parameters as the kernel declares them, copied once (CUDA copies them into the launch)
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  l.body = [&] { std::apply(kernel, params); };
  active() = &l;
  try {
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          l.block_idx = dim3(x, y, z);
          run_block(l);
        }
      }
    }
  } catch (...) {
    active() = nullptr;
    throw;
  }
  active() = nullptr;
}

template <typename Kernel>
struct Launcher {
  dim3 grid, block;
  size_t shared;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args&&... args) const {
    launch_kernel(grid, block, shared, kernel, std::forward<Args>(args)...);
  }
};

template <typename Kernel>
Launcher<Kernel> launcher(dim3 grid, dim3 block, size_t shared, Kernel kernel) {
  return {grid, block, shared, kernel};
}

inline unsigned char* dynamic_shared() {
  // 16-byte aligned, as the CUDA declaration is
  auto address = reinterpret_cast<uintptr_t>(launch().dynamic_shared.data());
  return reinterpret_cast<unsigned char*>((address + 15) / 16 * 16);
}

template <typename T>
T shfl_down_sync(unsigned mask, T value, unsigned delta) {
  static_assert(sizeof(T) <= kLaneBytes && std::is_trivially_copyable_v<T>, "shuffle of a wide value");
  TORCH_CHECK(mask == 0xffffffffu, "CUDA emulation: only full-warp shuffles are emulated");
  Launch& l = launch();
  const unsigned self = l.current->linear, lane = self % 32, n = l.block.x * l.block.y * l.block.z;
  std::memcpy(&l.lanes[self * kLaneBytes], &value, sizeof(T));
  wait_at(Wait::kWarp);  // every live lane has written
  T result = value;
  const unsigned source = self + delta;
  if (lane + delta < 32 && source < n) std::memcpy(&result, &l.lanes[source * kLaneBytes], sizeof(T));
  wait_at(Wait::kWarp);  // every lane has read before any writes again
  return result;
}

template <typename T>
T atomic_add(T* address, T value) {  // fibers never switch inside: a plain read-modify-write is atomic
  const T old = *address;
  *address = old + value;
  return old;
}

struct Stream {
  cudaStream_t stream() const { return nullptr; }
};

// the number of SMs the grid sizes are computed for: small, so that grid-stride loops and row slices take
// several turns on test sizes
constexpr int kEmulatedSmCount = 4;

}  // namespace fastsn::emulation

#define threadIdx (::fastsn::emulation::launch().current->thread_idx)
#define blockIdx (::fastsn::emulation::launch().block_idx)
#define blockDim (::fastsn::emulation::launch().block)
#define gridDim (::fastsn::emulation::launch().grid)
#define __syncthreads() ::fastsn::emulation::wait_at(::fastsn::emulation::Wait::kBlock)
#define __shfl_down_sync(mask, value, delta) ::fastsn::emulation::shfl_down_sync(mask, value, delta)
#define atomicAdd(address, value) ::fastsn::emulation::atomic_add(address, value)

// device min/max: CUDA overloads them for mixed integer widths
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

#define FASTSN_LAUNCH(grid, block, shared, stream, ...) \
  ::fastsn::emulation::launcher(grid, block, shared, &__VA_ARGS__)
#define FASTSN_DYNAMIC_SHARED(type, name) type* name = ::fastsn::emulation::dynamic_shared()
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr) (void)(expr)
#define FASTSN_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastsn, CPU, m)

namespace fastsn {
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;  // the emulated kernels take CPU tensors
}

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline ::fastsn::emulation::Stream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda

enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
inline int cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = ::fastsn::emulation::kEmulatedSmCount;
  return 0;
}
