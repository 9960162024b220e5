// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host-callable wrappers around the device metrics (compiled by nvcc in gpu_harness.cu), so that the doctest
// test file stays a host-compiler translation unit (doctest and nvcc do not mix well, doctest#800).

#include <qprob/metrics/types.hpp>

namespace qprob::metrics::test {

/// Uploads the scores on a fresh stream and runs compute_model_metrics.
model_metrics device_model_metrics(const choice_scores_view& s, const metric_options& opt);

/// Uploads both inputs and runs compute_paired_metrics.
paired_metrics device_paired_metrics(const choice_scores_view& full, const choice_scores_view& quant, const metric_options& opt);

}  // namespace qprob::metrics::test
