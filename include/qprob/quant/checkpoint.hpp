// SPDX-License-Identifier: Apache-2.0
#pragma once
// GPTQ checkpoints in the layout AutoGPTQ and GPTQModel write and Hugging Face transformers loads: per quantized
// linear layer `qweight` (int32), `qzeros` (int32), `scales` (fp16), `g_idx` (int32) and `bias` (fp16) in a
// safetensors file, the settings in quantize_config.json and config.json["quantization_config"], every other
// tensor (embeddings, norms, lm_head) in fp16. docs/gptq-format.md gives the bit layouts with worked examples.
//
//   * qweight (packed_length(K), N): the codes of each output column n, packed along K as a little-endian
//     bitstream -- the same bits as qprob's in-memory qweight (quant/pack.hpp), stored as int32.
//   * qzeros (groups, packed_length(N)): the zero points of each group, packed along N with the same rule. The
//     v1 format ("gptq", AutoGPTQ) stores zero - 1 (a symmetric 4-bit zero 8 is 7: 0x77777777); "gptq_v2"
//     (GPTQModel) stores the true zero. qprob's in-memory zeros are always the true value.
//   * scales (groups, N) fp16; g_idx (K) = group of every input column (i / group_size without act-order).
//
// Host only (POSIX file system calls); no CUDA.

#include <qprob/core/dtype.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>
#include <qprob/policy/name.hpp>
#include <qprob/policy/presets.hpp>
#include <qprob/reference/rtn.hpp>
#include <qprob/version.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace qprob::quant {

// ---- runtime policy and dispatch -----------------------------------------------------------------------------

/// The quantization settings of a checkpoint as runtime values. group_size uses qprob's convention:
/// qprob::per_channel (0) means one group over the whole input dimension (GPTQ's group_size -1).
struct runtime_policy {
  int bits       = 4;
  int group_size = 128;
  bool sym       = true;
  bool desc_act  = false;

  friend bool operator==(const runtime_policy&, const runtime_policy&) = default;

  template <quantized_policy P>
  [[nodiscard]] static constexpr runtime_policy of() noexcept {
    return {P::bits, P::group_size, P::symmetric, P::act_order};
  }
  /// group_size as GPTQ configs spell it (-1 for per-channel).
  [[nodiscard]] constexpr int gptq_group_size() const noexcept { return group_size == per_channel ? -1 : group_size; }
};

inline std::string describe(const runtime_policy& p) {
  return qprob::detail::concat("bits=", p.bits, " group_size=", p.gptq_group_size(), " sym=", p.sym ? "true" : "false",
                        " desc_act=", p.desc_act ? "true" : "false");
}

/// The preset policies a runtime_policy can be dispatched to (compute type fp16; bf16 variants share the
/// runtime values of their fp16 twin and are chosen by the caller, not by a checkpoint).
using dispatchable_policies =
    std::tuple<policies::int8_pc, policies::int8_g128, policies::int4_g128, policies::int4_g128_act,
               policies::int4_g128_asym, policies::int4_g32, policies::int4_g64_asym, policies::int4_pc,
               policies::int3_g128, policies::int2_g64, policies::int2_g128>;

namespace detail {

template <class... Ps>
invalid_argument unsupported_policy(const runtime_policy& rp, std::tuple<Ps...>* /*tag*/) {
  std::string list;
  ((list += (list.empty() ? "" : ", ") + std::string(policy_name<Ps>()) + " (" + describe(runtime_policy::of<Ps>()) + ")"),
   ...);
  return invalid_argument("no qprob policy for " + describe(rp) + "; supported: " + list);
}

template <class R, class Fn, class P, class... Rest>
R dispatch_policy_impl(const runtime_policy& rp, Fn& fn) {
  if (rp == runtime_policy::of<P>()) {
    return fn(std::type_identity<P>{});
  }
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_policy_impl<R, Fn, Rest...>(rp, fn);
  } else {
    throw unsupported_policy(rp, static_cast<dispatchable_policies*>(nullptr));
  }
}

template <class Fn, class... Ps>
auto dispatch_policy_list(const runtime_policy& rp, Fn& fn, std::tuple<Ps...>* /*tag*/) {
  using result = std::invoke_result_t<Fn&, std::type_identity<std::tuple_element_t<0, std::tuple<Ps...>>>>;
  return dispatch_policy_impl<result, Fn, Ps...>(rp, fn);
}

}  // namespace detail

/// Calls fn(std::type_identity<P>{}) with the preset policy P of qprob::policies whose bits, group size,
/// symmetry and act-order equal `rp`, and returns its result. @throws invalid_argument listing the supported
/// combinations when none matches.
/// Every call of fn must return the same type (returned by value).
template <class Fn>
auto dispatch_policy(const runtime_policy& rp, Fn&& fn) {
  return detail::dispatch_policy_list(rp, fn, static_cast<dispatchable_policies*>(nullptr));
}

// ---- bitstream packing with runtime bits ---------------------------------------------------------------------

/// The two on-disk conventions for zero points.
enum class gptq_format : std::uint8_t {
  v1,  ///< "gptq": qzeros hold zero - 1 (AutoGPTQ, GPTQ-for-LLaMa, most published checkpoints)
  v2,  ///< "gptq_v2": qzeros hold the true zero point (GPTQModel)
};

constexpr std::string_view to_string(gptq_format f) noexcept { return f == gptq_format::v1 ? "gptq" : "gptq_v2"; }

constexpr bool is_gptq_bits(int bits) noexcept { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

/// Words of a pack block (lcm(bits, 32) / 32) and the codes it holds: 3 bits packs 32 codes in 3 words.
constexpr int pack_block_words(int bits) noexcept { return bits == 3 ? 3 : 1; }
constexpr int pack_block_values(int bits) noexcept { return pack_block_words(bits) * 32 / bits; }

/// 32-bit words holding `count` codes of `bits` bits (padded to whole pack blocks; = count * bits / 32 whenever
/// count is a multiple of 32, the only case AutoGPTQ's kernels accept).
constexpr std::int64_t packed_length(std::int64_t count, int bits) noexcept {
  return ceil_div(count, static_cast<std::int64_t>(pack_block_values(bits))) * pack_block_words(bits);
}

/// Groups along an input dimension of k columns (group_size per_channel: one group).
constexpr std::int64_t group_count(std::int64_t k, int group_size) noexcept {
  return k == 0 ? 0 : group_size == per_channel ? 1 : ceil_div(k, static_cast<std::int64_t>(group_size));
}
constexpr std::int64_t default_group_of(std::int64_t column, int group_size) noexcept {
  return group_size == per_channel ? 0 : column / group_size;
}

/// Field j of a bitstream whose word w is words[w * stride] (stride N for qweight columns, 1 for qzeros rows).
inline std::uint32_t get_field(const std::uint32_t* words, std::int64_t stride, std::int64_t j, int bits) noexcept {
  const std::int64_t bit = j * bits;
  const std::int64_t w   = bit / 32;
  const int offset       = static_cast<int>(bit % 32);
  std::uint64_t v        = words[w * stride] >> offset;
  if (offset + bits > 32) {  // 3 bits only: the field continues in the next word
    v |= static_cast<std::uint64_t>(words[(w + 1) * stride]) << (32 - offset);
  }
  return static_cast<std::uint32_t>(v) & ((1u << bits) - 1u);
}

/// ORs field j (value < 2^bits) into a zero-initialized bitstream.
inline void put_field(std::uint32_t* words, std::int64_t stride, std::int64_t j, int bits, std::uint32_t value) noexcept {
  const std::int64_t bit = j * bits;
  const std::int64_t w   = bit / 32;
  const int offset       = static_cast<int>(bit % 32);
  words[w * stride] |= value << offset;
  if (offset + bits > 32) {
    words[(w + 1) * stride] |= value >> (32 - offset);
  }
}

/// Packs true zero points (groups, n) into GPTQ qzeros (groups, packed_length(n)) in format `fmt`.
/// v1 stores zero - 1 and so represents zeros 1 .. 2^bits; v2 stores zeros 0 .. 2^bits - 1.
/// @throws invalid_argument for a zero the format cannot hold (naming group and column).
inline std::vector<std::int32_t> pack_qzeros(std::span<const std::uint8_t> zeros, std::int64_t groups, std::int64_t n,
                                             int bits, gptq_format fmt) {
  QPROB_CHECK(is_gptq_bits(bits), "pack_qzeros: bits must be 2, 3, 4 or 8, got ", bits);
  QPROB_CHECK_EQ(static_cast<std::int64_t>(zeros.size()), groups * n, "pack_qzeros: zeros must be (groups, n)");
  const std::int64_t words = packed_length(n, bits);
  std::vector<std::uint32_t> out(static_cast<std::size_t>(groups * words), 0u);
  const int lo = fmt == gptq_format::v1 ? 1 : 0;
  const int hi = fmt == gptq_format::v1 ? (1 << bits) : (1 << bits) - 1;
  for (std::int64_t g = 0; g < groups; ++g) {
    for (std::int64_t c = 0; c < n; ++c) {
      const int z = zeros[static_cast<std::size_t>(g * n + c)];
      if (z < lo || z > hi) {
        throw invalid_argument(qprob::detail::concat(
            "pack_qzeros: zero point ", z, " (group ", g, ", column ", c, ") cannot be stored in the ", to_string(fmt),
            " format, which holds ", lo, " .. ", hi, " at ", bits, " bits",
            fmt == gptq_format::v1 ? " (it stores zero - 1; save as gptq_v2 instead)" : ""));
      }
      put_field(out.data() + g * words, 1, c, bits, static_cast<std::uint32_t>(z - lo));
    }
  }
  std::vector<std::int32_t> packed(out.size());
  std::memcpy(packed.data(), out.data(), out.size() * sizeof(std::uint32_t));
  return packed;
}

/// Unpacks GPTQ qzeros (groups, packed_length(n)) into true zero points (groups, n). v1 adds 1 to every field,
/// as AutoGPTQ's kernels do, so a v1 field of 2^bits - 1 means zero 2^bits.
/// @throws invalid_argument when a v1 8-bit field is 255 (zero 256 does not fit qprob's uint8 zero points).
inline std::vector<std::uint8_t> unpack_qzeros(std::span<const std::int32_t> qzeros, std::int64_t groups, std::int64_t n,
                                               int bits, gptq_format fmt) {
  QPROB_CHECK(is_gptq_bits(bits), "unpack_qzeros: bits must be 2, 3, 4 or 8, got ", bits);
  const std::int64_t words = packed_length(n, bits);
  QPROB_CHECK_EQ(static_cast<std::int64_t>(qzeros.size()), groups * words, "unpack_qzeros: qzeros must be (groups, words)");
  std::vector<std::uint32_t> raw(qzeros.size());
  std::memcpy(raw.data(), qzeros.data(), raw.size() * sizeof(std::uint32_t));
  std::vector<std::uint8_t> out(static_cast<std::size_t>(groups * n));
  for (std::int64_t g = 0; g < groups; ++g) {
    for (std::int64_t c = 0; c < n; ++c) {
      const std::uint32_t field = get_field(raw.data() + g * words, 1, c, bits);
      const std::uint32_t z     = fmt == gptq_format::v1 ? field + 1 : field;
      if (z > 255) {
        throw invalid_argument(qprob::detail::concat("unpack_qzeros: group ", g, ", column ", c, ": the v1 field ", field,
                                              " means zero point ", z, ", which does not fit 8 bits"));
      }
      out[static_cast<std::size_t>(g * n + c)] = static_cast<std::uint8_t>(z);
    }
  }
  return out;
}

// ---- one layer: qprob layout <-> GPTQ tensors ----------------------------------------------------------------

/// The GPTQ tensors of one quantized linear layer with n outputs and k inputs.
struct gptq_tensors {
  std::int64_t n = 0;
  std::int64_t k = 0;
  std::vector<std::int32_t> qweight;  // (packed_length(k), n)
  std::vector<std::int32_t> qzeros;   // (groups, packed_length(n))
  std::vector<half_t> scales;         // (groups, n)
  std::vector<std::int32_t> g_idx;    // (k)
};

/// Checks that `q` is a well-formed quantized weight for `p` (sizes, g_idx range, symmetric zeros).
inline void check_quantized_weight(const reference::quantized_weight& q, const runtime_policy& p, std::string_view what) {
  QPROB_CHECK(is_gptq_bits(p.bits), what, ": bits must be 2, 3, 4 or 8, got ", p.bits);
  QPROB_CHECK(q.n > 0 && q.k > 0, what, ": empty weight (n=", q.n, ", k=", q.k, ")");
  const auto groups = group_count(q.k, p.group_size);
  QPROB_CHECK(static_cast<std::int64_t>(q.qweight.size()) == packed_length(q.k, p.bits) * q.n, what, ": qweight has ",
              q.qweight.size(), " words, expected packed_length(k=", q.k, ") x n = ", packed_length(q.k, p.bits), " x ",
              q.n);
  QPROB_CHECK(static_cast<std::int64_t>(q.scales.size()) == groups * q.n, what, ": scales has ", q.scales.size(),
              " entries, expected groups x n = ", groups, " x ", q.n);
  QPROB_CHECK(static_cast<std::int64_t>(q.zeros.size()) == groups * q.n, what, ": zeros has ", q.zeros.size(),
              " entries, expected groups x n = ", groups, " x ", q.n);
  QPROB_CHECK(q.g_idx.empty() || static_cast<std::int64_t>(q.g_idx.size()) == q.k, what, ": g_idx has ", q.g_idx.size(),
              " entries, expected 0 or k = ", q.k);
  for (std::size_t i = 0; i < q.g_idx.size(); ++i) {
    QPROB_CHECK(q.g_idx[i] >= 0 && q.g_idx[i] < groups, what, ": g_idx[", i, "] = ", q.g_idx[i], " is outside [0, ",
                groups, ")");
  }
  if (p.sym) {
    const int zero = 1 << (p.bits - 1);
    for (std::size_t i = 0; i < q.zeros.size(); ++i) {
      QPROB_CHECK(q.zeros[i] == zero, what, ": policy is symmetric but zeros[", i, "] = ", int(q.zeros[i]),
                  " (expected ", zero, ")");
    }
  }
}

/// qprob layout -> GPTQ tensors. g_idx is always written (default i / group_size when q has none), as
/// AutoGPTQ does. @throws invalid_argument for malformed input or zeros the format cannot hold.
inline gptq_tensors to_gptq(const reference::quantized_weight& q, const runtime_policy& p, gptq_format fmt) {
  check_quantized_weight(q, p, "to_gptq");
  gptq_tensors t;
  t.n       = q.n;
  t.k       = q.k;
  t.qweight.resize(q.qweight.size());
  std::memcpy(t.qweight.data(), q.qweight.data(), q.qweight.size() * sizeof(std::uint32_t));
  t.qzeros = pack_qzeros(q.zeros, group_count(q.k, p.group_size), q.n, p.bits, fmt);
  t.scales = q.scales;
  t.g_idx.resize(static_cast<std::size_t>(q.k));
  for (std::int64_t c = 0; c < q.k; ++c) {
    t.g_idx[static_cast<std::size_t>(c)] =
        q.g_idx.empty() ? static_cast<std::int32_t>(default_group_of(c, p.group_size)) : q.g_idx[static_cast<std::size_t>(c)];
  }
  return t;
}

/// True when g_idx is exactly the default i / group_size.
inline bool is_default_g_idx(std::span<const std::int32_t> g_idx, int group_size) {
  for (std::size_t c = 0; c < g_idx.size(); ++c) {
    if (g_idx[c] != default_group_of(static_cast<std::int64_t>(c), group_size)) {
      return false;
    }
  }
  return true;
}

/// GPTQ tensors -> qprob layout. A g_idx equal to the default i / group_size is returned empty (it means the
/// same), so to_gptq followed by from_gptq returns the input exactly. @throws invalid_argument on bad sizes.
inline reference::quantized_weight from_gptq(const gptq_tensors& t, const runtime_policy& p, gptq_format fmt) {
  QPROB_CHECK(is_gptq_bits(p.bits), "from_gptq: bits must be 2, 3, 4 or 8, got ", p.bits);
  const auto groups = group_count(t.k, p.group_size);
  QPROB_CHECK_EQ(static_cast<std::int64_t>(t.qweight.size()), packed_length(t.k, p.bits) * t.n, "from_gptq: qweight size");
  QPROB_CHECK_EQ(static_cast<std::int64_t>(t.scales.size()), groups * t.n, "from_gptq: scales size");
  QPROB_CHECK(t.g_idx.empty() || static_cast<std::int64_t>(t.g_idx.size()) == t.k, "from_gptq: g_idx has ",
              t.g_idx.size(), " entries, expected 0 or k = ", t.k);
  reference::quantized_weight q;
  q.n = t.n;
  q.k = t.k;
  q.qweight.resize(t.qweight.size());
  std::memcpy(q.qweight.data(), t.qweight.data(), t.qweight.size() * sizeof(std::int32_t));
  q.scales = t.scales;
  q.zeros  = unpack_qzeros(t.qzeros, groups, t.n, p.bits, fmt);
  for (std::size_t i = 0; i < t.g_idx.size(); ++i) {
    QPROB_CHECK(t.g_idx[i] >= 0 && t.g_idx[i] < groups, "from_gptq: g_idx[", i, "] = ", t.g_idx[i], " is outside [0, ",
                groups, ")");
  }
  if (!is_default_g_idx(t.g_idx, p.group_size)) {
    q.g_idx = t.g_idx;
  }
  return q;
}

/// Dequantizes with runtime settings: half(scale * (code - zero)) computed in double, exactly what
/// reference::dequantize<P, half_t> gives for the matching policy (tested).
inline std::vector<half_t> dequantize_half(const reference::quantized_weight& q, const runtime_policy& p) {
  check_quantized_weight(q, runtime_policy{p.bits, p.group_size, false, p.desc_act}, "dequantize_half");
  std::vector<half_t> out(static_cast<std::size_t>(q.n * q.k));
  for (std::int64_t row = 0; row < q.n; ++row) {
    for (std::int64_t c = 0; c < q.k; ++c) {
      const std::int64_t g =
          q.g_idx.empty() ? default_group_of(c, p.group_size) : q.g_idx[static_cast<std::size_t>(c)];
      const double scale = to_double(q.scales[static_cast<std::size_t>(g * q.n + row)]);
      const int zero     = q.zeros[static_cast<std::size_t>(g * q.n + row)];
      const auto code    = get_field(q.qweight.data() + row, q.n, c, p.bits);
      out[static_cast<std::size_t>(row * q.k + c)] = to_half(scale * (static_cast<double>(code) - zero));
    }
  }
  return out;
}

// ---- checkpoints -----------------------------------------------------------------------------------------------

/// quantize_config.json / config.json["quantization_config"], normalized.
struct gptq_quantize_config {
  runtime_policy policy;
  gptq_format format      = gptq_format::v1;
  double damp_percent     = 0.01;
  bool static_groups      = false;
  bool true_sequential    = true;
  bool lm_head            = false;
  std::string quant_method = "gptq";
  std::string model_name_or_path;
  std::string model_file_base_name;
  nlohmann::json meta = nlohmann::json::object();
  // Which settings the file gave explicitly (absent ones were detected from the tensors or defaulted).
  bool has_desc_act = false;
  bool has_sym      = false;
  bool has_format   = false;
};

/// One quantized linear layer to save: its Hugging Face module name ("model.layers.0.self_attn.q_proj") and
/// weight in qprob's layout. Biases are taken from the source model.
struct quantized_linear {
  std::string name;
  reference::quantized_weight weight;
};

/// The file qprob writes next to a checkpoint when gptq_save_options::write_dequantized is set: the fp16
/// dequantized weight of every quantized layer, named "<module>.weight" (read by tests/torch/check_gptq_checkpoint.py).
inline constexpr std::string_view dequantized_side_file = "qprob_dequantized.safetensors";

struct gptq_save_options {
  runtime_policy policy;
  gptq_format format = gptq_format::v1;  ///< v1 ("gptq") is what AutoGPTQ, vLLM and most published checkpoints use
  std::string model_file_base_name = "model";  ///< weights go to <base>.safetensors (AutoGPTQ: gptq_model-4bit-128g)
  double damp_percent  = 0.01;
  bool static_groups   = false;
  bool true_sequential = true;
  std::string model_name_or_path;  ///< recorded in the configs; empty: the source directory's name
  std::int64_t max_shard_bytes = 0;  ///< > 0: sharded <base>-0000i-of-0000N.safetensors + index
  bool overwrite = false;            ///< replace an existing non-empty `dir` (atomically)
  bool write_dequantized = false;    ///< also write dequantized_side_file
  /// Reject layers whose K or N is not a multiple of 32 (AutoGPTQ's and GPTQModel's kernels need that; qprob
  /// pads such layers to whole pack blocks, which only qprob and the layout-following checker read).
  bool require_multiple_of_32 = false;
  /// Test hook, called with "staged", "config", "weights", "tokenizer", "complete" (before the final rename);
  /// throwing from it must leave nothing behind.
  std::function<void(std::string_view)> on_stage;
};

/// A quantized linear layer as loaded.
struct gptq_loaded_linear {
  std::string name;  ///< module name, e.g. "model.layers.0.mlp.down_proj"
  model::tensor_role role = model::tensor_role::q;
  std::int64_t layer      = 0;
  reference::quantized_weight weight;
  std::vector<half_t> bias;  ///< empty when the layer has none
};

/// A tensor kept in floating point (embeddings, norms, lm_head), converted exactly to float.
struct gptq_dense_tensor {
  std::string name;
  model::weight_slot slot;
  qprob::dtype stored = qprob::dtype::f16;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

struct gptq_checkpoint {
  std::filesystem::path dir;
  std::filesystem::path weights_file;   ///< the safetensors file (or index) that was read
  std::string quantize_config_source;   ///< "quantize_config.json", "config.json" or both joined by " + "
  model::model_config config;
  nlohmann::json config_json;
  gptq_quantize_config quant;
  std::vector<gptq_loaded_linear> layers;  ///< in the model's layout order
  std::vector<gptq_dense_tensor> dense;

  [[nodiscard]] const gptq_loaded_linear* find_layer(std::string_view name) const {
    for (const auto& l : layers) {
      if (l.name == name) {
        return &l;
      }
    }
    return nullptr;
  }
  [[nodiscard]] const gptq_dense_tensor* find_dense(std::string_view name) const {
    for (const auto& d : dense) {
      if (d.name == name) {
        return &d;
      }
    }
    return nullptr;
  }
};

namespace detail {

inline bool is_quantized_role(model::tensor_role r) noexcept {
  using R = model::tensor_role;
  return r == R::q || r == R::k || r == R::v || r == R::qkv || r == R::o || r == R::gate || r == R::up || r == R::down;
}

/// The module name of a linear weight slot ("...q_proj.weight" -> "...q_proj").
inline std::string module_name(const model::weight_slot& s) {
  constexpr std::string_view suffix = ".weight";
  return s.hf_name.substr(0, s.hf_name.size() - suffix.size());
}

inline std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    throw format_error(p.string(), "", "cannot open");
  }
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline nlohmann::json read_json_file(const std::filesystem::path& p) {
  return io::detail::parse_json_strict(read_text_file(p), p.string(), "JSON document");
}

/// Writes a file and fsyncs it (the directory holding it is renamed into place afterwards).
inline void write_file_synced(const std::filesystem::path& p, std::string_view text) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw format_error(p.string(), "", std::string("cannot create: ") + std::strerror(errno));
  }
  try {
    io::detail::write_all(fd, text.data(), text.size(), p.string());
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    throw format_error(p.string(), "", std::string("cannot sync: ") + std::strerror(errno));
  }
}

/// The HF quantization block qprob writes (quantize_config.json holds the same object).
inline nlohmann::json quantization_config_json(const gptq_save_options& o, const std::string& name_or_path) {
  nlohmann::json q = nlohmann::json::object();
  q["bits"]                 = o.policy.bits;
  q["group_size"]           = o.policy.gptq_group_size();
  q["damp_percent"]         = o.damp_percent;
  q["desc_act"]             = o.policy.desc_act;
  q["static_groups"]        = o.static_groups;
  q["sym"]                  = o.policy.sym;
  q["true_sequential"]      = o.true_sequential;
  q["lm_head"]              = false;
  q["quant_method"]         = "gptq";
  q["checkpoint_format"]    = std::string(to_string(o.format));
  q["pack_dtype"]           = "int32";
  q["model_name_or_path"]   = name_or_path;
  q["model_file_base_name"] = o.model_file_base_name;
  q["meta"]                 = {{"quantizer", std::string("qprob:") + version_string}};
  return q;
}

template <class T>
std::span<const std::byte> as_bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

/// A unique sibling path of `dir` for staging.
inline std::filesystem::path sibling_path(const std::filesystem::path& dir, std::string_view tag) {
  auto base = dir;
  if (!base.has_filename()) {
    base = base.parent_path();
  }
  return base.parent_path() / (base.filename().string() + "." + std::string(tag) + "." + std::to_string(::getpid()));
}

}  // namespace detail

/// Writes a complete Hugging Face GPTQ model directory `dir`: config.json (the source config with dtype
/// float16 and a "quantization_config" block), quantize_config.json (the same block, AutoGPTQ's file),
/// <model_file_base_name>.safetensors with qweight/qzeros/scales/g_idx (+ fp16 bias) for every quantized linear
/// layer and every other tensor of the source model in fp16, and the source's tokenizer and generation files.
///
/// `source` is the original model directory (or its config.json): it supplies the config, the non-quantized
/// tensors and the biases. `layers` must hold every linear layer of the transformer blocks (names as in the
/// source checkpoint, without ".weight"), each with the source's shape.
///
/// Atomic: everything is written into a sibling staging directory which is renamed onto `dir` at the end; on
/// any failure the staging directory is removed and `dir` is left as it was.
/// @throws invalid_argument for inconsistent layers/options, format_error for unreadable sources or I/O errors.
inline void save_gptq_checkpoint(const std::filesystem::path& dir, const std::filesystem::path& source,
                                 const std::vector<quantized_linear>& layers, const gptq_save_options& options) {
  namespace fs = std::filesystem;
  const auto& p = options.policy;
  QPROB_CHECK(is_gptq_bits(p.bits), "save_gptq_checkpoint: bits must be 2, 3, 4 or 8, got ", p.bits);
  QPROB_CHECK(p.group_size == per_channel || p.group_size > 0, "save_gptq_checkpoint: group_size must be per_channel (0) "
                                                               "or positive, got ", p.group_size);
  QPROB_CHECK(!options.model_file_base_name.empty() && options.model_file_base_name.find('/') == std::string::npos,
              "save_gptq_checkpoint: model_file_base_name must be a plain, non-empty file stem, got \"",
              options.model_file_base_name, "\"");
  QPROB_CHECK(options.damp_percent > 0 && options.damp_percent < 1,
              "save_gptq_checkpoint: damp_percent must lie in (0, 1) (AutoGPTQ rejects others), got ", options.damp_percent);
  std::error_code ec;
  const fs::path source_dir = fs::is_directory(source, ec) ? source : source.parent_path();
  const fs::path config_path = source_dir / "config.json";

  // Source config and tensors.
  auto config_json    = detail::read_json_file(config_path);
  const auto config   = model::parse_config(config_json, config_path.string());
  const auto ckpt     = io::checkpoint::open(source_dir);
  const auto wmap     = model::map_weights(config, ckpt);

  // Target dir must be absent or empty unless overwriting.
  const bool exists = fs::exists(dir, ec);
  if (exists) {
    QPROB_CHECK(fs::is_directory(dir, ec), "save_gptq_checkpoint: ", dir.string(), " exists and is not a directory");
    QPROB_CHECK(options.overwrite || fs::is_empty(dir, ec), "save_gptq_checkpoint: ", dir.string(),
                " exists and is not empty (set overwrite to replace it)");
  }

  // Match the given layers to the linear slots of the layout.
  std::map<std::string, const quantized_linear*> by_name;
  for (const auto& l : layers) {
    QPROB_CHECK(by_name.emplace(l.name, &l).second, "save_gptq_checkpoint: layer ", l.name, " given twice");
  }
  std::vector<std::string> missing;
  std::set<std::string> used;
  for (const auto& t : wmap.tensors()) {
    if (t.info != nullptr && t.slot.part == model::tensor_part::weight && detail::is_quantized_role(t.slot.role)) {
      const auto name = detail::module_name(t.slot);
      const auto it   = by_name.find(name);
      if (it == by_name.end()) {
        missing.push_back(name);
        continue;
      }
      used.insert(name);
      const auto& w = it->second->weight;
      QPROB_CHECK(w.n == t.slot.shape[0] && w.k == t.slot.shape[1], "save_gptq_checkpoint: layer ", name, " is (n=", w.n,
                  ", k=", w.k, "), the source weight is ", io::shape_string(t.slot.shape));
      check_quantized_weight(w, p, "save_gptq_checkpoint: " + name);
      if (options.require_multiple_of_32) {
        QPROB_CHECK(w.n % 32 == 0 && w.k % 32 == 0, "save_gptq_checkpoint: layer ", name, " is (n=", w.n, ", k=", w.k,
                    "); AutoGPTQ/GPTQModel kernels need both to be multiples of 32");
      }
    }
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) {
      list += (list.empty() ? "" : ", ") + m;
    }
    throw invalid_argument("save_gptq_checkpoint: " + std::to_string(missing.size()) +
                           " linear layers of the source have no quantized weight: " + list);
  }
  for (const auto& [name, l] : by_name) {
    QPROB_CHECK(used.contains(name), "save_gptq_checkpoint: layer ", name, " is not a linear layer of the ",
                model::to_string(config.model_family), " source model (tensor prefix \"", wmap.prefix(), "\")");
  }

  // Everything the safetensors file holds; storage vectors live until the write.
  std::vector<io::tensor_to_write> tensors;
  std::vector<io::tensor_to_write> dequantized;
  std::vector<std::vector<std::int32_t>> i32_store;
  std::vector<std::vector<half_t>> f16_store;
  i32_store.reserve(4 * layers.size() + 8);
  f16_store.reserve(wmap.tensors().size() + 3 * layers.size() + 8);
  const auto add_i32 = [&](std::string name, std::vector<std::int64_t> shape, std::vector<std::int32_t> data) {
    i32_store.push_back(std::move(data));
    tensors.push_back({std::move(name), dtype::i32, std::move(shape), detail::as_bytes_of(i32_store.back())});
  };
  const auto add_f16 = [&](std::vector<io::tensor_to_write>& into, std::string name, std::vector<std::int64_t> shape,
                           std::vector<half_t> data) {
    f16_store.push_back(std::move(data));
    into.push_back({std::move(name), dtype::f16, std::move(shape), detail::as_bytes_of(f16_store.back())});
  };
  for (const auto& t : wmap.tensors()) {
    if (t.info == nullptr) {
      continue;
    }
    if (t.slot.part == model::tensor_part::weight && detail::is_quantized_role(t.slot.role)) {
      const auto name = detail::module_name(t.slot);
      const auto& w   = by_name.at(name)->weight;
      auto g          = to_gptq(w, p, options.format);
      const auto groups = group_count(w.k, p.group_size);
      add_i32(name + ".qweight", {packed_length(w.k, p.bits), w.n}, std::move(g.qweight));
      add_i32(name + ".qzeros", {groups, packed_length(w.n, p.bits)}, std::move(g.qzeros));
      add_i32(name + ".g_idx", {w.k}, std::move(g.g_idx));
      add_f16(tensors, name + ".scales", {groups, w.n}, std::move(g.scales));
      if (options.write_dequantized) {
        add_f16(dequantized, name + ".weight", {w.n, w.k}, dequantize_half(w, p));
      }
    } else {
      // Biases of quantized layers keep their names (AutoGPTQ's QuantLinear.bias); everything else as well.
      add_f16(tensors, t.info->name, t.info->shape, ckpt.read_as<half_t>(t.info->name));
    }
  }

  // Config files.
  const std::string name_or_path =
      options.model_name_or_path.empty() ? fs::absolute(source_dir).lexically_normal().filename().string()
                                         : options.model_name_or_path;
  const auto qcfg = detail::quantization_config_json(options, name_or_path);
  bool has_dtype  = false;
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (config_json.contains(key)) {
      config_json[key] = "float16";
      has_dtype        = true;
    }
  }
  if (!has_dtype) {
    config_json["torch_dtype"] = "float16";
  }
  config_json["quantization_config"] = qcfg;

  // Stage, then rename.
  const auto staging = detail::sibling_path(dir, "qprob-staging");
  fs::remove_all(staging, ec);
  const auto stage = [&](std::string_view s) {
    if (options.on_stage) {
      options.on_stage(s);
    }
  };
  try {
    if (!fs::create_directories(staging, ec) || ec) {
      throw format_error(staging.string(), "", "cannot create staging directory: " + ec.message());
    }
    stage("staged");
    detail::write_file_synced(staging / "config.json", config_json.dump(2) + "\n");
    detail::write_file_synced(staging / "quantize_config.json", qcfg.dump(2) + "\n");
    stage("config");
    io::write_options wo;
    wo.metadata = {{"format", "pt"}, {"quantizer", std::string("qprob:") + version_string}};
    if (options.max_shard_bytes > 0) {
      io::write_sharded_safetensors(staging, tensors, options.max_shard_bytes, wo, options.model_file_base_name);
    } else {
      io::write_safetensors(staging / (options.model_file_base_name + ".safetensors"), tensors, wo);
    }
    if (options.write_dequantized) {
      io::write_safetensors(staging / std::string(dequantized_side_file), dequantized, {{{"format", "pt"}}, {}});
    }
    stage("weights");
    for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json"}) {
      if (fs::exists(source_dir / f, ec)) {
        fs::copy_file(source_dir / f, staging / f, fs::copy_options::overwrite_existing);
      }
    }
    stage("tokenizer");
    io::detail::fsync_directory(staging);
    stage("complete");
    if (exists && options.overwrite && !fs::is_empty(dir, ec)) {
      const auto old = detail::sibling_path(dir, "qprob-old");
      fs::remove_all(old, ec);
      if (::rename(dir.c_str(), old.c_str()) != 0) {
        throw format_error(dir.string(), "", std::string("cannot move the existing directory aside: ") + std::strerror(errno));
      }
      if (::rename(staging.c_str(), dir.c_str()) != 0) {
        const int err = errno;
        (void)::rename(old.c_str(), dir.c_str());
        throw format_error(dir.string(), "", std::string("cannot rename the staging directory: ") + std::strerror(err));
      }
      fs::remove_all(old, ec);
    } else if (::rename(staging.c_str(), dir.c_str()) != 0) {
      throw format_error(dir.string(), "", std::string("cannot rename the staging directory: ") + std::strerror(errno));
    }
    io::detail::fsync_directory(fs::absolute(dir).parent_path());
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
}

namespace detail {

/// Parses one quantization config object (quantize_config.json or config.json's "quantization_config").
inline gptq_quantize_config parse_quantize_config(const nlohmann::json& raw, const std::string& file,
                                                  const std::string& prefix) {
  if (!raw.is_object()) {
    throw format_error(file, prefix.empty() ? "" : prefix.substr(0, prefix.size() - 1),
                       std::string("expected a JSON object, got ") + raw.type_name());
  }
  // Keys are case-insensitive in AutoGPTQ/GPTQModel, with w_bit / q_group_size as synonyms.
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, value] : raw.items()) {
    std::string k = key;
    std::transform(k.begin(), k.end(), k.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (k == "w_bit") {
      k = "bits";
    } else if (k == "q_group_size") {
      k = "group_size";
    }
    if (j.contains(k) && j[k] != value) {
      throw format_error(file, prefix + key, "given twice with different values (" + j[k].dump() + " vs " + value.dump() + ")");
    }
    j[k] = value;
  }
  const model::detail::field_reader r(j, file, prefix);
  gptq_quantize_config q;
  const auto method = r.opt_string({"quant_method"}).value_or("gptq");
  std::string method_lc = method;
  std::transform(method_lc.begin(), method_lc.end(), method_lc.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (method_lc != "gptq") {
    r.fail("quant_method", "unsupported quant_method \"" + method + "\" (qprob reads GPTQ checkpoints: \"gptq\")");
  }
  q.quant_method = method_lc;
  if (r.bool_or({"is_marlin_format"}, false)) {
    r.fail("is_marlin_format", "Marlin-repacked checkpoints are not supported (qprob reads checkpoint_format \"gptq\" "
                               "and \"gptq_v2\")");
  }
  if (const auto f = r.opt_string({"checkpoint_format"})) {
    std::string lc = *f;
    std::transform(lc.begin(), lc.end(), lc.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (lc == "gptq") {
      q.format = gptq_format::v1;
    } else if (lc == "gptq_v2") {
      q.format = gptq_format::v2;
    } else {
      r.fail("checkpoint_format", "unknown checkpoint_format \"" + *f + "\" (qprob reads \"gptq\": zero points stored "
                                  "minus 1, and \"gptq_v2\": true zero points; repacked kernel layouts such as marlin, "
                                  "bitblas or awq are not supported)");
    }
    q.has_format = true;
  }
  const auto bits = r.opt_int({"bits"}, std::numeric_limits<std::int64_t>::min());
  if (!bits) {
    r.fail("bits", "missing (required)");
  }
  if (!is_gptq_bits(static_cast<int>(*bits)) || *bits != static_cast<int>(*bits)) {
    r.fail("bits", "unsupported bits " + std::to_string(*bits) + " (GPTQ checkpoints use 2, 3, 4 or 8)");
  }
  q.policy.bits = static_cast<int>(*bits);
  const auto gs = r.opt_int({"group_size"}, std::numeric_limits<std::int64_t>::min());
  if (!gs) {
    r.fail("group_size", "missing (required)");
  }
  if (*gs == -1) {
    q.policy.group_size = per_channel;
  } else if (*gs >= 16 && *gs <= max_group_size && is_pow2(*gs)) {
    q.policy.group_size = static_cast<int>(*gs);
  } else {
    r.fail("group_size", "unsupported group_size " + std::to_string(*gs) + " (-1 for one group per output channel, or a "
                                                                           "power of two from 16 to 1024)");
  }
  q.has_sym      = r.find({"sym"}) != nullptr;
  q.policy.sym   = r.bool_or({"sym"}, true);  // both tools default to true (with a warning)
  q.has_desc_act = r.find({"desc_act"}) != nullptr;
  q.policy.desc_act = r.bool_or({"desc_act"}, false);
  q.static_groups   = r.bool_or({"static_groups"}, false);
  q.true_sequential = r.bool_or({"true_sequential"}, true);
  q.lm_head         = r.bool_or({"lm_head"}, false);
  if (q.lm_head) {
    r.fail("lm_head", "a quantized lm_head is not supported");
  }
  if (const auto d = r.opt_double({"damp_percent"})) {
    q.damp_percent = *d;
  }
  q.model_name_or_path   = r.opt_string({"model_name_or_path"}).value_or("");
  q.model_file_base_name = r.opt_string({"model_file_base_name"}).value_or("");
  if (const auto* m = r.find({"meta"}); m != nullptr) {
    q.meta = *m;
  }
  return q;
}

/// Settings that must agree between quantize_config.json and config.json's block when both exist.
inline void compare_quantize_configs(const gptq_quantize_config& a, const gptq_quantize_config& b, const std::string& file_b) {
  const auto fail = [&](const char* field, const std::string& va, const std::string& vb) {
    throw format_error(file_b, std::string("quantization_config.") + field,
                       vb + " disagrees with quantize_config.json (" + va + ")");
  };
  if (a.policy.bits != b.policy.bits) {
    fail("bits", std::to_string(a.policy.bits), std::to_string(b.policy.bits));
  }
  if (a.policy.group_size != b.policy.group_size) {
    fail("group_size", std::to_string(a.policy.gptq_group_size()), std::to_string(b.policy.gptq_group_size()));
  }
  if (a.has_sym && b.has_sym && a.policy.sym != b.policy.sym) {
    fail("sym", a.policy.sym ? "true" : "false", b.policy.sym ? "true" : "false");
  }
  if (a.has_desc_act && b.has_desc_act && a.policy.desc_act != b.policy.desc_act) {
    fail("desc_act", a.policy.desc_act ? "true" : "false", b.policy.desc_act ? "true" : "false");
  }
  if (a.has_format && b.has_format && a.format != b.format) {
    fail("checkpoint_format", std::string(to_string(a.format)), std::string(to_string(b.format)));
  }
}

/// The weights file of a GPTQ directory: <model_file_base_name>.safetensors(.index.json), else model.*, else the
/// only other *.safetensors file.
inline std::filesystem::path find_weights_file(const std::filesystem::path& dir, const std::string& base) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const auto& stem : {base, std::string("model")}) {
    if (stem.empty()) {
      continue;
    }
    if (fs::exists(dir / (stem + ".safetensors"), ec)) {
      return dir / (stem + ".safetensors");
    }
    if (fs::exists(dir / (stem + ".safetensors.index.json"), ec)) {
      return dir / (stem + ".safetensors.index.json");
    }
  }
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    if (name.ends_with(".safetensors") && name != dequantized_side_file) {
      found.push_back(e.path());
    }
  }
  if (found.size() != 1) {
    throw format_error(dir.string(), "", found.empty() ? "no .safetensors weights file in the directory"
                                                       : "several .safetensors files and no model_file_base_name to "
                                                         "choose between them");
  }
  return found.front();
}

template <class T>
std::vector<T> read_int_tensor(const io::checkpoint& ckpt, const io::tensor_info& t) {
  const auto b = ckpt.bytes(t.name);
  std::vector<T> out(static_cast<std::size_t>(t.numel()));
  if (t.dtype == dtype::i64) {
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::int64_t v;
      std::memcpy(&v, b.data() + i * 8, 8);
      out[i] = static_cast<T>(v);
    }
  } else {
    std::memcpy(out.data(), b.data(), out.size() * sizeof(T));
  }
  return out;
}

}  // namespace detail

/// Reads and normalizes the quantization settings of a GPTQ directory: quantize_config.json and/or
/// config.json["quantization_config"] (when both exist they must agree).
inline gptq_quantize_config read_gptq_quantize_config(const std::filesystem::path& dir, std::string* source = nullptr,
                                                      const nlohmann::json* config_json = nullptr) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::optional<gptq_quantize_config> from_file;
  std::optional<gptq_quantize_config> from_config;
  const auto qpath = dir / "quantize_config.json";
  if (fs::exists(qpath, ec)) {
    from_file = detail::parse_quantize_config(detail::read_json_file(qpath), qpath.string(), "");
  }
  nlohmann::json cj;
  if (config_json == nullptr && fs::exists(dir / "config.json", ec)) {
    cj          = detail::read_json_file(dir / "config.json");
    config_json = &cj;
  }
  if (config_json != nullptr && config_json->is_object() && config_json->contains("quantization_config")) {
    from_config = detail::parse_quantize_config(config_json->at("quantization_config"), (dir / "config.json").string(),
                                                "quantization_config.");
  }
  if (!from_file && !from_config) {
    throw format_error(dir.string(), "", "not a GPTQ checkpoint: no quantize_config.json and no \"quantization_config\" "
                                         "in config.json");
  }
  if (from_file && from_config) {
    detail::compare_quantize_configs(*from_file, *from_config, (dir / "config.json").string());
    // Fill what one file leaves out from the other.
    if (!from_file->has_sym && from_config->has_sym) {
      from_file->policy.sym = from_config->policy.sym;
      from_file->has_sym    = true;
    }
    if (!from_file->has_desc_act && from_config->has_desc_act) {
      from_file->policy.desc_act = from_config->policy.desc_act;
      from_file->has_desc_act    = true;
    }
    if (!from_file->has_format && from_config->has_format) {
      from_file->format     = from_config->format;
      from_file->has_format = true;
    }
  }
  if (source != nullptr) {
    *source = from_file && from_config ? "quantize_config.json + config.json" : from_file ? "quantize_config.json" : "config.json";
  }
  return from_file ? *from_file : *from_config;
}

/// Loads a GPTQ checkpoint directory written by AutoGPTQ, GPTQModel, transformers/optimum or qprob. Validates
/// every quantized layer against config.json (qweight (packed_length(K), N), qzeros (groups, packed_length(N)),
/// scales (groups, N) fp16, g_idx (K) within [0, groups)), the zero points against `sym`, g_idx against
/// desc_act, and every other tensor against the model layout. When quantize_config omits sym or desc_act they
/// are detected from the tensors (sym: every zero is 2^(bits-1); desc_act: some g_idx differs from i / group_size).
/// @throws format_error(file, tensor or field, problem) for anything malformed.
inline gptq_checkpoint load_gptq_checkpoint(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  gptq_checkpoint out;
  out.dir = dir;
  const auto config_path = dir / "config.json";
  out.config_json        = detail::read_json_file(config_path);
  out.config             = model::parse_config(out.config_json, config_path.string());
  out.quant              = read_gptq_quantize_config(dir, &out.quantize_config_source, &out.config_json);
  auto& p                = out.quant.policy;
  out.weights_file       = detail::find_weights_file(dir, out.quant.model_file_base_name);
  const auto ckpt        = io::checkpoint::open(out.weights_file);
  const std::string file = ckpt.label();

  // Body prefix from the embedding name, as map_weights does.
  const auto prefixes = model::name_prefixes(out.config.model_family);
  std::string prefix  = prefixes.front();
  for (const auto& pre : prefixes) {
    if (ckpt.find(model::expected_weights(out.config, pre).front().hf_name) != nullptr) {
      prefix = pre;
      break;
    }
  }
  const auto slots = model::expected_weights(out.config, prefix);

  // Presence: every expected tensor, nothing unexpected (all problems in one message).
  std::vector<std::string> missing, unexpected;
  std::set<std::string, std::less<>> used;
  const auto need = [&](const std::string& name, bool required) {
    if (ckpt.find(name) != nullptr) {
      used.insert(name);
      return true;
    }
    if (required) {
      missing.push_back(name);
    }
    return false;
  };
  for (const auto& s : slots) {
    if (s.part == model::tensor_part::weight && detail::is_quantized_role(s.role)) {
      const auto m = detail::module_name(s);
      need(m + ".qweight", true);
      need(m + ".qzeros", true);
      need(m + ".scales", true);
      need(m + ".g_idx", out.quant.has_desc_act && p.desc_act);
    } else {
      need(s.hf_name, !s.optional);
    }
  }
  for (const auto& [name, e] : ckpt.entries()) {
    if (!used.contains(name) && !model::is_ignored_buffer(name)) {
      unexpected.push_back(name);
    }
  }
  if (!missing.empty() || !unexpected.empty()) {
    const auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& x : v) {
        s += (s.empty() ? "" : ", ") + x;
      }
      return s;
    };
    std::string problem = "checkpoint does not match a GPTQ " + std::string(model::to_string(out.config.model_family)) +
                          " model (tensor prefix \"" + prefix + "\")";
    if (!missing.empty()) {
      problem += "; " + std::to_string(missing.size()) + " missing: " + list(missing);
    }
    if (!unexpected.empty()) {
      problem += "; " + std::to_string(unexpected.size()) + " unexpected: " + list(unexpected);
    }
    throw format_error(file, "tensors", problem);
  }

  const auto expect = [&](const io::tensor_info& t, std::initializer_list<dtype> dtypes, std::vector<std::int64_t> shape,
                          const std::string& why) {
    if (std::find(dtypes.begin(), dtypes.end(), t.dtype) == dtypes.end()) {
      std::string names;
      for (auto d : dtypes) {
        names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
      }
      throw format_error(file, t.name, "dtype " + std::string(dtype_name(t.dtype)) + ", expected " + names);
    }
    if (t.shape != shape) {
      throw format_error(file, t.name, "shape " + io::shape_string(t.shape) + ", expected " +
                                           io::shape_string(shape) + " (" + why + ")");
    }
  };

  bool any_nondefault_g_idx = false;
  bool all_zeros_symmetric  = true;
  const int sym_zero        = 1 << (p.bits - 1);
  for (const auto& s : slots) {
    if (!(s.part == model::tensor_part::weight && detail::is_quantized_role(s.role))) {
      continue;
    }
    const auto m       = detail::module_name(s);
    const auto n       = s.shape[0];
    const auto k       = s.shape[1];
    const auto groups  = group_count(k, p.group_size);
    const auto kw      = packed_length(k, p.bits);
    const auto nw      = packed_length(n, p.bits);
    const auto dims    = "N=" + std::to_string(n) + ", K=" + std::to_string(k) + ", bits=" + std::to_string(p.bits) +
                      ", group_size=" + std::to_string(p.gptq_group_size()) + ": ";
    const auto& qw     = ckpt.at(m + ".qweight");
    const auto& qz     = ckpt.at(m + ".qzeros");
    const auto& sc     = ckpt.at(m + ".scales");
    expect(qw, {dtype::i32, dtype::u32}, {kw, n}, dims + "rows = K*bits/32 packed words, columns = N");
    expect(qz, {dtype::i32, dtype::u32}, {groups, nw}, dims + "rows = groups, columns = N*bits/32 packed words");
    expect(sc, {dtype::f16}, {groups, n}, dims + "rows = groups, columns = N");
    gptq_tensors t;
    t.n       = n;
    t.k       = k;
    t.qweight = detail::read_int_tensor<std::int32_t>(ckpt, qw);
    t.qzeros  = detail::read_int_tensor<std::int32_t>(ckpt, qz);
    t.scales.resize(static_cast<std::size_t>(groups * n));
    std::memcpy(t.scales.data(), ckpt.bytes(sc.name).data(), t.scales.size() * sizeof(half_t));
    if (const auto* gi = ckpt.find(m + ".g_idx")) {
      expect(*gi, {dtype::i32, dtype::i64}, {k}, dims + "one group index per input column");
      t.g_idx = detail::read_int_tensor<std::int32_t>(ckpt, *gi);
      for (std::size_t c = 0; c < t.g_idx.size(); ++c) {
        if (t.g_idx[c] < 0 || t.g_idx[c] >= groups) {
          throw format_error(file, gi->name, "g_idx[" + std::to_string(c) + "] = " + std::to_string(t.g_idx[c]) +
                                                 " is outside [0, " + std::to_string(groups) + ") (K=" +
                                                 std::to_string(k) + ", group_size=" +
                                                 std::to_string(p.gptq_group_size()) + ")");
        }
      }
      const bool is_default = is_default_g_idx(t.g_idx, p.group_size);
      if (!is_default && out.quant.has_desc_act && !p.desc_act) {
        throw format_error(file, gi->name, "g_idx is not i / group_size but the config says desc_act=false (tools "
                                           "that skip g_idx for desc_act=false would compute other weights)");
      }
      any_nondefault_g_idx = any_nondefault_g_idx || !is_default;
    }
    gptq_loaded_linear layer;
    layer.name  = m;
    layer.role  = s.role;
    layer.layer = s.layer;
    try {
      layer.weight = from_gptq(t, p, out.quant.format);
    } catch (const invalid_argument& e) {
      throw format_error(file, qz.name, e.what());
    }
    for (std::size_t i = 0; i < layer.weight.zeros.size(); ++i) {
      if (layer.weight.zeros[i] != sym_zero) {
        if (out.quant.has_sym && p.sym) {
          throw format_error(file, qz.name, "sym=true but group " + std::to_string(i / static_cast<std::size_t>(n)) +
                                                ", column " + std::to_string(i % static_cast<std::size_t>(n)) +
                                                " has zero point " + std::to_string(layer.weight.zeros[i]) +
                                                " (expected " + std::to_string(sym_zero) + "; checkpoint_format " +
                                                std::string(to_string(out.quant.format)) +
                                                (out.quant.format == gptq_format::v1 ? " stores zero - 1)" : " stores the true zero)"));
        }
        all_zeros_symmetric = false;
      }
    }
    out.layers.push_back(std::move(layer));
  }
  if (!out.quant.has_desc_act) {
    p.desc_act = any_nondefault_g_idx;
  }
  if (!out.quant.has_sym) {
    p.sym = all_zeros_symmetric;
  }

  // Dense tensors and the biases of quantized layers.
  for (const auto& s : slots) {
    if (s.part == model::tensor_part::weight && detail::is_quantized_role(s.role)) {
      continue;
    }
    const auto* info = ckpt.find(s.hf_name);
    if (info == nullptr) {
      continue;  // absent optional (tied lm_head)
    }
    if (!io::detail::is_float_dtype(info->dtype)) {
      throw format_error(file, info->name, "dtype " + std::string(dtype_name(info->dtype)) + ", expected a floating type");
    }
    if (info->shape != s.shape) {
      throw format_error(file, info->name, "shape " + io::shape_string(info->shape) + ", config implies " +
                                               io::shape_string(s.shape));
    }
    if (s.part == model::tensor_part::bias && detail::is_quantized_role(s.role)) {
      const auto module = s.hf_name.substr(0, s.hf_name.size() - std::string_view(".bias").size());
      for (auto& l : out.layers) {
        if (l.name == module) {
          l.bias = ckpt.read_as<half_t>(info->name);
        }
      }
      continue;
    }
    gptq_dense_tensor d;
    d.name   = info->name;
    d.slot   = s;
    d.stored = info->dtype;
    d.shape  = info->shape;
    d.values = ckpt.read_as<float>(info->name);
    out.dense.push_back(std::move(d));
  }
  return out;
}

}  // namespace qprob::quant
