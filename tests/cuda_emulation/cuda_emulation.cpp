// The fiber switch and the launch state of cuda_emulation.h, defined once for the library.
#include "cuda_emulation.h"

namespace fastsn::emulation {

Launch*& active() {
  thread_local Launch* launch = nullptr;
  return launch;
}

std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace fastsn::emulation

#if defined(__x86_64__)
// void fastsn_emulation_switch(void** save_sp, void* load_sp): saves the callee-saved registers on the current stack
// and its stack pointer in *save_sp, then resumes the stack load_sp saved (or prepared: see Fiber::start). Unlike
// swapcontext, no signal-mask system call: the emulation switches millions of times.
asm(R"(
  .text
  .globl fastsn_emulation_switch
  .hidden fastsn_emulation_switch
  .type fastsn_emulation_switch, @function
fastsn_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastsn_emulation_switch, .-fastsn_emulation_switch
)");
#endif
