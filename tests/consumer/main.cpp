// SPDX-License-Identifier: Apache-2.0
// Downstream use of the installed headers from a host compiler.
#include <qprob/host.hpp>

#include <cstdio>

int main() {
  using policy = qprob::policies::int4_g128;
  static_assert(qprob::quantized_policy<policy>);
  std::printf("qprob %s, %.*s\n", qprob::version_string, static_cast<int>(qprob::policy_name<policy>().size()),
              qprob::policy_name<policy>().data());
  return qprob::to_float(qprob::to_half(1.5f)) == 1.5f ? 0 : 1;
}
