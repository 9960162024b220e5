// SPDX-License-Identifier: Apache-2.0
// nvcc side of the GPU metrics tests: uploads host inputs and calls the device API.
#include "gpu_harness.hpp"

#include <qprob/core/stream.hpp>
#include <qprob/metrics/metrics.cuh>

namespace qprob::metrics::test {

model_metrics device_model_metrics(const choice_scores_view& s, const metric_options& opt) {
  stream st;
  const device_choice_scores_storage d(s, st);
  auto r = compute_model_metrics(d.view(), opt, st);
  st.synchronize();
  return r;
}

paired_metrics device_paired_metrics(const choice_scores_view& full, const choice_scores_view& quant, const metric_options& opt) {
  stream st;
  const device_choice_scores_storage f(full, st);
  const device_choice_scores_storage q(quant, st);
  auto r = compute_paired_metrics(f.view(), q.view(), opt, st);
  st.synchronize();
  return r;
}

}  // namespace qprob::metrics::test
