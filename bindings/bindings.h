// pybind11 glue for fastpage._C: one function per concern, called from module.cpp. No logic here.
#pragma once
#include <pybind11/pybind11.h>

namespace fastpage::bindings {
void bind_config(pybind11::module_& m);
void bind_plan(pybind11::module_& m);
void bind_core(pybind11::module_& m);
void bind_sampler(pybind11::module_& m);
void bind_runner(pybind11::module_& m);
void bind_engine(pybind11::module_& m);
void bind_parallel(pybind11::module_& m);
}  // namespace fastpage::bindings
