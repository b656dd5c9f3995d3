// A StepPlan (the parts the model runner reads) and its logits indices as one flat int64 array,
// so rank 0 can broadcast a step to the other ranks in one message. No pickling, no pointers:
// a header of counts, then each array in a fixed order.
#pragma once
#include <cstdint>
#include <vector>

#include "fastpage/step_plan.h"

namespace fastpage {

std::vector<int64_t> encode_plan(const StepPlan& plan, const std::vector<int64_t>& logits_indices);
// std::invalid_argument when the counts in the header do not match the array's length.
void decode_plan(const int64_t* data, int64_t size, StepPlan& plan, std::vector<int64_t>& logits_indices);

}  // namespace fastpage
