// SPDX-License-Identifier: Apache-2.0
#pragma once
// Non-owning typed views of strided tensors, for host and device memory. The memory space is part of the type
// so that a signature says where its data must live (device_view<const half_t, 2> is a (rows, cols) matrix in
// GPU memory); the view itself is trivially copyable and can be passed to kernels by value.

#include <qprob/core/config.hpp>
#include <qprob/core/dtype.hpp>
#include <qprob/core/error.hpp>

#include <cstdint>
#include <sstream>
#include <type_traits>

namespace qprob {

enum class memory_space : std::uint8_t { host, device };

/// A view of a Rank-dimensional tensor: element (i0, ..., iR-1) is at data[sum(i_k * stride_k)].
/// Shapes and strides are int64_t elements (not bytes). Views never own memory.
template <class T, int Rank, memory_space Space = memory_space::device>
class tensor_view {
  static_assert(Rank >= 1 && Rank <= 6, "tensor_view supports ranks 1 to 6");

public:
  using element_type                 = T;
  using value_type                   = std::remove_cv_t<T>;
  static constexpr int rank          = Rank;
  static constexpr memory_space space = Space;

  QPROB_HOST_DEVICE constexpr tensor_view() = default;

  /// A dense row-major view (last index fastest).
  QPROB_HOST_DEVICE constexpr tensor_view(T* data, const std::int64_t (&shape)[Rank]) : data_(data) {
    std::int64_t s = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      shape_[d]  = shape[d];
      stride_[d] = s;
      s *= shape[d];
    }
  }

  /// A strided view.
  QPROB_HOST_DEVICE constexpr tensor_view(T* data,
                                          const std::int64_t (&shape)[Rank],
                                          const std::int64_t (&stride)[Rank])
      : data_(data) {
    for (int d = 0; d < Rank; ++d) {
      shape_[d]  = shape[d];
      stride_[d] = stride[d];
    }
  }

  /// Views of T convert to views of const T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  QPROB_HOST_DEVICE constexpr tensor_view(const tensor_view<U, Rank, Space>& other) : data_(other.data()) {
    for (int d = 0; d < Rank; ++d) {
      shape_[d]  = other.shape(d);
      stride_[d] = other.stride(d);
    }
  }

  [[nodiscard]] QPROB_HOST_DEVICE constexpr T* data() const noexcept { return data_; }
  [[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t shape(int d) const noexcept { return shape_[d]; }
  [[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t stride(int d) const noexcept { return stride_[d]; }

  /// Number of elements.
  [[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t size() const noexcept {
    std::int64_t n = 1;
    for (int d = 0; d < Rank; ++d) {
      n *= shape_[d];
    }
    return n;
  }

  [[nodiscard]] QPROB_HOST_DEVICE constexpr bool empty() const noexcept { return size() == 0; }

  /// True when the view is dense row-major (size-1 dimensions may have any stride).
  [[nodiscard]] QPROB_HOST_DEVICE constexpr bool is_contiguous() const noexcept {
    std::int64_t expected = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (shape_[d] != 1 && stride_[d] != expected) {
        return false;
      }
      expected *= shape_[d];
    }
    return true;
  }

  template <class... Idx>
    requires(sizeof...(Idx) == Rank && (std::is_integral_v<Idx> && ...))
  [[nodiscard]] QPROB_HOST_DEVICE constexpr T& operator()(Idx... idx) const noexcept {
    const std::int64_t i[Rank] = {static_cast<std::int64_t>(idx)...};
    std::int64_t offset        = 0;
    for (int d = 0; d < Rank; ++d) {
      offset += i[d] * stride_[d];
    }
    return data_[offset];
  }

  /// The sub-tensor with index `i` fixed in dimension 0.
  [[nodiscard]] QPROB_HOST_DEVICE constexpr auto operator[](std::int64_t i) const noexcept
    requires(Rank > 1)
  {
    tensor_view<T, Rank - 1, Space> out;
    out.data_ = data_ + i * stride_[0];
    for (int d = 1; d < Rank; ++d) {
      out.shape_[d - 1]  = shape_[d];
      out.stride_[d - 1] = stride_[d];
    }
    return out;
  }

  /// Elements [begin, end) of dimension `d`.
  [[nodiscard]] QPROB_HOST_DEVICE constexpr tensor_view slice(int d, std::int64_t begin, std::int64_t end) const noexcept {
    tensor_view out = *this;
    out.data_       = data_ + begin * stride_[d];
    out.shape_[d]   = end - begin;
    return out;
  }

private:
  template <class, int, memory_space>
  friend class tensor_view;

  T* data_                   = nullptr;
  std::int64_t shape_[Rank]  = {};
  std::int64_t stride_[Rank] = {};
};

template <class T, int Rank>
using host_view = tensor_view<T, Rank, memory_space::host>;
template <class T, int Rank>
using device_view = tensor_view<T, Rank, memory_space::device>;

/// Dense row-major views from a pointer and the extents: make_device_view(ptr, rows, cols).
template <class T, class... Dims>
  requires(sizeof...(Dims) >= 1 && (std::is_integral_v<Dims> && ...))
constexpr device_view<T, sizeof...(Dims)> make_device_view(T* data, Dims... dims) {
  const std::int64_t shape[sizeof...(Dims)] = {static_cast<std::int64_t>(dims)...};
  return device_view<T, sizeof...(Dims)>(data, shape);
}
template <class T, class... Dims>
  requires(sizeof...(Dims) >= 1 && (std::is_integral_v<Dims> && ...))
constexpr host_view<T, sizeof...(Dims)> make_host_view(T* data, Dims... dims) {
  const std::int64_t shape[sizeof...(Dims)] = {static_cast<std::int64_t>(dims)...};
  return host_view<T, sizeof...(Dims)>(data, shape);
}

/// Throws qprob::invalid_argument naming `what` unless the view has exactly the expected extents.
template <class T, int Rank, memory_space Space, class... Dims>
  requires(sizeof...(Dims) == Rank)
void check_shape(const tensor_view<T, Rank, Space>& v, const char* what, Dims... expected) {
  const std::int64_t e[Rank] = {static_cast<std::int64_t>(expected)...};
  for (int d = 0; d < Rank; ++d) {
    if (v.shape(d) != e[d]) {
      std::ostringstream msg;
      msg << what << " has shape (";
      for (int k = 0; k < Rank; ++k) {
        msg << (k ? ", " : "") << v.shape(k);
      }
      msg << ") but (";
      for (int k = 0; k < Rank; ++k) {
        msg << (k ? ", " : "") << e[k];
      }
      msg << ") is required";
      throw invalid_argument(msg.str());
    }
  }
}

}  // namespace qprob
