// SPDX-License-Identifier: Apache-2.0
// qprob-eval-<task>: the entry point of one benchmark's driver; QPROB_EVAL_TASK names the task. Everything else
// is in eval_main.cpp (see its header comment for what the drivers do and their command lines).
#include "eval_main.hpp"

#ifndef QPROB_EVAL_TASK
#  error "QPROB_EVAL_TASK must name the task, e.g. -DQPROB_EVAL_TASK=\"arc_easy\""
#endif

int main(int argc, char** argv) { return qprob_examples::eval_main(QPROB_EVAL_TASK, argc, argv); }
