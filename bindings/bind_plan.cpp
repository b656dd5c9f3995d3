#include <pybind11/stl.h>

#include "bindings.h"
#include "fastpage/step_plan.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_plan(py::module_& m) {
  py::class_<ScheduledSeq>(m, "ScheduledSeq")
      .def(py::init<>())
      .def_readwrite("seq_id", &ScheduledSeq::seq_id)
      .def_readwrite("num_new_tokens", &ScheduledSeq::num_new_tokens)
      .def_readwrite("start_position", &ScheduledSeq::start_position)
      .def_readwrite("sample", &ScheduledSeq::sample)
      .def_readwrite("prompt_logprobs", &ScheduledSeq::prompt_logprobs);

  py::class_<StepPlan>(m, "StepPlan")
      .def(py::init<>())
      .def_readwrite("seqs", &StepPlan::seqs)
      .def_readwrite("input_ids", &StepPlan::input_ids)
      .def_readwrite("positions", &StepPlan::positions)
      .def_readwrite("slot_mapping", &StepPlan::slot_mapping)
      .def_readwrite("query_start_loc", &StepPlan::query_start_loc)
      .def_readwrite("context_lens", &StepPlan::context_lens)
      .def_readwrite("block_tables", &StepPlan::block_tables)
      .def_readwrite("max_blocks_per_seq", &StepPlan::max_blocks_per_seq)
      .def_readwrite("num_decode_seqs", &StepPlan::num_decode_seqs)
      .def_readwrite("block_copies", &StepPlan::block_copies)
      .def_readwrite("swap_out", &StepPlan::swap_out)
      .def_readwrite("swap_in", &StepPlan::swap_in)
      .def_readwrite("preempted_seq_ids", &StepPlan::preempted_seq_ids)
      .def_property_readonly("num_tokens", &StepPlan::num_tokens)
      .def("empty", &StepPlan::empty);
}

}  // namespace fastpage::bindings
