// SPDX-License-Identifier: Apache-2.0
// GPTQ checkpoints (quant/checkpoint.hpp): qzeros packing against hand-checked words and an independent
// transcription of AutoGPTQ's pack loop, qprob <-> GPTQ tensor conversion, save -> load round trips of
// RTN-quantized stories260K for several policies (act-order included), rejection of malformed checkpoints with
// the expected messages, and the atomic directory write.
#include <qprob/policy/presets.hpp>
#include <qprob/quant/checkpoint.hpp>
#include <qprob/reference/rtn.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "desc_act_rtn.hpp"
#include "io_test_util.hpp"
#include "support.hpp"

namespace fs = std::filesystem;
namespace p  = qprob::policies;
using qprob::quant::gptq_format;
using qprob::quant::runtime_policy;
using qprob::reference::quantized_weight;
using qprob::test::contains;
using qprob::test::temp_dir;

namespace {

std::vector<std::uint32_t> words_of(const std::vector<std::int32_t>& v) {
  std::vector<std::uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * 4);
  return out;
}

/// AutoGPTQ's qzeros packing loop (qlinear_cuda_old.py pack(): 10 codes, a straddling one, 10, a straddling one,
/// 10 for 3 bits; 32/bits codes per word otherwise), transcribed independently of qprob's bitstream helpers.
/// Takes the values already converted to what is stored (zero - 1 for v1); n must be a multiple of 32.
std::vector<std::uint32_t> autogptq_pack_row(const std::vector<std::uint32_t>& z, int bits) {
  std::vector<std::uint32_t> q(z.size() / 32 * static_cast<std::size_t>(bits), 0u);
  std::size_t i = 0;
  std::size_t col = 0;
  while (col < q.size()) {
    if (bits != 3) {
      for (std::size_t j = i; j < i + 32 / static_cast<std::size_t>(bits); ++j) {
        q[col] |= z[j] << (static_cast<std::size_t>(bits) * (j - i));
      }
      i += 32 / static_cast<std::size_t>(bits);
      ++col;
    } else {
      for (std::size_t j = i; j < i + 10; ++j) {
        q[col] |= z[j] << (3 * (j - i));
      }
      i += 10;
      q[col] |= z[i] << 30;
      ++col;
      q[col] |= (z[i] >> 2) & 1u;
      ++i;
      for (std::size_t j = i; j < i + 10; ++j) {
        q[col] |= z[j] << (3 * (j - i) + 1);
      }
      i += 10;
      q[col] |= z[i] << 31;
      ++col;
      q[col] |= (z[i] >> 1) & 3u;
      ++i;
      for (std::size_t j = i; j < i + 10; ++j) {
        q[col] |= z[j] << (3 * (j - i) + 2);
      }
      i += 10;
      ++col;
    }
  }
  return q;
}

std::vector<std::int32_t> pack1(const std::vector<std::uint8_t>& zeros, int bits, gptq_format f) {
  return qprob::quant::pack_qzeros(zeros, 1, static_cast<std::int64_t>(zeros.size()), bits, f);
}

void require_same(const quantized_weight& a, const quantized_weight& b, const std::string& what) {
  CAPTURE(what);
  REQUIRE(a.n == b.n);
  REQUIRE(a.k == b.k);
  CHECK(a.qweight == b.qweight);
  REQUIRE(a.scales.size() == b.scales.size());
  CHECK(std::memcmp(a.scales.data(), b.scales.data(), a.scales.size() * 2) == 0);
  CHECK(a.zeros == b.zeros);
  CHECK(a.g_idx == b.g_idx);
}

/// A random, well-formed quantized weight (random codes, scales, zeros in the range of `fmt`).
quantized_weight random_weight(std::int64_t n, std::int64_t k, const runtime_policy& rp, gptq_format fmt,
                               std::mt19937_64& rng, bool act_order) {
  using namespace qprob::quant;
  quantized_weight q;
  q.n = n;
  q.k = k;
  const auto groups = group_count(k, rp.group_size);
  q.qweight.assign(static_cast<std::size_t>(packed_length(k, rp.bits) * n), 0u);
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      put_field(q.qweight.data() + r, n, c, rp.bits, static_cast<std::uint32_t>(rng() % (1u << rp.bits)));
    }
  }
  for (std::int64_t i = 0; i < groups * n; ++i) {
    q.scales.push_back(qprob::to_half(std::ldexp(1.0 + static_cast<double>(rng() % 1024) / 1024, -int(rng() % 12))));
    const int lo = fmt == gptq_format::v1 ? 1 : 0;
    const int hi = fmt == gptq_format::v1 ? (1 << rp.bits) : (1 << rp.bits) - 1;
    q.zeros.push_back(rp.sym ? static_cast<std::uint8_t>(1 << (rp.bits - 1))
                             : static_cast<std::uint8_t>(std::min(255, lo + static_cast<int>(rng() % (hi - lo + 1)))));
  }
  if (act_order) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    q.g_idx.resize(static_cast<std::size_t>(k));
    for (std::int64_t i = 0; i < k; ++i) {
      q.g_idx[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)])] =
          static_cast<std::int32_t>(default_group_of(i, rp.group_size));
    }
  }
  return q;
}

// ---- stories260K helpers ----------------------------------------------------------------------------------------

std::optional<fs::path> stories() {
  std::string reason;
  auto path = qprob::test::shared_path("models/stories260K", &reason);
  if (!path) {
    MESSAGE("skipped: ", reason);
  }
  return path;
}

/// RTN-quantizes one (n, k) float weight with policy P in GPTQ's desc_act layout (desc_act_rtn.hpp), checking
/// that the permuted layout means the same weights: column perm[i] of the result is column i of the RTN result.
template <class P>
quantized_weight quantize_layer(const std::vector<float>& w, std::int64_t n, std::int64_t k, std::mt19937_64& rng) {
  const auto out = qprob::test::rtn_desc_act_layout<P>(w, n, k, rng);
  if constexpr (P::act_order) {
    const auto a = qprob::reference::dequantize<P, double>(out.processed);
    const auto b = qprob::reference::dequantize<P, double>(out.weight);
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t i = 0; i < k; ++i) {
        REQUIRE(a[static_cast<std::size_t>(r * k + i)] == b[static_cast<std::size_t>(r * k + out.perm[static_cast<std::size_t>(i)])]);
      }
    }
  }
  return out.weight;
}

/// Every linear layer of the model, quantized with P.
template <class P>
std::vector<qprob::quant::quantized_linear> quantize_model(const fs::path& dir, std::mt19937_64& rng) {
  const auto config = qprob::model::load_config(dir);
  const auto ckpt   = qprob::io::checkpoint::open(dir);
  const auto wmap   = qprob::model::map_weights(config, ckpt);
  std::vector<qprob::quant::quantized_linear> out;
  for (const auto& t : wmap.tensors()) {
    if (t.info == nullptr || t.slot.part != qprob::model::tensor_part::weight ||
        !qprob::quant::detail::is_quantized_role(t.slot.role)) {
      continue;
    }
    const auto w = ckpt.read_as<float>(t.info->name);
    out.push_back({qprob::quant::detail::module_name(t.slot), quantize_layer<P>(w, t.slot.shape[0], t.slot.shape[1], rng)});
  }
  return out;
}

struct raw_tensor {
  std::string name;
  qprob::dtype dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;
};

std::vector<raw_tensor> read_all(const fs::path& file) {
  const auto f = qprob::io::safetensors_file::open(file);
  std::vector<raw_tensor> out;
  for (const auto& t : f.tensors()) {
    const auto b = f.bytes(t);
    out.push_back({t.name, t.dtype, t.shape, std::vector<std::byte>(b.begin(), b.end())});
  }
  return out;
}

void write_all(const fs::path& file, const std::vector<raw_tensor>& tensors) {
  std::vector<qprob::io::tensor_to_write> w;
  for (const auto& t : tensors) {
    w.push_back({t.name, t.dtype, t.shape, std::span<const std::byte>(t.data)});
  }
  qprob::io::write_safetensors(file, w, {{{"format", "pt"}}, {}});
}

raw_tensor& tensor_named(std::vector<raw_tensor>& v, const std::string& name) {
  for (auto& t : v) {
    if (t.name == name) {
      return t;
    }
  }
  FAIL("no tensor " << name);
  return v.front();
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}
void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream out(p, std::ios::trunc);
  out << j.dump(2);
}

void copy_dir(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

/// Saves P-quantized stories260K, loads it back and requires every layer and tensor to round-trip exactly.
template <class P>
void round_trip(const fs::path& model, gptq_format fmt, std::uint64_t salt,
                const std::string& base = "model", std::int64_t shard_bytes = 0) {
  CAPTURE(qprob::policy_name<P>());
  CAPTURE(to_string(fmt));
  auto rng          = qprob::test::make_rng(salt);
  const auto layers = quantize_model<P>(model, rng);
  temp_dir tmp("gptq_rt");
  const auto dir = tmp / "out";
  qprob::quant::gptq_save_options o;
  o.policy               = runtime_policy::of<P>();
  o.format               = fmt;
  o.model_file_base_name = base;
  o.max_shard_bytes      = shard_bytes;
  o.write_dequantized    = true;
  qprob::quant::save_gptq_checkpoint(dir, model, layers, o);

  const auto ck = qprob::quant::load_gptq_checkpoint(dir);
  CHECK(ck.quant.policy == runtime_policy::of<P>());
  CHECK(ck.quant.format == fmt);
  CHECK(ck.quantize_config_source == "quantize_config.json + config.json");
  REQUIRE(ck.layers.size() == layers.size());
  for (const auto& l : layers) {
    const auto* got = ck.find_layer(l.name);
    REQUIRE(got != nullptr);
    require_same(l.weight, got->weight, l.name);
    CHECK(got->bias.empty());
  }
  // Dense tensors: the source's float32 values rounded once to fp16.
  const auto src = qprob::io::checkpoint::open(model);
  std::size_t dense = 0;
  for (const auto& [name, e] : src.entries()) {
    if (name.ends_with("_proj.weight")) {
      continue;
    }
    const auto* d = ck.find_dense(name);
    REQUIRE_MESSAGE(d != nullptr, name);
    CHECK(d->stored == qprob::dtype::f16);
    const auto want = src.read_as<qprob::half_t>(name);
    REQUIRE(want.size() == d->values.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      REQUIRE(qprob::to_double(want[i]) == static_cast<double>(d->values[i]));
    }
    ++dense;
  }
  CHECK(dense == ck.dense.size());
  // Side file: the dequantized weights equal the policy's reference dequantization.
  const auto side = qprob::io::safetensors_file::open(dir / std::string(qprob::quant::dequantized_side_file));
  for (const auto& l : layers) {
    const auto want = qprob::reference::dequantize<P, qprob::half_t>(l.weight);
    const auto got  = side.read_as<qprob::half_t>(l.name + ".weight");
    REQUIRE(want.size() == got.size());
    CHECK(std::memcmp(want.data(), got.data(), want.size() * 2) == 0);
  }
  // The configs say what they should; tokenizer files came along.
  const auto cfg = read_json(dir / "config.json");
  CHECK(cfg.at("quantization_config").at("quant_method") == "gptq");
  CHECK(cfg.at("quantization_config").at("checkpoint_format") == std::string(to_string(fmt)));
  CHECK(cfg.at("quantization_config").at("group_size") == (P::group_size == qprob::per_channel ? -1 : P::group_size));
  CHECK(cfg.at("torch_dtype") == "float16");
  CHECK(read_json(dir / "quantize_config.json") == cfg.at("quantization_config"));
  CHECK(fs::exists(dir / "tokenizer.model"));
  CHECK(fs::exists(dir / "tokenizer_config.json"));
  // Nothing but the result next to it.
  CHECK(tmp.listing() == std::vector<std::string>{"out"});
}

}  // namespace

// ---- qzeros -------------------------------------------------------------------------------------------------------

TEST_CASE("qzeros: hand-checked words for 2/3/4/8 bits, v1 stores zero - 1, v2 the zero") {
  using qprob::quant::gptq_format;
  // Symmetric zeros 2^(bits-1).
  CHECK(words_of(pack1(std::vector<std::uint8_t>(8, 8), 4, gptq_format::v1)) == std::vector<std::uint32_t>{0x77777777u});
  CHECK(words_of(pack1(std::vector<std::uint8_t>(8, 8), 4, gptq_format::v2)) == std::vector<std::uint32_t>{0x88888888u});
  CHECK(words_of(pack1(std::vector<std::uint8_t>(16, 2), 2, gptq_format::v1)) == std::vector<std::uint32_t>{0x55555555u});
  CHECK(words_of(pack1(std::vector<std::uint8_t>(16, 2), 2, gptq_format::v2)) == std::vector<std::uint32_t>{0xAAAAAAAAu});
  CHECK(words_of(pack1(std::vector<std::uint8_t>(4, 128), 8, gptq_format::v1)) == std::vector<std::uint32_t>{0x7F7F7F7Fu});
  CHECK(words_of(pack1(std::vector<std::uint8_t>(4, 128), 8, gptq_format::v2)) == std::vector<std::uint32_t>{0x80808080u});
  // 3 bits, zero 4 -> stored 3 = 0b011 in 32 fields over 3 words (fields 10 and 21 straddle).
  CHECK(words_of(pack1(std::vector<std::uint8_t>(32, 4), 3, gptq_format::v1)) ==
        std::vector<std::uint32_t>{0xDB6DB6DBu, 0xB6DB6DB6u, 0x6DB6DB6Du});
  // Field order: column 0 in the low bits.
  CHECK(words_of(pack1({1, 2, 3, 4, 5, 6, 7, 8}, 4, gptq_format::v1)) == std::vector<std::uint32_t>{0x76543210u});
  CHECK(words_of(pack1({0, 1, 2, 3, 4, 5, 6, 7}, 4, gptq_format::v2)) == std::vector<std::uint32_t>{0x76543210u});
  CHECK(words_of(pack1({1, 2, 3, 4}, 8, gptq_format::v2)) == std::vector<std::uint32_t>{0x04030201u});
  std::vector<std::uint8_t> ramp(32);
  for (int j = 0; j < 32; ++j) {
    ramp[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(j % 8);
  }
  CHECK(words_of(pack1(ramp, 3, gptq_format::v2)) == std::vector<std::uint32_t>{0x88FAC688u, 0xC688FAC6u, 0xFAC688FAu});
  // qweight runs the same bitstream down a column (stride N): the worked example of docs/gptq-format.md.
  std::vector<std::uint32_t> qw(2, 0u);  // one word row, N = 2 columns
  const std::uint32_t codes[8] = {3, 0, 15, 1, 2, 2, 9, 4};
  for (int k = 0; k < 8; ++k) {
    qprob::quant::put_field(qw.data() + 1, 2, k, 4, codes[k]);
  }
  CHECK(qw == std::vector<std::uint32_t>{0u, 0x49221F03u});
  for (int k = 0; k < 8; ++k) {
    CHECK(qprob::quant::get_field(qw.data() + 1, 2, k, 4) == codes[k]);
  }
  // Partial last block: padded with zero bits.
  CHECK(words_of(pack1({8, 8, 8}, 4, gptq_format::v1)) == std::vector<std::uint32_t>{0x00000777u});
}

TEST_CASE("qzeros: packing equals AutoGPTQ's pack loop and unpacking inverts it (2/3/4/8 bits, v1 and v2)") {
  auto rng = qprob::test::make_rng(71);
  INFO("seed " << qprob::test::run_seed());
  for (int bits : {2, 3, 4, 8}) {
    for (auto fmt : {gptq_format::v1, gptq_format::v2}) {
      CAPTURE(bits);
      CAPTURE(to_string(fmt));
      const std::int64_t groups = 3;
      for (std::int64_t n : {std::int64_t{64}, std::int64_t{96}, std::int64_t{45}}) {
        std::vector<std::uint8_t> zeros(static_cast<std::size_t>(groups * n));
        const int lo = fmt == gptq_format::v1 ? 1 : 0;
        const int hi = fmt == gptq_format::v1 ? std::min(255, 1 << bits) : (1 << bits) - 1;
        for (auto& z : zeros) {
          z = static_cast<std::uint8_t>(lo + static_cast<int>(rng() % static_cast<unsigned>(hi - lo + 1)));
        }
        const auto packed = qprob::quant::pack_qzeros(zeros, groups, n, bits, fmt);
        REQUIRE(static_cast<std::int64_t>(packed.size()) == groups * qprob::quant::packed_length(n, bits));
        CHECK(qprob::quant::unpack_qzeros(packed, groups, n, bits, fmt) == zeros);
        if (n % 32 == 0) {
          const auto words = words_of(packed);
          const auto per   = static_cast<std::size_t>(n / 32 * bits);
          for (std::int64_t g = 0; g < groups; ++g) {
            std::vector<std::uint32_t> stored(static_cast<std::size_t>(n));
            for (std::int64_t c = 0; c < n; ++c) {
              stored[static_cast<std::size_t>(c)] = zeros[static_cast<std::size_t>(g * n + c)] - (fmt == gptq_format::v1 ? 1u : 0u);
            }
            const std::vector<std::uint32_t> row(words.begin() + static_cast<std::ptrdiff_t>(g * per),
                                                 words.begin() + static_cast<std::ptrdiff_t>((g + 1) * per));
            CHECK(row == autogptq_pack_row(stored, bits));
          }
        }
      }
    }
  }
}

TEST_CASE("qzeros: values a format cannot hold are rejected") {
  auto msg = [](auto&& fn) {
    try {
      fn();
    } catch (const qprob::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("nothing thrown");
  };
  // v1 stores zero - 1: a zero of 0 (asymmetric group without negative weights) has no v1 encoding.
  auto m = msg([] { (void)pack1({8, 0, 8}, 4, gptq_format::v1); });
  CHECK(contains(m, "zero point 0 (group 0, column 1) cannot be stored in the gptq format, which holds 1 .. 16"));
  CHECK(contains(m, "save as gptq_v2"));
  m = msg([] { (void)pack1({16}, 4, gptq_format::v2); });
  CHECK(contains(m, "zero point 16 (group 0, column 0) cannot be stored in the gptq_v2 format, which holds 0 .. 15"));
  // v1 field 15 at 4 bits means 16 (AutoGPTQ adds 1): representable, and it round-trips.
  CHECK(qprob::quant::unpack_qzeros(pack1({16, 1}, 4, gptq_format::v1), 1, 2, 4, gptq_format::v1) ==
        std::vector<std::uint8_t>{16, 1});
  // ... but at 8 bits 255 + 1 does not fit qprob's uint8 zero points.
  const std::vector<std::int32_t> ff{-1};
  m = msg([&] { (void)qprob::quant::unpack_qzeros(ff, 1, 4, 8, gptq_format::v1); });
  CHECK(contains(m, "the v1 field 255 means zero point 256, which does not fit 8 bits"));
}

// ---- layer conversion ---------------------------------------------------------------------------------------------

TEST_CASE("to_gptq / from_gptq round-trip exactly, g_idx default written and read back as empty") {
  auto rng = qprob::test::make_rng(72);
  INFO("seed " << qprob::test::run_seed());
  for (const runtime_policy rp : {runtime_policy{4, 128, true, false}, runtime_policy{4, 32, false, true},
                                  runtime_policy{3, 64, false, false}, runtime_policy{2, 16, true, true},
                                  runtime_policy{8, qprob::per_channel, false, false}, runtime_policy{3, 32, true, true}}) {
    for (auto fmt : {gptq_format::v1, gptq_format::v2}) {
      CAPTURE(describe(rp));
      CAPTURE(to_string(fmt));
      for (auto [n, k] : {std::pair<std::int64_t, std::int64_t>{64, 256}, {45, 172}, {32, 96}}) {
        const auto q = random_weight(n, k, rp, fmt, rng, rp.desc_act);
        const auto t = qprob::quant::to_gptq(q, rp, fmt);
        CHECK(t.qweight.size() == q.qweight.size());
        REQUIRE(t.g_idx.size() == static_cast<std::size_t>(k));
        if (!rp.desc_act) {
          CHECK(qprob::quant::is_default_g_idx(t.g_idx, rp.group_size));
        }
        require_same(q, qprob::quant::from_gptq(t, rp, fmt), "round trip");
      }
    }
  }
}

TEST_CASE("dequantize_half equals reference::dequantize for every dispatchable policy") {
  auto rng = qprob::test::make_rng(73);
  INFO("seed " << qprob::test::run_seed());
  int count = 0;
  std::apply(
      [&](auto... policy) {
        (([&] {
           using P        = decltype(policy);
           const auto rp  = runtime_policy::of<P>();
           const auto q   = random_weight(40, 300, rp, gptq_format::v2, rng, rp.desc_act);
           const auto ref = qprob::reference::dequantize<P, qprob::half_t>(q);
           const auto got = qprob::quant::dequantize_half(q, rp);
           CAPTURE(qprob::policy_name<P>());
           CHECK(std::memcmp(ref.data(), got.data(), ref.size() * 2) == 0);
           // Dispatch finds the same policy from the runtime values.
           CHECK(qprob::quant::dispatch_policy(rp, [](auto t) { return std::string(qprob::policy_name<typename decltype(t)::type>()); }) ==
                 qprob::policy_name<P>());
           ++count;
         }()),
         ...);
      },
      qprob::quant::dispatchable_policies{});
  CHECK(count == static_cast<int>(std::tuple_size_v<qprob::quant::dispatchable_policies>));
  try {
    qprob::quant::dispatch_policy(runtime_policy{4, 256, true, false}, [](auto) {});
    FAIL("no exception");
  } catch (const qprob::invalid_argument& e) {
    CHECK(contains(e.what(), "no qprob policy for bits=4 group_size=256 sym=true desc_act=false; supported: int8_pc_sym"));
    CHECK(contains(e.what(), "int4_g128_sym_act (bits=4 group_size=128 sym=true desc_act=true)"));
  }
}

// ---- save / load round trips --------------------------------------------------------------------------------------

TEST_CASE("checkpoint: save -> load round-trips RTN-quantized stories260K bit for bit") {
  const auto model = stories();
  if (!model) {
    return;
  }
  SUBCASE("int4 g128 sym, v1") { round_trip<p::int4_g128>(*model, gptq_format::v1, 1); }
  SUBCASE("int4 g128 sym, v2") { round_trip<p::int4_g128>(*model, gptq_format::v2, 2); }
  SUBCASE("int4 g32 sym act-order, v1") { round_trip<qprob::precision<4, 32, true, true>>(*model, gptq_format::v1, 3); }
  SUBCASE("int4 g64 asym, v2") { round_trip<p::int4_g64_asym>(*model, gptq_format::v2, 4); }
  SUBCASE("int3 g128 sym, v1 (3-bit words straddle)") { round_trip<p::int3_g128>(*model, gptq_format::v1, 5); }
  SUBCASE("int2 g64 sym, v1") { round_trip<p::int2_g64>(*model, gptq_format::v1, 6); }
  SUBCASE("int8 per-channel (group_size -1), v1") { round_trip<p::int8_pc>(*model, gptq_format::v1, 7); }
  SUBCASE("AutoGPTQ file name") { round_trip<p::int4_g128>(*model, gptq_format::v1, 8, "gptq_model-4bit-128g"); }
  SUBCASE("sharded") { round_trip<p::int4_g128>(*model, gptq_format::v1, 9, "model", 20000); }
}

TEST_CASE("checkpoint: asymmetric v1 round-trips when no zero is 0 and is refused otherwise") {
  const auto model = stories();
  if (!model) {
    return;
  }
  auto rng    = qprob::test::make_rng(10);
  auto layers = quantize_model<p::int4_g64_asym>(*model, rng);
  bool any_zero = false;
  for (const auto& l : layers) {
    any_zero = any_zero || std::find(l.weight.zeros.begin(), l.weight.zeros.end(), 0) != l.weight.zeros.end();
  }
  if (!any_zero) {
    round_trip<p::int4_g64_asym>(*model, gptq_format::v1, 10);
  }
  // Force a zero of 0 into one group: v1 cannot store it.
  layers.front().weight.zeros.front() = 0;
  temp_dir tmp("gptq_asym");
  qprob::quant::gptq_save_options o;
  o.policy = runtime_policy::of<p::int4_g64_asym>();
  try {
    qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o);
    FAIL("no exception");
  } catch (const qprob::invalid_argument& e) {
    CHECK(contains(e.what(), "zero point 0 (group 0, column 0) cannot be stored in the gptq format"));
  }
  CHECK(tmp.listing().empty());
}

TEST_CASE("checkpoint: on-disk tensors are AutoGPTQ's (names, dtypes, shapes, 0x77777777 qzeros, g_idx)") {
  const auto model = stories();
  if (!model) {
    return;
  }
  auto rng = qprob::test::make_rng(11);
  const auto layers = quantize_model<p::int4_g128>(*model, rng);
  temp_dir tmp("gptq_disk");
  qprob::quant::gptq_save_options o;
  o.policy = runtime_policy::of<p::int4_g128>();
  qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o);
  const auto f = qprob::io::safetensors_file::open(tmp / "out" / "model.safetensors");
  CHECK(f.metadata().at("format") == "pt");
  const std::string m = "model.layers.0.self_attn.q_proj";
  CHECK(f.at(m + ".qweight").dtype == qprob::dtype::i32);
  CHECK(f.at(m + ".qweight").shape == std::vector<std::int64_t>{8, 64});   // 64 * 4 / 32 rows, N = 64
  CHECK(f.at(m + ".qzeros").shape == std::vector<std::int64_t>{1, 8});     // 1 group, 64 * 4 / 32
  CHECK(f.at(m + ".scales").shape == std::vector<std::int64_t>{1, 64});
  CHECK(f.at(m + ".scales").dtype == qprob::dtype::f16);
  CHECK(f.at(m + ".g_idx").shape == std::vector<std::int64_t>{64});
  const auto qz = f.bytes(m + ".qzeros");
  for (std::size_t i = 0; i < qz.size(); i += 4) {
    std::uint32_t w;
    std::memcpy(&w, qz.data() + i, 4);
    REQUIRE(w == 0x77777777u);
  }
  // down_proj: K = 172 (not a multiple of 32): qweight padded to whole words, 2 groups, g_idx = i / 128.
  const std::string d = "model.layers.4.mlp.down_proj";
  CHECK(f.at(d + ".qweight").shape == std::vector<std::int64_t>{22, 64});
  CHECK(f.at(d + ".scales").shape == std::vector<std::int64_t>{2, 64});
  const auto gi = f.bytes(d + ".g_idx");
  std::vector<std::int32_t> g(172);
  std::memcpy(g.data(), gi.data(), gi.size());
  CHECK(g[0] == 0);
  CHECK(g[127] == 0);
  CHECK(g[128] == 1);
  CHECK(g[171] == 1);
  CHECK(f.find("model.embed_tokens.weight")->dtype == qprob::dtype::f16);
  CHECK(f.find(m + ".weight") == nullptr);
  // AutoGPTQ's kernels need multiples of 32: the option refuses the 172-wide layers.
  o.require_multiple_of_32 = true;
  try {
    qprob::quant::save_gptq_checkpoint(tmp / "strict", *model, layers, o);
    FAIL("no exception");
  } catch (const qprob::invalid_argument& e) {
    CHECK(contains(e.what(), "is (n=172, k=64); AutoGPTQ/GPTQModel kernels need both to be multiples of 32"));
  }
}

TEST_CASE("checkpoint: save rejects missing, unknown and misshapen layers") {
  const auto model = stories();
  if (!model) {
    return;
  }
  auto rng = qprob::test::make_rng(12);
  auto layers = quantize_model<p::int4_g128>(*model, rng);
  qprob::quant::gptq_save_options o;
  o.policy = runtime_policy::of<p::int4_g128>();
  temp_dir tmp("gptq_bad_save");
  const auto expect = [&](std::vector<qprob::quant::quantized_linear> ls, const std::string& part) {
    try {
      qprob::quant::save_gptq_checkpoint(tmp / "out", *model, ls, o);
      FAIL("no exception");
    } catch (const qprob::invalid_argument& e) {
      CHECK_MESSAGE(contains(e.what(), part), std::string(e.what()));  // a bare char* would print as a pointer
    }
    CHECK(tmp.listing().empty());
  };
  auto fewer = layers;
  fewer.erase(fewer.begin() + 2);
  expect(fewer, "1 linear layers of the source have no quantized weight: model.layers.0.self_attn.v_proj");
  auto extra = layers;
  extra.push_back(extra.front());
  extra.back().name = "model.layers.9.self_attn.q_proj";
  expect(extra, "layer model.layers.9.self_attn.q_proj is not a linear layer of the llama source model");
  auto swapped = layers;
  std::swap(swapped[0].weight, swapped[1].weight);  // q (64x64) <-> k (32x64)
  expect(swapped, "layer model.layers.0.self_attn.q_proj is (n=32, k=64), the source weight is [64, 64]");
  o.policy.bits = 3;
  expect(layers, "qweight has");
}

// ---- malformed checkpoints ----------------------------------------------------------------------------------------

TEST_CASE("checkpoint: loading rejects malformed checkpoints with messages naming file, tensor and problem") {
  const auto model = stories();
  if (!model) {
    return;
  }
  auto rng = qprob::test::make_rng(13);
  const auto layers = quantize_model<p::int4_g128>(*model, rng);
  temp_dir tmp("gptq_bad");
  const auto good = tmp / "good";
  qprob::quant::gptq_save_options o;
  o.policy = runtime_policy::of<p::int4_g128>();
  qprob::quant::save_gptq_checkpoint(good, *model, layers, o);
  REQUIRE_NOTHROW((void)qprob::quant::load_gptq_checkpoint(good));
  const std::string m = "model.layers.1.self_attn.q_proj";
  int case_id = 0;

  // Copies the good checkpoint, lets `mutate` change tensors / configs, and returns the load error.
  const auto load_error = [&](auto&& mutate_tensors, auto&& mutate_configs) {
    const auto dir = tmp / ("case" + std::to_string(case_id++));
    copy_dir(good, dir);
    auto tensors = read_all(dir / "model.safetensors");
    mutate_tensors(tensors);
    write_all(dir / "model.safetensors", tensors);
    auto qc  = read_json(dir / "quantize_config.json");
    auto cfg = read_json(dir / "config.json");
    mutate_configs(qc, cfg);
    write_json(dir / "quantize_config.json", qc);
    write_json(dir / "config.json", cfg);
    return qprob::test::format_error_message([&] { (void)qprob::quant::load_gptq_checkpoint(dir); });
  };
  const auto no_tensor_change = [](std::vector<raw_tensor>&) {};
  const auto no_config_change = [](nlohmann::json&, nlohmann::json&) {};
  const auto both = [](auto&& f) { return [f](nlohmann::json& qc, nlohmann::json& cfg) { f(qc); f(cfg.at("quantization_config")); }; };

  SUBCASE("wrong qweight rows") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          auto& qw = tensor_named(t, m + ".qweight");
          qw.shape = {7, 64};
          qw.data.resize(7 * 64 * 4);
        },
        no_config_change);
    CHECK(contains(e, "model.safetensors: " + m + ".qweight: shape [7, 64], expected [8, 64] (N=64, K=64, bits=4, "
                      "group_size=128: rows = K*bits/32 packed words, columns = N)"));
  }
  SUBCASE("wrong qzeros columns") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          auto& qz = tensor_named(t, m + ".qzeros");
          qz.shape = {1, 16};
          qz.data.resize(16 * 4);
        },
        no_config_change);
    CHECK(contains(e, m + ".qzeros: shape [1, 16], expected [1, 8]"));
    CHECK(contains(e, "columns = N*bits/32 packed words"));
  }
  SUBCASE("missing scales") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          t.erase(std::find_if(t.begin(), t.end(), [&](const raw_tensor& x) { return x.name == m + ".scales"; }));
        },
        no_config_change);
    CHECK(contains(e, "model.safetensors: tensors: checkpoint does not match a GPTQ llama model (tensor prefix "
                      "\"model.\"); 1 missing: " + m + ".scales"));
  }
  SUBCASE("scales stored as F32") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          auto& s = tensor_named(t, m + ".scales");
          s.dtype = qprob::dtype::f32;
          s.data.resize(s.data.size() * 2);
        },
        no_config_change);
    CHECK(contains(e, m + ".scales: dtype F32, expected F16"));
  }
  SUBCASE("an unquantized .weight next to the quantized tensors") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          auto extra = tensor_named(t, "model.norm.weight");
          extra.name = m + ".weight";
          t.push_back(extra);
        },
        no_config_change);
    CHECK(contains(e, "1 unexpected: " + m + ".weight"));
  }
  SUBCASE("g_idx out of range") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          auto& g = tensor_named(t, "model.layers.2.mlp.down_proj.g_idx");
          const std::int32_t bad = 2;  // K = 172, group 128: groups 0 and 1
          std::memcpy(g.data.data() + 5 * 4, &bad, 4);
        },
        both([](nlohmann::json& q) { q["desc_act"] = true; }));
    CHECK(contains(e, "model.layers.2.mlp.down_proj.g_idx: g_idx[5] = 2 is outside [0, 2) (K=172, group_size=128)"));
  }
  SUBCASE("act-order g_idx while the config says desc_act=false") {
    const auto e = load_error(
        [&](std::vector<raw_tensor>& t) {
          auto& g = tensor_named(t, "model.layers.2.mlp.down_proj.g_idx");
          const std::int32_t one = 1;
          std::memcpy(g.data.data(), &one, 4);
        },
        no_config_change);
    CHECK(contains(e, "model.layers.2.mlp.down_proj.g_idx: g_idx is not i / group_size but the config says desc_act=false"));
  }
  SUBCASE("unknown checkpoint_format") {
    const auto e = load_error(no_tensor_change, both([](nlohmann::json& q) { q["checkpoint_format"] = "marlin"; }));
    CHECK(contains(e, "quantize_config.json: checkpoint_format: unknown checkpoint_format \"marlin\" (qprob reads "
                      "\"gptq\""));
  }
  SUBCASE("unsupported bits") {
    const auto e = load_error(no_tensor_change, both([](nlohmann::json& q) { q["bits"] = 5; }));
    CHECK(contains(e, "quantize_config.json: bits: unsupported bits 5 (GPTQ checkpoints use 2, 3, 4 or 8)"));
  }
  SUBCASE("unsupported group_size") {
    const auto e = load_error(no_tensor_change, both([](nlohmann::json& q) { q["group_size"] = 100; }));
    CHECK(contains(e, "group_size: unsupported group_size 100"));
  }
  SUBCASE("quantize_config.json and config.json disagree") {
    const auto e = load_error(no_tensor_change, [](nlohmann::json&, nlohmann::json& cfg) {
      cfg["quantization_config"]["bits"] = 3;
    });
    CHECK(contains(e, "config.json: quantization_config.bits: 3 disagrees with quantize_config.json (4)"));
  }
  SUBCASE("desc_act disagrees") {
    const auto e = load_error(no_tensor_change, [](nlohmann::json&, nlohmann::json& cfg) {
      cfg["quantization_config"]["desc_act"] = true;
    });
    CHECK(contains(e, "quantization_config.desc_act: true disagrees with quantize_config.json (false)"));
  }
  SUBCASE("v1 data labelled gptq_v2: symmetric zeros read as 7") {
    const auto e = load_error(no_tensor_change, both([](nlohmann::json& q) { q["checkpoint_format"] = "gptq_v2"; }));
    CHECK(contains(e, ".qzeros: sym=true but group 0, column 0 has zero point 7 (expected 8; checkpoint_format "
                      "gptq_v2 stores the true zero)"));
  }
  SUBCASE("quant_method awq") {
    const auto e = load_error(no_tensor_change, both([](nlohmann::json& q) { q["quant_method"] = "awq"; }));
    CHECK(contains(e, "quant_method: unsupported quant_method \"awq\""));
  }
  SUBCASE("no quantization settings at all") {
    const auto dir = tmp / "plain";
    copy_dir(good, dir);
    fs::remove(dir / "quantize_config.json");
    auto cfg = read_json(dir / "config.json");
    cfg.erase("quantization_config");
    write_json(dir / "config.json", cfg);
    const auto e = qprob::test::format_error_message([&] { (void)qprob::quant::load_gptq_checkpoint(dir); });
    CHECK(contains(e, "not a GPTQ checkpoint: no quantize_config.json and no \"quantization_config\" in config.json"));
  }
}

TEST_CASE("checkpoint: only config.json's quantization_config, sym and desc_act detected from the tensors") {
  const auto model = stories();
  if (!model) {
    return;
  }
  auto rng = qprob::test::make_rng(14);
  const auto layers = quantize_model<qprob::precision<4, 32, true, true>>(*model, rng);
  temp_dir tmp("gptq_detect");
  qprob::quant::gptq_save_options o;
  o.policy = runtime_policy{4, 32, true, true};
  qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o);
  fs::remove(tmp / "out" / "quantize_config.json");
  auto cfg = read_json(tmp / "out" / "config.json");
  cfg["quantization_config"].erase("sym");
  cfg["quantization_config"].erase("desc_act");
  write_json(tmp / "out" / "config.json", cfg);
  const auto ck = qprob::quant::load_gptq_checkpoint(tmp / "out");
  CHECK(ck.quantize_config_source == "config.json");
  CHECK_FALSE(ck.quant.has_desc_act);
  CHECK(ck.quant.policy == runtime_policy{4, 32, true, true});
  for (const auto& l : layers) {
    require_same(l.weight, ck.find_layer(l.name)->weight, l.name);
  }
}

// ---- atomic write -------------------------------------------------------------------------------------------------

TEST_CASE("checkpoint: a failure at any stage leaves nothing behind; an existing directory survives") {
  const auto model = stories();
  if (!model) {
    return;
  }
  auto rng = qprob::test::make_rng(15);
  const auto layers = quantize_model<p::int4_g128>(*model, rng);
  temp_dir tmp("gptq_atomic");
  for (const char* fail_at : {"staged", "config", "weights", "tokenizer", "complete"}) {
    CAPTURE(fail_at);
    qprob::quant::gptq_save_options o;
    o.policy   = runtime_policy::of<p::int4_g128>();
    o.on_stage = [&](std::string_view s) {
      if (s == fail_at) {
        throw std::runtime_error("injected failure");
      }
    };
    CHECK_THROWS_WITH(qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o), "injected failure");
    CHECK(tmp.listing().empty());
  }
  // An existing checkpoint is refused without overwrite, and kept intact when an overwrite fails.
  qprob::quant::gptq_save_options o;
  o.policy = runtime_policy::of<p::int4_g128>();
  qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o);
  const auto before = read_all(tmp / "out" / "model.safetensors");
  CHECK_THROWS_AS(qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o), qprob::invalid_argument);
  o.overwrite = true;
  o.format    = gptq_format::v2;
  o.on_stage  = [](std::string_view s) {
    if (s == "complete") {
      throw std::runtime_error("injected failure");
    }
  };
  CHECK_THROWS(qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o));
  CHECK(tmp.listing() == std::vector<std::string>{"out"});
  CHECK(qprob::quant::load_gptq_checkpoint(tmp / "out").quant.format == gptq_format::v1);
  // A successful overwrite replaces it.
  o.on_stage = nullptr;
  qprob::quant::save_gptq_checkpoint(tmp / "out", *model, layers, o);
  CHECK(tmp.listing() == std::vector<std::string>{"out"});
  CHECK(qprob::quant::load_gptq_checkpoint(tmp / "out").quant.format == gptq_format::v2);
  (void)before;
}
