// SPDX-License-Identifier: Apache-2.0
#pragma once
// safetensors files: a validating, memory-mapped reader for single files and sharded checkpoints
// (model.safetensors.index.json), zero-copy byte spans, exact conversion to a requested host element type, and
// an atomic writer (temp file + fsync + rename). Host-only (POSIX mmap); io/upload.hpp moves tensors to the GPU.
// Every malformed input is reported as qprob::format_error(file, tensor or field, problem); see docs/io.md.

#include <qprob/core/dtype.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/io/atomic_file.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qprob::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; qprob's zero-copy reader assumes a little-endian host");

/// The 8-byte little-endian header length that starts every file.
inline constexpr std::int64_t header_length_bytes = 8;
/// Largest accepted JSON header, the limit of the reference (Rust) implementation: real headers are a few MB.
inline constexpr std::int64_t max_header_bytes = 100'000'000;
/// The writer pads the header with spaces so the data section starts on this boundary; with tensors ordered
/// by decreasing element size (as the Rust writer does) every tensor is then aligned to its element size.
inline constexpr std::int64_t data_alignment = 8;

/// One tensor of a safetensors file: offsets are bytes relative to the start of the data section.
struct tensor_info {
  std::string name;
  qprob::dtype dtype = qprob::dtype::f32;
  std::vector<std::int64_t> shape;
  std::int64_t begin = 0;
  std::int64_t end   = 0;

  [[nodiscard]] std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto d : shape) {
      n *= d;
    }
    return n;
  }
  [[nodiscard]] std::int64_t nbytes() const noexcept { return end - begin; }
};

/// The parsed and validated header of one file.
struct safetensors_header {
  std::map<std::string, std::string> metadata;  // "__metadata__", string -> string
  std::vector<tensor_info> tensors;             // sorted by name
  std::int64_t data_offset = 0;                 // file offset of the data section (8 + header length)
  std::int64_t data_size   = 0;                 // bytes after the header
};

/// "[a, b, c]", for messages and listings.
inline std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) {
      s += ", ";
    }
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace detail {


/// A printable, escaped excerpt of raw bytes (for names that may not be UTF-8).
inline std::string printable(std::string_view bytes, std::size_t max_len = 60) {
  std::string out;
  for (std::size_t i = 0; i < bytes.size() && i < max_len; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (bytes.size() > max_len) {
    out += "...";
  }
  return out;
}

/// Offset of the first byte that breaks strict UTF-8 (no overlong forms, no surrogates, <= U+10FFFF), or
/// nullopt when the whole text is valid.
inline std::optional<std::size_t> first_invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len            = 0;
    unsigned char lo   = 0x80;
    unsigned char hi   = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      lo  = c == 0xe0 ? 0xa0 : 0x80;  // no overlong 3-byte forms
      hi  = c == 0xed ? 0x9f : 0xbf;  // no UTF-16 surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      lo  = c == 0xf0 ? 0x90 : 0x80;  // no overlong 4-byte forms
      hi  = c == 0xf4 ? 0x8f : 0xbf;  // nothing above U+10FFFF
    } else {
      return i;
    }
    if (i + static_cast<std::size_t>(len) > s.size()) {
      return i;
    }
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xbf)) {
        return i;
      }
    }
    i += static_cast<std::size_t>(len);
  }
  return std::nullopt;
}

/// a * b, or nullopt on int64 overflow (both non-negative).
inline std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b) {
  if (a != 0 && b > std::numeric_limits<std::int64_t>::max() / a) {
    return std::nullopt;
  }
  return a * b;
}

/// A non-negative JSON integer as int64, or nullopt (floats, booleans, negatives and > int64 are rejected).
inline std::optional<std::int64_t> json_nonnegative_int(const nlohmann::json& j, bool* negative = nullptr) {
  if (j.is_number_unsigned()) {
    const auto v = j.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return std::nullopt;
    }
    return static_cast<std::int64_t>(v);
  }
  if (j.is_number_integer()) {
    const auto v = j.get<std::int64_t>();
    if (v < 0) {
      if (negative != nullptr) {
        *negative = true;
      }
      return std::nullopt;
    }
    return v;
  }
  return std::nullopt;
}

/// Parses JSON text, rejecting duplicate keys in any object (nlohmann alone would silently keep the last one)
/// and reporting invalid UTF-8 with its position. `what` names the document in messages ("header").
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& file, const std::string& what) {
  if (const auto bad = first_invalid_utf8(text)) {
    // Show the string the bad byte is in: everything from the last quote before it.
    const auto quote = text.rfind('"', *bad);
    const auto start = quote == std::string_view::npos ? *bad : quote + 1;
    throw format_error(file,
                       what,
                       "invalid UTF-8 at byte " + std::to_string(*bad) + " (in the string starting \"" +
                           printable(text.substr(start, *bad - start + 4)) +
                           "\"); tensor names and metadata must be UTF-8");
  }
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  std::string duplicate_path;
  const auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using ev = nlohmann::json::parse_event_t;
    if (event == ev::object_start) {
      keys.emplace_back();
    } else if (event == ev::object_end) {
      keys.pop_back();
    } else if (event == ev::key && !keys.empty() && duplicate.empty()) {
      auto key = parsed.get<std::string>();
      if (!keys.back().insert(key).second) {
        duplicate = std::move(key);
      }
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    throw format_error(file, what, std::string("malformed JSON: ") + e.what());
  }
  if (!duplicate.empty()) {
    throw format_error(file, duplicate, "duplicate key in the " + what + " (JSON parsers disagree on which one wins)");
  }
  return j;
}

/// Validates one tensor entry of a header.
inline tensor_info parse_tensor_entry(const std::string& file,
                                      const std::string& name,
                                      const nlohmann::json& entry,
                                      std::int64_t data_size) {
  if (!entry.is_object()) {
    throw format_error(file, name, "tensor entry must be a JSON object with dtype, shape and data_offsets");
  }
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      throw format_error(file, name, "unexpected key \"" + key + "\" in tensor entry");
    }
  }
  tensor_info t;
  t.name = name;
  // dtype
  const auto dt = entry.find("dtype");
  if (dt == entry.end()) {
    throw format_error(file, name, "missing \"dtype\"");
  }
  if (!dt->is_string()) {
    throw format_error(file, name, "\"dtype\" must be a string, got " + dt->dump());
  }
  const auto parsed_dtype = dtype_from_name(dt->get<std::string>());
  if (!parsed_dtype) {
    throw format_error(file, name, "unknown dtype \"" + dt->get<std::string>() + "\"");
  }
  t.dtype = *parsed_dtype;
  // shape
  const auto sh = entry.find("shape");
  if (sh == entry.end()) {
    throw format_error(file, name, "missing \"shape\"");
  }
  if (!sh->is_array()) {
    throw format_error(file, name, "\"shape\" must be an array of integers, got " + sh->dump());
  }
  std::int64_t numel = 1;
  bool overflow      = false;
  for (std::size_t i = 0; i < sh->size(); ++i) {
    bool negative   = false;
    const auto dim  = json_nonnegative_int((*sh)[i], &negative);
    const auto text = (*sh)[i].dump();
    if (negative) {
      throw format_error(file, name, "negative dimension " + text + " in shape " + sh->dump());
    }
    if (!dim) {
      if ((*sh)[i].is_number_unsigned()) {
        throw format_error(file, name, "dimension " + text + " in shape " + sh->dump() + " overflows int64");
      }
      throw format_error(file, name, "shape entries must be non-negative integers, got " + text);
    }
    t.shape.push_back(*dim);
    if (!overflow) {
      const auto next = checked_mul(numel, *dim);
      overflow        = !next;
      numel           = next.value_or(0);
    }
  }
  // A zero dimension makes the product 0 whatever the other dims are, but each product must still fit.
  if (overflow) {
    throw format_error(file, name, "shape " + sh->dump() + " has more elements than fit in int64");
  }
  const auto nbytes = checked_mul(numel, dtype_size(t.dtype));
  if (!nbytes) {
    throw format_error(file, name, "shape " + sh->dump() + " x " + std::string(dtype_name(t.dtype)) +
                                       " needs more bytes than fit in int64");
  }
  // data_offsets
  const auto off = entry.find("data_offsets");
  if (off == entry.end()) {
    throw format_error(file, name, "missing \"data_offsets\"");
  }
  if (!off->is_array() || off->size() != 2) {
    throw format_error(file, name, "\"data_offsets\" must be an array [begin, end], got " + off->dump());
  }
  const auto begin = json_nonnegative_int((*off)[0]);
  const auto end   = json_nonnegative_int((*off)[1]);
  if (!begin || !end) {
    throw format_error(file, name, "\"data_offsets\" must be two non-negative integers, got " + off->dump());
  }
  if (*begin > *end) {
    throw format_error(file, name, "data_offsets begin " + std::to_string(*begin) + " > end " + std::to_string(*end));
  }
  if (*end > data_size) {
    throw format_error(file, name, "data_offsets " + off->dump() + " lie outside the data section of " +
                                       std::to_string(data_size) + " bytes");
  }
  if (*end - *begin != *nbytes) {
    throw format_error(file, name, "size mismatch: shape " + sh->dump() + " x " + std::string(dtype_name(t.dtype)) +
                                       " is " + std::to_string(*nbytes) + " bytes but data_offsets " + off->dump() +
                                       " span " + std::to_string(*end - *begin));
  }
  t.begin = *begin;
  t.end   = *end;
  return t;
}

}  // namespace detail

/// Parses and validates the header of a safetensors file held in memory (`file` names it in messages).
/// Throws format_error for any malformed input; never reads outside `bytes`.
inline safetensors_header parse_safetensors_header(std::span<const std::byte> bytes, const std::string& file) {
  const auto size = static_cast<std::int64_t>(bytes.size());
  if (size < header_length_bytes) {
    throw format_error(file, "", "truncated: " + std::to_string(size) +
                                     " bytes is shorter than the 8-byte header length");
  }
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) {
    n = (n << 8) | static_cast<std::uint8_t>(bytes[static_cast<std::size_t>(i)]);
  }
  if (n > static_cast<std::uint64_t>(max_header_bytes)) {
    throw format_error(file, "header", "header length " + std::to_string(n) + " exceeds the limit of " +
                                           std::to_string(max_header_bytes) + " bytes");
  }
  if (static_cast<std::int64_t>(n) > size - header_length_bytes) {
    throw format_error(file, "header", "header length " + std::to_string(n) + " exceeds the file (" +
                                           std::to_string(size - header_length_bytes) + " bytes after the length)");
  }
  safetensors_header h;
  h.data_offset = header_length_bytes + static_cast<std::int64_t>(n);
  h.data_size   = size - h.data_offset;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + header_length_bytes, n);
  const auto j = detail::parse_json_strict(text, file, "header");
  if (!j.is_object()) {
    throw format_error(file, "header", std::string("header must be a JSON object, got ") + j.type_name());
  }
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        throw format_error(file, "__metadata__", "must be an object of string values, got " + entry.dump());
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          throw format_error(file, "__metadata__", "value of \"" + key + "\" must be a string, got " + value.dump());
        }
        h.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(detail::parse_tensor_entry(file, name, entry, h.data_size));
  }
  // Ranges must not overlap (zero-size tensors occupy no bytes and never overlap).
  std::vector<const tensor_info*> by_offset;
  for (const auto& t : h.tensors) {
    if (t.nbytes() > 0) {
      by_offset.push_back(&t);
    }
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      throw format_error(file, by_offset[i]->name, "byte range [" + std::to_string(by_offset[i]->begin) + ", " +
                                                       std::to_string(by_offset[i]->end) + ") overlaps tensor " +
                                                       by_offset[i - 1]->name + " [" +
                                                       std::to_string(by_offset[i - 1]->begin) + ", " +
                                                       std::to_string(by_offset[i - 1]->end) + ")");
    }
  }
  // nlohmann's object is a std::map, so items() already came sorted by name.
  return h;
}

namespace detail {

/// A read-only memory mapping of a whole file (POSIX). Empty files map to an empty span.
class mapped_file {
public:
  mapped_file() = default;
  explicit mapped_file(const std::filesystem::path& path) {
    const std::string file = path.string();
    const int fd           = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw format_error(file, "", std::string("cannot open: ") + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw format_error(file, "", "not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw format_error(file, "", std::string("cannot map: ") + std::strerror(err));
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);  // the mapping keeps the file alive
  }
  mapped_file(const mapped_file&)            = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  mapped_file& operator=(mapped_file&& o) noexcept {
    if (this != &o) {
      unmap();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~mapped_file() { unmap(); }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
  void unmap() noexcept {
    if (data_ != nullptr) {
      ::munmap(const_cast<std::byte*>(data_), size_);
    }
    data_ = nullptr;
    size_ = 0;
  }
  const std::byte* data_ = nullptr;
  std::size_t size_      = 0;
};

/// Element-wise conversion of `src` (type `from`) into `dst`; only float<->float conversions are defined, all
/// of them exact or correctly rounded once (numeric.hpp): widening is exact, narrowing rounds to nearest even.
template <class T>
void convert_elements(std::span<const std::byte> src, dtype from, std::span<T> dst) {
  const auto load = [&](std::size_t i) -> double {
    switch (from) {
      case dtype::f64: {
        double v;
        std::memcpy(&v, src.data() + i * 8, 8);
        return v;
      }
      case dtype::f32: {
        float v;
        std::memcpy(&v, src.data() + i * 4, 4);
        return v;
      }
      case dtype::f16: {
        half_t v;
        std::memcpy(&v, src.data() + i * 2, 2);
        return to_double(v);
      }
      case dtype::bf16: {
        bfloat16_t v;
        std::memcpy(&v, src.data() + i * 2, 2);
        return to_double(v);
      }
      default: return 0.0;
    }
  };
  // The stored type itself: a copy (a 7B fp16 checkpoint read into an fp16 engine is 13 GB of these).
  const bool same = (from == dtype::f64 && std::is_same_v<T, double>) || (from == dtype::f32 && std::is_same_v<T, float>) ||
                    (from == dtype::f16 && std::is_same_v<T, half_t>) || (from == dtype::bf16 && std::is_same_v<T, bfloat16_t>);
  if (same) {
    std::memcpy(dst.data(), src.data(), dst.size() * sizeof(T));
    return;
  }
  const auto convert = [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      const double v = load(i);
      if constexpr (std::is_same_v<T, double>) {
        dst[i] = v;
      } else if constexpr (std::is_same_v<T, float>) {
        // f64 -> f32 rounds once (to nearest); f32/f16/bf16 -> f32 is exact, so the detour via double is too.
        dst[i] = static_cast<float>(v);
      } else if constexpr (std::is_same_v<T, half_t>) {
        dst[i] = to_half(v);
      } else {
        dst[i] = to_bfloat16(v);
      }
    }
  };
  // Element-wise and independent, so the result does not depend on the split: large tensors (a bf16 7B
  // checkpoint read as fp16, for instance) are converted on every core.
  constexpr std::size_t min_per_thread = std::size_t{1} << 22;
  const std::size_t workers =
      std::min<std::size_t>(std::max(1u, std::thread::hardware_concurrency()), dst.size() / min_per_thread);
  if (workers <= 1) {
    convert(0, dst.size());
    return;
  }
  std::vector<std::thread> pool;
  const std::size_t per = (dst.size() + workers - 1) / workers;
  for (std::size_t w = 1; w < workers; ++w) {
    pool.emplace_back(convert, std::min(dst.size(), w * per), std::min(dst.size(), (w + 1) * per));
  }
  convert(0, std::min(dst.size(), per));
  for (auto& t : pool) {
    t.join();
  }
}

inline bool is_float_dtype(dtype t) noexcept {
  return t == dtype::f64 || t == dtype::f32 || t == dtype::f16 || t == dtype::bf16;
}

}  // namespace detail

/// Element types read_as<T>() can produce by conversion from any floating dtype.
template <class T>
concept float_element = std::is_same_v<T, double> || std::is_same_v<T, float> || std::is_same_v<T, half_t>
                        || std::is_same_v<T, bfloat16_t>;

/// One memory-mapped, validated safetensors file.
class safetensors_file {
public:
  /// Maps and validates `path`; throws format_error naming the file for any problem.
  static safetensors_file open(const std::filesystem::path& path) {
    safetensors_file f;
    f.path_   = path;
    f.map_    = detail::mapped_file(path);
    f.header_ = parse_safetensors_header(f.map_.bytes(), path.string());
    return f;
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return header_.metadata; }
  /// All tensors, sorted by name.
  [[nodiscard]] const std::vector<tensor_info>& tensors() const noexcept { return header_.tensors; }
  [[nodiscard]] const safetensors_header& header() const noexcept { return header_; }

  /// The tensor called `name`, or nullptr.
  [[nodiscard]] const tensor_info* find(std::string_view name) const {
    const auto it = std::lower_bound(header_.tensors.begin(), header_.tensors.end(), name,
                                     [](const tensor_info& t, std::string_view n) { return t.name < n; });
    return it != header_.tensors.end() && it->name == name ? &*it : nullptr;
  }
  /// The tensor called `name`; throws format_error (file, name, "no such tensor") when absent.
  [[nodiscard]] const tensor_info& at(std::string_view name) const {
    if (const auto* t = find(name)) {
      return *t;
    }
    throw format_error(path_.string(), std::string(name), "no such tensor in the file");
  }

  /// The raw little-endian bytes of a tensor, without copying (valid while this object lives).
  [[nodiscard]] std::span<const std::byte> bytes(const tensor_info& t) const noexcept {
    return map_.bytes().subspan(static_cast<std::size_t>(header_.data_offset + t.begin),
                                static_cast<std::size_t>(t.nbytes()));
  }
  [[nodiscard]] std::span<const std::byte> bytes(std::string_view name) const { return bytes(at(name)); }

  /// A zero-copy typed span; the stored dtype must be exactly dtype_of<T> and the data aligned for T.
  template <class T>
  [[nodiscard]] std::span<const T> view(std::string_view name) const {
    const auto& t = at(name);
    if (t.dtype != dtype_of<T>) {
      throw invalid_argument(path_.string() + ": " + t.name + ": stored as " + std::string(dtype_name(t.dtype)) +
                             ", cannot view as " + std::string(dtype_name(dtype_of<T>)));
    }
    const auto b = bytes(t);
    if (reinterpret_cast<std::uintptr_t>(b.data()) % alignof(T) != 0) {
      throw invalid_argument(path_.string() + ": " + t.name + ": data is not aligned for a zero-copy view; use read_as");
    }
    return {reinterpret_cast<const T*>(b.data()), b.size() / sizeof(T)};
  }

  /// A copy converted to T (exact widening, round-to-nearest-even narrowing; see numeric.hpp).
  template <float_element T>
  [[nodiscard]] std::vector<T> read_as(std::string_view name) const {
    const auto& t = at(name);
    std::vector<T> out(static_cast<std::size_t>(t.numel()));
    read_into(t, std::span<T>(out));
    return out;
  }

  /// Converts into caller-provided storage of exactly numel() elements (pinned staging, for instance).
  template <float_element T>
  void read_into(const tensor_info& t, std::span<T> out) const {
    if (!detail::is_float_dtype(t.dtype)) {
      throw invalid_argument(path_.string() + ": " + t.name + ": cannot convert " + std::string(dtype_name(t.dtype)) +
                             " to a floating type");
    }
    QPROB_CHECK_EQ(static_cast<std::int64_t>(out.size()), t.numel(), "read_into: destination size");
    detail::convert_elements(bytes(t), t.dtype, out);
  }

private:
  std::filesystem::path path_;
  detail::mapped_file map_;
  safetensors_header header_;
};

/// A checkpoint: one model.safetensors, or shards listed by model.safetensors.index.json. Tensor names are
/// unique across shards.
class checkpoint {
public:
  struct entry {
    const tensor_info* info;
    std::size_t shard;
  };

  /// Opens a directory (model.safetensors, else model.safetensors.index.json), a .safetensors file, or an
  /// .index.json file.
  static checkpoint open(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      if (fs::exists(path / "model.safetensors", ec)) {
        return open_single(path / "model.safetensors");
      }
      if (fs::exists(path / "model.safetensors.index.json", ec)) {
        return open_index(path / "model.safetensors.index.json");
      }
      throw format_error(path.string(), "", "no model.safetensors or model.safetensors.index.json in the directory");
    }
    const auto name = path.filename().string();
    if (name.size() > 11 && name.ends_with(".index.json")) {
      return open_index(path);
    }
    return open_single(path);
  }

  static checkpoint open_single(const std::filesystem::path& file) {
    checkpoint c;
    c.label_ = file.string();
    c.shards_.push_back(safetensors_file::open(file));
    c.build_entries();
    return c;
  }

  /// Sharded: {"metadata": {...}, "weight_map": {tensor: shard file}}. Every listed tensor must be in its shard
  /// and every tensor in a shard must be listed there.
  static checkpoint open_index(const std::filesystem::path& index_path) {
    namespace fs = std::filesystem;
    const std::string file = index_path.string();
    std::string text;
    {
      detail::mapped_file m(index_path);
      const auto b = m.bytes();
      text.assign(reinterpret_cast<const char*>(b.data()), b.size());
    }
    const auto j = detail::parse_json_strict(text, file, "index");
    if (!j.is_object()) {
      throw format_error(file, "", std::string("index must be a JSON object, got ") + j.type_name());
    }
    const auto wm = j.find("weight_map");
    if (wm == j.end()) {
      throw format_error(file, "weight_map", "missing");
    }
    if (!wm->is_object()) {
      throw format_error(file, "weight_map", "must be an object of tensor name -> shard file name");
    }
    checkpoint c;
    c.label_ = file;
    if (const auto md = j.find("metadata"); md != j.end() && !md->is_object() && !md->is_null()) {
      throw format_error(file, "metadata", "must be an object");
    }
    std::map<std::string, std::size_t> shard_index;
    std::map<std::string, std::string> listed;  // tensor -> shard file
    for (const auto& [tensor, shard] : wm->items()) {
      if (!shard.is_string()) {
        throw format_error(file, "weight_map." + tensor, "shard file name must be a string, got " + shard.dump());
      }
      const auto shard_name = shard.get<std::string>();
      const fs::path rel(shard_name);
      if (shard_name.empty() || rel.is_absolute() || rel.has_parent_path() || shard_name == ".." || shard_name == ".") {
        throw format_error(file, "weight_map." + tensor,
                           "shard \"" + shard_name + "\" must be a plain file name in the index's directory");
      }
      if (!shard_index.contains(shard_name)) {
        const auto shard_path = index_path.parent_path() / rel;
        std::error_code ec;
        if (!fs::exists(shard_path, ec)) {
          throw format_error(file, "weight_map." + tensor, "shard file " + shard_path.string() + " does not exist");
        }
        shard_index.emplace(shard_name, c.shards_.size());
        c.shards_.push_back(safetensors_file::open(shard_path));
      }
      listed.emplace(tensor, shard_name);
    }
    for (const auto& [tensor, shard_name] : listed) {
      if (c.shards_[shard_index.at(shard_name)].find(tensor) == nullptr) {
        throw format_error(file, "weight_map." + tensor, "tensor is absent from its shard " + shard_name);
      }
    }
    for (const auto& s : c.shards_) {
      for (const auto& t : s.tensors()) {
        const auto it = listed.find(t.name);
        if (it == listed.end() || index_path.parent_path() / it->second != s.path()) {
          throw format_error(file, "weight_map", "tensor " + t.name + " of shard " + s.path().filename().string() +
                                                     " is not listed for that shard");
        }
      }
    }
    c.build_entries();
    return c;
  }

  /// The index file or the single file; used in messages.
  [[nodiscard]] const std::string& label() const noexcept { return label_; }
  [[nodiscard]] const std::vector<safetensors_file>& shards() const noexcept { return shards_; }
  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
  /// Every tensor (sorted by name) with the shard holding it.
  [[nodiscard]] const std::map<std::string, entry, std::less<>>& entries() const noexcept { return entries_; }

  [[nodiscard]] const tensor_info* find(std::string_view name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : it->second.info;
  }
  [[nodiscard]] const tensor_info& at(std::string_view name) const {
    if (const auto* t = find(name)) {
      return *t;
    }
    throw format_error(label_, std::string(name), "no such tensor in the checkpoint");
  }
  [[nodiscard]] const safetensors_file& shard_of(std::string_view name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) {
      throw format_error(label_, std::string(name), "no such tensor in the checkpoint");
    }
    return shards_[it->second.shard];
  }
  [[nodiscard]] std::span<const std::byte> bytes(std::string_view name) const { return shard_of(name).bytes(name); }
  template <float_element T>
  [[nodiscard]] std::vector<T> read_as(std::string_view name) const {
    return shard_of(name).template read_as<T>(name);
  }

private:
  void build_entries() {
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      for (const auto& t : shards_[s].tensors()) {
        if (!entries_.emplace(t.name, entry{&t, s}).second) {
          throw format_error(label_, t.name, "tensor appears in more than one shard");
        }
      }
    }
  }

  std::string label_;
  std::vector<safetensors_file> shards_;  // tensor_info pointers into these stay valid when the vector moves
  std::map<std::string, entry, std::less<>> entries_;
};

// ---------------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------------

/// A tensor to write: its bytes (little-endian, row-major) must be exactly numel x dtype_size.
struct tensor_to_write {
  std::string name;
  qprob::dtype dtype = qprob::dtype::f32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;
};

struct write_options {
  std::map<std::string, std::string> metadata;
  /// Test hook: called at "opened", "header", "data", "synced" (before rename); throwing from it simulates a
  /// failure at that point. The writer must then leave neither the target nor its temporary file.
  std::function<void(std::string_view stage)> on_stage;
};

namespace detail {

/// Builds the serialized header (with padding) and the data order for a set of tensors.
inline std::pair<std::string, std::vector<const tensor_to_write*>> build_header(
    const std::vector<tensor_to_write>& tensors,
    const std::map<std::string, std::string>& metadata,
    const std::string& file) {
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") {
      throw invalid_argument(file + ": tensor name \"__metadata__\" is reserved");
    }
    if (detail::first_invalid_utf8(t.name)) {
      throw invalid_argument(file + ": tensor name \"" + printable(t.name) + "\" is not valid UTF-8");
    }
    if (!names.insert(t.name).second) {
      throw invalid_argument(file + ": duplicate tensor name " + t.name);
    }
    std::int64_t numel = 1;
    for (auto d : t.shape) {
      QPROB_CHECK(d >= 0, file, ": ", t.name, ": negative dimension ", d);
      const auto next = checked_mul(numel, d);
      QPROB_CHECK(next.has_value(), file, ": ", t.name, ": shape overflows int64");
      numel = *next;
    }
    const auto nbytes = checked_mul(numel, dtype_size(t.dtype));
    QPROB_CHECK(nbytes.has_value() && *nbytes == static_cast<std::int64_t>(t.data.size()), file, ": ", t.name,
                ": data has ", t.data.size(), " bytes, shape ", shape_string(t.shape), " x ", dtype_name(t.dtype),
                " needs ", nbytes.value_or(-1));
  }
  // Larger elements first, then by name: with an 8-aligned data section every tensor is aligned to its
  // element size (the Rust writer's order), and no padding is needed between tensors.
  std::vector<const tensor_to_write*> order;
  for (const auto& t : tensors) {
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    const int sa = dtype_size(a->dtype);
    const int sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  nlohmann::json j = nlohmann::json::object();  // std::map underneath: keys come out sorted
  if (!metadata.empty()) {
    for (const auto& [k, v] : metadata) {
      if (detail::first_invalid_utf8(k) || detail::first_invalid_utf8(v)) {
        throw invalid_argument(file + ": __metadata__ entries must be valid UTF-8");
      }
      j["__metadata__"][k] = v;
    }
  }
  std::int64_t offset = 0;
  for (const auto* t : order) {
    const auto n = static_cast<std::int64_t>(t->data.size());
    j[t->name]   = {{"dtype", std::string(dtype_name(t->dtype))}, {"shape", t->shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string header = j.dump();
  const auto total   = static_cast<std::int64_t>(header.size()) + header_length_bytes;
  header.append(static_cast<std::size_t>((data_alignment - total % data_alignment) % data_alignment), ' ');
  return {std::move(header), std::move(order)};
}

}  // namespace detail

/// Writes a safetensors file atomically: `<path>.tmp.<pid>` in the same directory, fsync, rename, fsync of the
/// directory. On any failure (I/O error, invalid tensor, or the on_stage hook throwing) the temporary file is
/// removed and `path` is left untouched. Header keys are sorted; the data section starts 8-byte aligned.
/// @throws invalid_argument for inconsistent tensors, format_error for I/O failures.
inline void write_safetensors(const std::filesystem::path& path,
                              const std::vector<tensor_to_write>& tensors,
                              const write_options& options = {}) {
  const std::string file = path.string();
  auto [header, order]   = detail::build_header(tensors, options.metadata, file);
  const auto stage       = [&](std::string_view s) {
    if (options.on_stage) {
      options.on_stage(s);
    }
  };
  atomic_output_file out(path);
  stage("opened");
  std::uint8_t len[8];
  const auto n = static_cast<std::uint64_t>(header.size());
  for (int i = 0; i < 8; ++i) {
    len[i] = static_cast<std::uint8_t>(n >> (8 * i));
  }
  out.write(len, 8);
  out.write(header);
  stage("header");
  for (const auto* t : order) {
    out.write(t->data.data(), t->data.size());
  }
  stage("data");
  out.sync();
  stage("synced");
  out.commit();
}

/// Writes tensors as shards `<stem>-0000i-of-0000N.safetensors` of at most `max_shard_bytes` data each (a
/// larger tensor gets a shard of its own) plus `<stem>.safetensors.index.json` in `dir`. All shards are
/// written to temporary files first and renamed only when every one succeeded; the index is renamed last.
inline void write_sharded_safetensors(const std::filesystem::path& dir,
                                      const std::vector<tensor_to_write>& tensors,
                                      std::int64_t max_shard_bytes,
                                      const write_options& options = {},
                                      const std::string& stem = "model") {
  QPROB_CHECK(max_shard_bytes > 0, "write_sharded_safetensors: max_shard_bytes must be positive, got ", max_shard_bytes);
  std::vector<const tensor_to_write*> sorted;
  for (const auto& t : tensors) {
    sorted.push_back(&t);
  }
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::vector<std::vector<tensor_to_write>> groups(1);
  std::int64_t current = 0;
  std::int64_t total   = 0;
  for (const auto* t : sorted) {
    const auto n = static_cast<std::int64_t>(t->data.size());
    if (!groups.back().empty() && current + n > max_shard_bytes) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(*t);
    current += n;
    total += n;
  }
  const auto count = groups.size();
  const auto shard_name = [&](std::size_t i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i + 1, count);
    return stem + buf;
  };
  // Shards are written under temporary final names, then renamed together.
  std::vector<std::filesystem::path> written;  // temporary shard paths already complete
  std::vector<std::filesystem::path> renamed;
  const auto cleanup = [&] {
    std::error_code ec;
    for (const auto& p : written) {
      std::filesystem::remove(p, ec);
    }
    for (const auto& p : renamed) {
      std::filesystem::remove(p, ec);
    }
  };
  try {
    nlohmann::json index;
    index["metadata"]["total_size"] = total;
    for (const auto& [k, v] : options.metadata) {
      index["metadata"][k] = v;
    }
    index["weight_map"] = nlohmann::json::object();
    for (std::size_t i = 0; i < count; ++i) {
      const auto staged = dir / (shard_name(i) + ".staged." + std::to_string(::getpid()));
      write_safetensors(staged, groups[i], options);
      written.push_back(staged);
      for (const auto& t : groups[i]) {
        index["weight_map"][t.name] = shard_name(i);
      }
    }
    for (std::size_t i = 0; i < count; ++i) {
      const auto final_path = dir / shard_name(i);
      if (::rename(written[i].c_str(), final_path.c_str()) != 0) {
        throw format_error(final_path.string(), "", std::string("cannot rename: ") + std::strerror(errno));
      }
      renamed.push_back(final_path);
    }
    written.clear();
    const auto index_path = dir / (stem + ".safetensors.index.json");
    atomic_write_options index_options;
    index_options.on_stage = [&](std::string_view st) {
      if (st == "data" && options.on_stage) {
        options.on_stage("index");
      }
    };
    write_file_atomic(index_path, index.dump(2) + "\n", index_options);
  } catch (...) {
    cleanup();
    throw;
  }
}

}  // namespace qprob::io
