// SPDX-License-Identifier: Apache-2.0
#include <qprob/core/tensor_view.hpp>

#include <doctest/doctest.h>

#include <numeric>
#include <string>
#include <vector>

TEST_CASE("a dense view has row-major strides and addresses every element once") {
  std::vector<int> data(3 * 5 * 7);
  std::iota(data.begin(), data.end(), 0);
  const auto v = qprob::make_host_view(data.data(), 3, 5, 7);
  CHECK(v.size() == 105);
  CHECK(v.stride(0) == 35);
  CHECK(v.stride(1) == 7);
  CHECK(v.stride(2) == 1);
  CHECK(v.is_contiguous());
  int expected = 0;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 5; ++j) {
      for (int k = 0; k < 7; ++k) {
        REQUIRE(v(i, j, k) == expected++);
      }
    }
  }
}

TEST_CASE("strided, sliced and indexed views") {
  std::vector<float> data(4 * 6);
  std::iota(data.begin(), data.end(), 0.0f);
  const auto m = qprob::make_host_view(data.data(), 4, 6);
  // A transposed view: (6, 4) with strides (1, 6).
  const qprob::host_view<float, 2> t(data.data(), {6, 4}, {1, 6});
  CHECK_FALSE(t.is_contiguous());
  CHECK(t(5, 3) == m(3, 5));
  const auto cols = m.slice(1, 2, 5);  // columns 2..4
  CHECK(cols.shape(1) == 3);
  CHECK(cols(1, 0) == 8.0f);
  CHECK_FALSE(cols.is_contiguous());
  const auto row2 = m[2];
  CHECK(row2.shape(0) == 6);
  CHECK(row2(4) == 16.0f);
  row2(4) = -1.0f;
  CHECK(data[16] == -1.0f);
  const qprob::host_view<const float, 2> read_only = m;  // T -> const T
  CHECK(read_only(2, 4) == -1.0f);
  const auto empty = qprob::make_host_view(data.data(), 0, 6);
  CHECK(empty.empty());
}

TEST_CASE("check_shape names the tensor, the actual and the required shape") {
  std::vector<int> data(12);
  const auto v = qprob::make_host_view(data.data(), 3, 4);
  CHECK_NOTHROW(qprob::check_shape(v, "scales", 3, 4));
  try {
    qprob::check_shape(v, "scales", 4, 3);
    FAIL("expected an exception");
  } catch (const qprob::invalid_argument& e) {
    CHECK(std::string(e.what()) == "scales has shape (3, 4) but (4, 3) is required");
  }
}
