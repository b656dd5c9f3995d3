#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "bindings.h"
#include "fastpage/model_runner.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_runner(py::module_& m) {
  py::class_<ModelRunner>(m, "ModelRunner")
      .def(py::init([](const ModelConfig& model, const EngineConfig& engine, WeightMap weights,
                       const std::string& device, c10::ScalarType dtype) {
             return std::make_unique<ModelRunner>(model, engine, std::move(weights), c10::Device(device), dtype);
           }),
           py::arg("model_config"), py::arg("engine_config"), py::arg("weights"), py::arg("device"),
           py::arg("dtype"), py::call_guard<py::gil_scoped_release>())
      .def(
          "execute",
          [](ModelRunner& runner, const StepPlan& plan, const std::vector<int64_t>& logits_indices) {
            return runner.execute(plan, logits_indices).clone();  // Python may keep them past the next step
          },
          py::arg("plan"), py::arg("logits_indices"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_device_blocks", &ModelRunner::num_device_blocks)
      .def_property_readonly("num_host_blocks", &ModelRunner::num_host_blocks)
      .def_property_readonly("bytes_per_block", &ModelRunner::bytes_per_block)
      .def_property_readonly("device", [](const ModelRunner& r) { return r.device().str(); });
}

}  // namespace fastpage::bindings
