// SPDX-License-Identifier: Apache-2.0
// Downstream use of the installed headers from nvcc: instantiates an RTN kernel for a custom policy.
#include <qprob/qprob.hpp>

using custom = qprob::precision<4, 64, false, false>;
template void qprob::quant::rtn_quantize<custom>(qprob::device_view<const qprob::half_t, 2>,
                                                 qprob::device_view<std::uint32_t, 2>,
                                                 qprob::device_view<qprob::half_t, 2>,
                                                 qprob::device_view<std::uint8_t, 2>,
                                                 cudaStream_t);

int main() { return qprob::policy_name<custom>() == "int4_g64_asym" ? 0 : 1; }
