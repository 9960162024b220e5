// SPDX-License-Identifier: Apache-2.0
#pragma once
// The qprob-eval-<task> driver (eval_main.cpp), shared by the per-task executables (task_main.cpp).

namespace qprob_examples {

/// Parses the command line and runs the evaluation of `task`; returns the process exit status.
int eval_main(const char* task, int argc, char** argv);

}  // namespace qprob_examples
