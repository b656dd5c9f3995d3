#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "bindings.h"
#include "fastpage/parallel.h"
#include "fastpage/worker.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_parallel(py::module_& m) {
  m.def("pipeline_layer_range", &pipeline_layer_range, py::arg("num_layers"), py::arg("pp_size"),
        py::arg("pp_rank"));

  py::class_<ModelShard>(m, "ModelShard")
      .def_readonly("tp_rank", &ModelShard::tp_rank)
      .def_readonly("tp_size", &ModelShard::tp_size)
      .def_readonly("pp_rank", &ModelShard::pp_rank)
      .def_readonly("pp_size", &ModelShard::pp_size)
      .def_readonly("num_heads", &ModelShard::num_heads)
      .def_readonly("num_kv_heads", &ModelShard::num_kv_heads)
      .def_readonly("kv_head_begin", &ModelShard::kv_head_begin)
      .def_readonly("intermediate_size", &ModelShard::intermediate_size)
      .def_readonly("vocab_rows", &ModelShard::vocab_rows)
      .def_readonly("layer_begin", &ModelShard::layer_begin)
      .def_readonly("layer_end", &ModelShard::layer_end)
      .def_property_readonly("head_begin", &ModelShard::head_begin)
      .def_property_readonly("intermediate_begin", &ModelShard::intermediate_begin)
      .def_property_readonly("vocab_begin", &ModelShard::vocab_begin)
      .def_property_readonly("first_stage", &ModelShard::first_stage)
      .def_property_readonly("last_stage", &ModelShard::last_stage);
  m.def("model_shard", &model_shard, py::arg("model_config"), py::arg("parallel_config"));

  py::class_<Worker>(m, "Worker")
      .def(py::init([](const ModelConfig& model, const EngineConfig& config, WeightMap weights,
                       const std::string& device, c10::ScalarType dtype) {
             return std::make_unique<Worker>(model, config, std::move(weights), c10::Device(device), dtype);
           }),
           py::arg("model_config"), py::arg("engine_config"), py::arg("weights"), py::arg("device") = "cpu",
           py::arg("dtype") = at::kFloat, py::call_guard<py::gil_scoped_release>())
      .def("run", &Worker::run, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_steps", &Worker::num_steps);
}

}  // namespace fastpage::bindings
