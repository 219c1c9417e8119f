// Argument checks for the C++ entry points. The Python wrappers in oneformore.ops give the friendly,
// argument-naming errors; these guard callers that go straight to torch.ops.oneformore.*.
#pragma once

#include <c10/util/Exception.h>

#define OFM_CHECK_ARG(cond, arg, ...) TORCH_CHECK(cond, "oneformore: argument '", arg, "': ", __VA_ARGS__)
