#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastpage C++ core";
  fastpage::bindings::bind_config(m);
  fastpage::bindings::bind_plan(m);
  fastpage::bindings::bind_core(m);
  fastpage::bindings::bind_sampler(m);
  fastpage::bindings::bind_runner(m);
  fastpage::bindings::bind_engine(m);
  fastpage::bindings::bind_parallel(m);
}
