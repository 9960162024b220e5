// SPDX-License-Identifier: Apache-2.0
#pragma once
// Runtime element types (as named by safetensors and PyTorch) and their mapping to C++ types, for readers,
// writers and type-erased buffers. Typed code uses the C++ types; files and logs use these tags.

#include <qprob/core/numeric.hpp>

#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

namespace qprob {

enum class dtype : std::uint8_t { f64, f32, f16, bf16, i64, i32, u32, i16, i8, u8, boolean };

/// Bytes per element.
constexpr int dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::f64:
    case dtype::i64: return 8;
    case dtype::f32:
    case dtype::i32:
    case dtype::u32: return 4;
    case dtype::f16:
    case dtype::bf16:
    case dtype::i16: return 2;
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean: return 1;
  }
  return 0;
}

/// The safetensors spelling: "F32", "BF16", "I8", "BOOL", ...
constexpr std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f64: return "F64";
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::u32: return "U32";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::u8: return "U8";
    case dtype::boolean: return "BOOL";
  }
  return "?";
}

/// Inverse of dtype_name; nullopt for names qprob does not know.
constexpr std::optional<dtype> dtype_from_name(std::string_view name) noexcept {
  constexpr dtype all[] = {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64, dtype::i32,
                           dtype::u32, dtype::i16, dtype::i8,  dtype::u8,   dtype::boolean};
  for (dtype t : all) {
    if (dtype_name(t) == name) {
      return t;
    }
  }
  return std::nullopt;
}

template <class T>
struct dtype_of_t;
template <> struct dtype_of_t<double> { static constexpr dtype value = dtype::f64; };
template <> struct dtype_of_t<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of_t<half_t> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of_t<bfloat16_t> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of_t<std::int64_t> { static constexpr dtype value = dtype::i64; };
template <> struct dtype_of_t<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of_t<std::uint32_t> { static constexpr dtype value = dtype::u32; };
template <> struct dtype_of_t<std::int16_t> { static constexpr dtype value = dtype::i16; };
template <> struct dtype_of_t<std::int8_t> { static constexpr dtype value = dtype::i8; };
template <> struct dtype_of_t<std::uint8_t> { static constexpr dtype value = dtype::u8; };
template <> struct dtype_of_t<bool> { static constexpr dtype value = dtype::boolean; };

/// The runtime tag of a C++ element type (cv-qualifiers ignored); a compile error for types without one.
template <class T>
inline constexpr dtype dtype_of = dtype_of_t<std::remove_cv_t<T>>::value;

}  // namespace qprob
