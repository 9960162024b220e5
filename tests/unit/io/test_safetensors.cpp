// SPDX-License-Identifier: Apache-2.0
// safetensors reader and writer: round trips of every dtype, real checkpoints, one test per malformed input
// (each checks the message names the file and the problem), a bounded header fuzz, and writer atomicity.
#include <qprob/io/safetensors.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "support.hpp"

namespace io = qprob::io;
using qprob::dtype;
using qprob::test::contains;
using qprob::test::format_error_message;
using qprob::test::raw_safetensors;
using qprob::test::temp_dir;
using qprob::test::write_bytes;

namespace {

constexpr dtype all_dtypes[] = {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64, dtype::i32,
                                dtype::u32, dtype::i16, dtype::i8,  dtype::u8,   dtype::boolean};

struct owned_tensor {
  std::string name;
  dtype type;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;
};

owned_tensor random_tensor(std::mt19937_64& rng, const std::string& name, dtype t, std::vector<std::int64_t> shape) {
  owned_tensor o{name, t, std::move(shape), {}};
  std::int64_t n = 1;
  for (auto d : o.shape) {
    n *= d;
  }
  o.bytes.resize(static_cast<std::size_t>(n * qprob::dtype_size(t)));
  for (auto& b : o.bytes) {
    b = static_cast<std::byte>(rng() & 0xff);
  }
  if (t == dtype::boolean) {
    for (auto& b : o.bytes) {
      b = static_cast<std::byte>(static_cast<unsigned>(b) & 1u);  // safetensors BOOL is one byte, 0 or 1
    }
  }
  return o;
}

std::vector<io::tensor_to_write> as_writes(const std::vector<owned_tensor>& ts) {
  std::vector<io::tensor_to_write> out;
  for (const auto& t : ts) {
    out.push_back({t.name, t.type, t.shape, std::span<const std::byte>(t.bytes)});
  }
  return out;
}

/// Writes a file whose header is `header` (JSON text) followed by `data` zero bytes; returns its path.
std::filesystem::path write_raw(const temp_dir& dir, const std::string& header, std::size_t data = 0) {
  const auto p = dir / "bad.safetensors";
  write_bytes(p, raw_safetensors(header, data));
  return p;
}

/// Opens a malformed file and requires a format_error mentioning the file name and every `parts`.
void expect_malformed(const std::filesystem::path& p, std::initializer_list<std::string> parts) {
  const auto msg = format_error_message([&] { (void)io::safetensors_file::open(p); });
  INFO("message: " << msg);
  CHECK(contains(msg, p.string()));
  for (const auto& part : parts) {
    CHECK(contains(msg, part));
  }
}

}  // namespace

// ---- round trips ----------------------------------------------------------------------------------------

TEST_CASE("round trip of random tensors of every dtype, including zero-size and odd shapes") {
  const auto seed = qprob::test::run_seed();
  INFO("seed " << seed);
  auto rng = qprob::test::make_rng(0x5afe);
  std::vector<owned_tensor> ts;
  const std::vector<std::vector<std::int64_t>> shapes = {{}, {1}, {7}, {3, 5}, {0}, {2, 0, 3}, {1, 1, 1, 13}, {5, 3, 1}};
  int k = 0;
  for (dtype t : all_dtypes) {
    for (const auto& s : shapes) {
      ts.push_back(random_tensor(rng, "t." + std::string(qprob::dtype_name(t)) + "." + std::to_string(k++), t, s));
    }
  }
  temp_dir dir("st_roundtrip");
  const auto path = dir / "all.safetensors";
  io::write_options opt;
  opt.metadata = {{"format", "pt"}, {"note", "caf\xc3\xa9"}};
  io::write_safetensors(path, as_writes(ts), opt);

  const auto f = io::safetensors_file::open(path);
  CHECK(f.metadata() == opt.metadata);
  REQUIRE(f.tensors().size() == ts.size());
  CHECK(f.header().data_offset % io::data_alignment == 0);
  for (const auto& t : ts) {
    CAPTURE(t.name);
    const auto& info = f.at(t.name);
    CHECK(info.dtype == t.type);
    CHECK(info.shape == t.shape);
    const auto b = f.bytes(info);
    REQUIRE(b.size() == t.bytes.size());
    CHECK(std::memcmp(b.data(), t.bytes.data(), b.size()) == 0);
    // The writer's order (element size descending) keeps every tensor aligned to its element size.
    CHECK((f.header().data_offset + info.begin) % qprob::dtype_size(t.type) == 0);
  }
  // Keys are sorted and the header is padded with spaces to 8 bytes.
  std::ifstream in(path, std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), {});
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  CHECK((8 + n) % 8 == 0);
  const auto header = raw.substr(8, n);
  const auto parsed = nlohmann::json::parse(header);
  std::string prev;
  for (const auto& [key, value] : parsed.items()) {
    CHECK(prev < key);
    prev = key;
  }
  CHECK(header.find_last_not_of(' ') == header.find_last_of('}'));
}

TEST_CASE("zero-copy views and exact conversions between f32, f16, bf16 and f64") {
  // Values chosen so the expected conversions are known exactly: 1 + 2^-11 is a tie in binary16 (rounds to
  // even: 1.0), 1 + 3*2^-11 rounds up, 65520 overflows binary16 to infinity, 2^-24 is the smallest subnormal.
  const std::vector<float> values = {1.0f, -2.5f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65520.0f, 0x1p-24f, 0.0f, -0.0f};
  std::vector<std::byte> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  temp_dir dir("st_convert");
  io::write_safetensors(dir / "f.safetensors",
                        {{"x", dtype::f32, {static_cast<std::int64_t>(values.size())}, std::span<const std::byte>(bytes)}});
  const auto f = io::safetensors_file::open(dir / "f.safetensors");

  const auto view = f.view<float>("x");
  REQUIRE(view.size() == values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    CHECK(std::memcmp(&view[i], &values[i], 4) == 0);
  }
  const auto d = f.read_as<double>("x");
  const auto h = f.read_as<qprob::half_t>("x");
  const auto b = f.read_as<qprob::bfloat16_t>("x");
  for (std::size_t i = 0; i < values.size(); ++i) {
    CHECK(d[i] == static_cast<double>(values[i]));
    CHECK(h[i] == qprob::to_half(values[i]));
    CHECK(b[i] == qprob::to_bfloat16(values[i]));
  }
  CHECK(h[2].bits == 0x3c00);  // tie to even
  CHECK(h[3].bits == 0x3c02);
  CHECK(h[4].bits == 0x7c00);  // +inf
  CHECK(h[5].bits == 0x0001);
  CHECK_THROWS_AS((void)f.view<double>("x"), qprob::invalid_argument);

  // f16 -> f32 -> f16 is the identity on every finite binary16 value.
  std::vector<qprob::half_t> halves;
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7c00) != 0x7c00) {
      halves.push_back({static_cast<std::uint16_t>(bits)});
    }
  }
  std::vector<std::byte> hb(halves.size() * 2);
  std::memcpy(hb.data(), halves.data(), hb.size());
  io::write_safetensors(dir / "h.safetensors",
                        {{"h", dtype::f16, {static_cast<std::int64_t>(halves.size())}, std::span<const std::byte>(hb)}});
  const auto fh  = io::safetensors_file::open(dir / "h.safetensors");
  const auto f32 = fh.read_as<float>("h");
  const auto f64 = fh.read_as<double>("h");
  for (std::size_t i = 0; i < halves.size(); ++i) {
    REQUIRE(qprob::to_half(f32[i]) == halves[i]);
    REQUIRE(static_cast<double>(f32[i]) == f64[i]);
  }
  // Integer tensors do not convert to floating types.
  std::vector<std::byte> ib(8);
  io::write_safetensors(dir / "i.safetensors", {{"i", dtype::i32, {2}, std::span<const std::byte>(ib)}});
  CHECK_THROWS_AS((void)io::safetensors_file::open(dir / "i.safetensors").read_as<float>("i"), qprob::invalid_argument);
}

TEST_CASE("sharded write and read back through model.safetensors.index.json") {
  auto rng = qprob::test::make_rng(0x5a4d);
  std::vector<owned_tensor> ts;
  for (int i = 0; i < 9; ++i) {
    ts.push_back(random_tensor(rng, "layer." + std::to_string(i) + ".w", i % 2 ? dtype::f16 : dtype::f32, {3, 4 + i}));
  }
  temp_dir dir("st_sharded");
  io::write_sharded_safetensors(dir.path(), as_writes(ts), /*max_shard_bytes=*/120);
  const auto ckpt = io::checkpoint::open(dir.path());
  CHECK(ckpt.shards().size() > 2);
  REQUIRE(ckpt.size() == ts.size());
  for (const auto& t : ts) {
    const auto b = ckpt.bytes(t.name);
    REQUIRE(b.size() == t.bytes.size());
    CHECK(std::memcmp(b.data(), t.bytes.data(), b.size()) == 0);
  }
  const auto index = nlohmann::json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  std::int64_t total = 0;
  for (const auto& t : ts) {
    total += static_cast<std::int64_t>(t.bytes.size());
  }
  CHECK(index["metadata"]["total_size"].get<std::int64_t>() == total);
  for (const auto& name : dir.listing()) {
    CHECK(name.find(".tmp.") == std::string::npos);
    CHECK(name.find(".staged.") == std::string::npos);
  }
}

// ---- real checkpoints -----------------------------------------------------------------------------------

TEST_CASE("real models in shared/models have the tensors their config.json implies") {
  for (const std::string model : {"stories260K", "babyllama-tok105", "babyllama-tok361"}) {
    CAPTURE(model);
    std::string reason;
    const auto dir = qprob::test::shared_path("models/" + model, &reason);
    if (!dir) {
      MESSAGE(reason);
      continue;
    }
    const auto cfg = nlohmann::json::parse(std::ifstream(*dir / "config.json"));
    const auto f   = io::safetensors_file::open(*dir / "model.safetensors");
    const std::int64_t hidden = cfg["hidden_size"], layers = cfg["num_hidden_layers"], heads = cfg["num_attention_heads"],
                       kv = cfg["num_key_value_heads"], inter = cfg["intermediate_size"], vocab = cfg["vocab_size"];
    const bool tied = cfg["tie_word_embeddings"];
    // embed + final norm + 9 per layer (+ lm_head when untied)
    CHECK(static_cast<std::int64_t>(f.tensors().size()) == 2 + 9 * layers + (tied ? 0 : 1));
    const auto hd = hidden / heads;
    CHECK(f.at("model.embed_tokens.weight").shape == std::vector<std::int64_t>{vocab, hidden});
    CHECK(f.at("model.norm.weight").shape == std::vector<std::int64_t>{hidden});
    std::int64_t params = 0;
    for (const auto& t : f.tensors()) {
      CHECK(t.dtype == dtype::f32);
      params += t.numel();
    }
    for (std::int64_t l = 0; l < layers; ++l) {
      const auto p = "model.layers." + std::to_string(l) + ".";
      CHECK(f.at(p + "self_attn.q_proj.weight").shape == std::vector<std::int64_t>{heads * hd, hidden});
      CHECK(f.at(p + "self_attn.k_proj.weight").shape == std::vector<std::int64_t>{kv * hd, hidden});
      CHECK(f.at(p + "self_attn.v_proj.weight").shape == std::vector<std::int64_t>{kv * hd, hidden});
      CHECK(f.at(p + "self_attn.o_proj.weight").shape == std::vector<std::int64_t>{hidden, heads * hd});
      CHECK(f.at(p + "mlp.gate_proj.weight").shape == std::vector<std::int64_t>{inter, hidden});
      CHECK(f.at(p + "mlp.up_proj.weight").shape == std::vector<std::int64_t>{inter, hidden});
      CHECK(f.at(p + "mlp.down_proj.weight").shape == std::vector<std::int64_t>{hidden, inter});
    }
    if (model == "stories260K") {
      CHECK(params == 260032);  // shared/README.md
    }
    // Data is finite float32 and not all zero.
    const auto w = f.view<float>("model.embed_tokens.weight");
    bool nonzero = false;
    for (float v : w) {
      REQUIRE(std::isfinite(v));
      nonzero = nonzero || v != 0.0f;
    }
    CHECK(nonzero);
  }
}

// ---- malformed files: one case each ---------------------------------------------------------------------

TEST_CASE("malformed: file shorter than the 8-byte length") {
  temp_dir dir("st_bad");
  const auto p = dir / "short.safetensors";
  write_bytes(p, std::string("\x05\x00\x00", 3));
  expect_malformed(p, {"truncated", "3 bytes"});
}

TEST_CASE("malformed: empty file") {
  temp_dir dir("st_bad");
  const auto p = dir / "empty.safetensors";
  write_bytes(p, "");
  expect_malformed(p, {"truncated", "0 bytes"});
}

TEST_CASE("malformed: header length larger than the file") {
  temp_dir dir("st_bad");
  const auto p = dir / "bad.safetensors";
  write_bytes(p, qprob::test::le64(100) + "{}");
  expect_malformed(p, {"header length 100 exceeds the file"});
}

TEST_CASE("malformed: header length huge") {
  temp_dir dir("st_bad");
  const auto p = dir / "bad.safetensors";
  write_bytes(p, qprob::test::le64(0xffffffffffffff00ull) + "{}");
  expect_malformed(p, {"exceeds the limit"});
}

TEST_CASE("malformed: invalid JSON") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"a": {"dtype": "F32", )"), {"header", "malformed JSON"});
}

TEST_CASE("malformed: header is not a JSON object") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"([1, 2, 3])"), {"header must be a JSON object", "array"});
}

TEST_CASE("malformed: tensor entry is not an object") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": 5})"), {"w: tensor entry must be a JSON object"});
}

TEST_CASE("malformed: missing dtype") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8), {"w: missing \"dtype\""});
}

TEST_CASE("malformed: missing shape and missing data_offsets") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8), {"w: missing \"shape\""});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2]}})", 8), {"w: missing \"data_offsets\""});
}

TEST_CASE("malformed: wrong JSON types for dtype, shape and data_offsets") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", 8),
                   {"w: \"dtype\" must be a string"});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", 8),
                   {"w: \"shape\" must be an array"});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8),
                   {"w: shape entries must be non-negative integers"});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [true], "data_offsets": [0, 8]}})", 8),
                   {"w: shape entries must be non-negative integers"});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})", 8),
                   {"w: \"data_offsets\" must be an array [begin, end]"});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8]}})", 8),
                   {"w: \"data_offsets\" must be two non-negative integers"});
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}})", 8),
                   {"w: unexpected key \"x\""});
}

TEST_CASE("malformed: unknown dtype") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F8_E9", "shape": [2], "data_offsets": [0, 2]}})", 2),
                   {"w: unknown dtype \"F8_E9\""});
}

TEST_CASE("malformed: negative dimension") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}})", 8),
                   {"w: negative dimension -1"});
}

TEST_CASE("malformed: huge shape whose element count overflows") {
  temp_dir dir("st_bad");
  expect_malformed(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", 8),
      {"w: shape [4294967296,4294967296] has more elements than fit in int64"});
  // The element count fits but the byte count does not.
  expect_malformed(
      write_raw(dir, R"({"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8]}})", 8),
      {"w: shape", "needs more bytes than fit in int64"});
  expect_malformed(
      write_raw(dir, R"({"w": {"dtype": "F64", "shape": [18446744073709551615], "data_offsets": [0, 8]}})", 8),
      {"w: dimension 18446744073709551615", "overflows int64"});
}

TEST_CASE("malformed: data offsets outside the data section") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
                   {"w: data_offsets [0,16] lie outside the data section of 8 bytes"});
}

TEST_CASE("malformed: begin greater than end") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8),
                   {"w: data_offsets begin 8 > end 4"});
}

TEST_CASE("malformed: shape and byte range sizes differ") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"w": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}})", 8),
                   {"w: size mismatch", "is 6 bytes", "span 8"});
}

TEST_CASE("malformed: overlapping byte ranges") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir,
                             R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                             12),
                   {"b: byte range [4, 12) overlaps tensor a [0, 8)"});
}

TEST_CASE("malformed: duplicate tensor names") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir,
                             R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                 "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                             8),
                   {"w: duplicate key in the header"});
}

TEST_CASE("malformed: duplicate key inside a tensor entry") {
  temp_dir dir("st_bad");
  expect_malformed(
      write_raw(dir, R"({"w": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})", 4),
      {"dtype: duplicate key in the header"});
}

TEST_CASE("malformed: tensor name that is not UTF-8") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, "{\"layer\xff\xfe\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4),
                   {"invalid UTF-8 at byte 7", "layer\\xff", "must be UTF-8"});
  // Overlong encoding of '/' and an encoded surrogate are not UTF-8 either.
  expect_malformed(write_raw(dir, "{\"a\xc0\xaf\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4),
                   {"invalid UTF-8 at byte 3"});
  expect_malformed(write_raw(dir, "{\"a\xed\xa0\x80\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4),
                   {"invalid UTF-8 at byte 3"});
  // A lone surrogate escape is rejected by the JSON parser.
  expect_malformed(write_raw(dir, R"({"a\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 4),
                   {"malformed JSON", "surrogate"});
}

TEST_CASE("valid: UTF-8 names, escapes and a space-padded header are accepted") {
  temp_dir dir("st_ok");
  const auto p = write_raw(
      dir, "{\"caf\xc3\xa9.\\u00e9\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [0, 4]}}      ", 4);
  const auto f = io::safetensors_file::open(p);
  REQUIRE(f.tensors().size() == 1);
  CHECK(f.tensors()[0].name == "caf\xc3\xa9.\xc3\xa9");
}

TEST_CASE("malformed: __metadata__ must map strings to strings") {
  temp_dir dir("st_bad");
  expect_malformed(write_raw(dir, R"({"__metadata__": {"format": 1}})"), {"__metadata__: value of \"format\" must be a string"});
  expect_malformed(write_raw(dir, R"({"__metadata__": ["pt"]})"), {"__metadata__: must be an object"});
  expect_malformed(write_raw(dir, R"({"__metadata__": {"a": {"b": "c"}}})"), {"__metadata__: value of \"a\""});
}

TEST_CASE("malformed: sharded index pointing to a missing shard file") {
  temp_dir dir("st_bad_index");
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors"}})");
  const auto msg = format_error_message([&] { (void)io::checkpoint::open(dir.path()); });
  INFO(msg);
  CHECK(contains(msg, "model.safetensors.index.json"));
  CHECK(contains(msg, "weight_map.w: shard file"));
  CHECK(contains(msg, "model-00001-of-00002.safetensors does not exist"));
}

TEST_CASE("malformed: sharded index listing a tensor absent from its shard") {
  temp_dir dir("st_bad_index");
  std::vector<std::byte> b(4);
  io::write_safetensors(dir / "s1.safetensors", {{"a", dtype::f32, {1}, std::span<const std::byte>(b)}});
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  const auto msg = format_error_message([&] { (void)io::checkpoint::open(dir.path()); });
  INFO(msg);
  CHECK(contains(msg, "model.safetensors.index.json: weight_map.b: tensor is absent from its shard s1.safetensors"));
}

TEST_CASE("malformed: sharded index problems: unlisted tensor, path escape, bad types, duplicate keys") {
  temp_dir dir("st_bad_index");
  std::vector<std::byte> b(8);
  io::write_safetensors(dir / "s1.safetensors",
                        {{"a", dtype::f32, {1}, std::span<const std::byte>(b).first(4)},
                         {"c", dtype::f32, {1}, std::span<const std::byte>(b).last(4)}});
  const auto idx = dir / "model.safetensors.index.json";
  const auto msg_for = [&](const std::string& text) {
    write_bytes(idx, text);
    return format_error_message([&] { (void)io::checkpoint::open(idx); });
  };
  CHECK(contains(msg_for(R"({"weight_map": {"a": "s1.safetensors"}})"), "tensor c of shard s1.safetensors is not listed"));
  CHECK(contains(msg_for(R"({"weight_map": {"a": "../s1.safetensors"}})"), "must be a plain file name"));
  CHECK(contains(msg_for(R"({"weight_map": {"a": 3}})"), "weight_map.a: shard file name must be a string"));
  CHECK(contains(msg_for(R"({"weight_map": []})"), "weight_map: must be an object"));
  CHECK(contains(msg_for(R"({"metadata": {}})"), "weight_map: missing"));
  CHECK(contains(msg_for(R"([])"), "index must be a JSON object"));
  CHECK(contains(msg_for(R"({"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}})"),
                 "a: duplicate key in the index"));
  CHECK(contains(msg_for(R"({"weight_map": {)"), "malformed JSON"));
}

TEST_CASE("malformed: a directory without any checkpoint and a missing file") {
  temp_dir dir("st_bad_dir");
  CHECK(contains(format_error_message([&] { (void)io::checkpoint::open(dir.path()); }), "no model.safetensors"));
  CHECK(contains(format_error_message([&] { (void)io::safetensors_file::open(dir / "nope.safetensors"); }),
                 "nope.safetensors: cannot open"));
}

// ---- fuzz -----------------------------------------------------------------------------------------------

TEST_CASE("fuzz: mutated headers only ever raise qprob::format_error") {
  const auto seed = qprob::test::run_seed();
  INFO("seed " << seed << " (rerun with QPROB_TEST_SEED)");
  auto rng = qprob::test::make_rng(0xf022);
  // A valid base file with several tensors and metadata.
  std::vector<owned_tensor> ts;
  ts.push_back(random_tensor(rng, "model.embed.weight", dtype::f32, {4, 3}));
  ts.push_back(random_tensor(rng, "model.layers.0.w", dtype::bf16, {3, 5}));
  ts.push_back(random_tensor(rng, "model.empty", dtype::i8, {0, 7}));
  ts.push_back(random_tensor(rng, "b", dtype::u8, {5}));
  temp_dir dir("st_fuzz");
  io::write_options opt;
  opt.metadata = {{"format", "pt"}};
  io::write_safetensors(dir / "base.safetensors", as_writes(ts), opt);
  std::ifstream in(dir / "base.safetensors", std::ios::binary);
  const std::string base((std::istreambuf_iterator<char>(in)), {});
  std::uint64_t hlen = 0;
  std::memcpy(&hlen, base.data(), 8);

  static const char* fragments[] = {"{", "}", "[", "]", "\"", ",", ":", "-1", "1e400", "18446744073709551616",
                                    "null", "true", "\"F32\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"",
                                    "\"__metadata__\"", "\xff", "\xc3", "\\u0000", "\\ud800", "0", "[0,0]", " "};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(2000);
  std::int64_t iterations = 0, accepted = 0, rejected = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string s = base;
    const int kind = static_cast<int>(rng() % 6);
    const auto header_pos = [&] { return 8 + rng() % std::max<std::uint64_t>(hlen, 1); };
    switch (kind) {
      case 0:  // byte flips inside the header
        for (int k = 1 + static_cast<int>(rng() % 4); k > 0; --k) {
          s[header_pos()] ^= static_cast<char>(1u << (rng() % 8));
        }
        break;
      case 1:  // truncation anywhere
        s.resize(rng() % s.size());
        break;
      case 2: {  // fragment insertion into the header, length field kept consistent
        const auto pos = header_pos();
        const std::string frag = fragments[rng() % std::size(fragments)];
        s.insert(pos, frag);
        const auto n = hlen + frag.size();
        s.replace(0, 8, qprob::test::le64(n));
        break;
      }
      case 3: {  // digit mutation: change a number in the header
        for (int tries = 0; tries < 20; ++tries) {
          const auto pos = header_pos();
          if (std::isdigit(static_cast<unsigned char>(s[pos]))) {
            s[pos] = static_cast<char>('0' + rng() % 10);
            break;
          }
        }
        break;
      }
      case 4: {  // random header length
        s.replace(0, 8, qprob::test::le64(rng() % (s.size() + 16)));
        break;
      }
      default: {  // random JSON document of random structure
        std::string h;
        const int depth = 1 + static_cast<int>(rng() % 6);
        for (int k = 0; k < depth * 3; ++k) {
          h += fragments[rng() % std::size(fragments)];
        }
        s = qprob::test::le64(h.size()) + h + std::string(rng() % 64, '\0');
        break;
      }
    }
    ++iterations;
    try {
      const auto h = io::parse_safetensors_header(
          std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size()), "fuzz.safetensors");
      // Anything accepted must satisfy the invariants the reader relies on.
      for (const auto& t : h.tensors) {
        REQUIRE(t.begin <= t.end);
        REQUIRE(t.end <= h.data_size);
        REQUIRE(t.numel() * qprob::dtype_size(t.dtype) == t.nbytes());
      }
      ++accepted;
    } catch (const qprob::format_error& e) {
      REQUIRE(std::string(e.what()).rfind("fuzz.safetensors", 0) == 0);
      ++rejected;
    } catch (const std::exception& e) {
      FAIL("iteration " << iterations << " (kind " << kind << ") threw a non-format_error: " << e.what());
    }
  }
  MESSAGE(iterations << " mutated headers: " << accepted << " accepted, " << rejected << " rejected");
  CHECK(iterations > 1000);
  CHECK(rejected > 0);
  CHECK(accepted > 0);  // some mutations (e.g. a digit changed to itself, padding) stay valid
}

// ---- writer atomicity -----------------------------------------------------------------------------------

TEST_CASE("writer: a failure at any stage leaves neither the file nor a temporary file") {
  auto rng = qprob::test::make_rng(0xa70);
  const std::vector<owned_tensor> ts = {random_tensor(rng, "w", dtype::f32, {16, 16})};
  for (const std::string failing : {"opened", "header", "data", "synced"}) {
    CAPTURE(failing);
    temp_dir dir("st_atomic");
    io::write_options opt;
    opt.on_stage = [&](std::string_view stage) {
      if (stage == failing) {
        throw std::runtime_error("simulated failure at " + failing);
      }
    };
    CHECK_THROWS_WITH_AS(io::write_safetensors(dir / "out.safetensors", as_writes(ts), opt),
                         ("simulated failure at " + failing).c_str(), std::runtime_error);
    CHECK(dir.listing().empty());
  }
}

TEST_CASE("writer: a failed overwrite keeps the previous file intact") {
  auto rng = qprob::test::make_rng(0xa71);
  const std::vector<owned_tensor> v1 = {random_tensor(rng, "w", dtype::f32, {4})};
  const std::vector<owned_tensor> v2 = {random_tensor(rng, "w", dtype::f32, {8})};
  temp_dir dir("st_atomic");
  const auto path = dir / "out.safetensors";
  io::write_safetensors(path, as_writes(v1));
  io::write_options opt;
  opt.on_stage = [](std::string_view stage) {
    if (stage == "data") {
      throw std::runtime_error("disk full (simulated)");
    }
  };
  CHECK_THROWS(io::write_safetensors(path, as_writes(v2), opt));
  CHECK(dir.listing() == std::vector<std::string>{"out.safetensors"});
  const auto f = io::safetensors_file::open(path);
  CHECK(f.at("w").shape == std::vector<std::int64_t>{4});
  CHECK(std::memcmp(f.bytes("w").data(), v1[0].bytes.data(), 16) == 0);
}

TEST_CASE("writer: an unwritable destination raises format_error and creates nothing") {
  temp_dir dir("st_atomic");
  std::vector<std::byte> b(4);
  const auto target = dir / "missing_subdir" / "out.safetensors";
  const auto msg    = format_error_message(
      [&] { io::write_safetensors(target, {{"w", dtype::f32, {1}, std::span<const std::byte>(b)}}); });
  CHECK(contains(msg, "cannot create temporary file"));
  CHECK(dir.listing().empty());
}

TEST_CASE("writer: inconsistent tensors are rejected before anything is written") {
  temp_dir dir("st_atomic");
  std::vector<std::byte> b(12);
  const auto path = dir / "out.safetensors";
  CHECK_THROWS_AS(io::write_safetensors(path, {{"w", dtype::f32, {2}, std::span<const std::byte>(b)}}),
                  qprob::invalid_argument);
  CHECK_THROWS_AS(io::write_safetensors(path, {{"w", dtype::f32, {1}, std::span<const std::byte>(b).first(4)},
                                               {"w", dtype::f32, {1}, std::span<const std::byte>(b).first(4)}}),
                  qprob::invalid_argument);
  CHECK_THROWS_AS(io::write_safetensors(path, {{"bad\xff", dtype::f32, {1}, std::span<const std::byte>(b).first(4)}}),
                  qprob::invalid_argument);
  CHECK(dir.listing().empty());
}

TEST_CASE("writer: a failing sharded write removes every shard written so far") {
  auto rng = qprob::test::make_rng(0xa72);
  std::vector<owned_tensor> ts;
  for (int i = 0; i < 4; ++i) {
    ts.push_back(random_tensor(rng, std::string(1, static_cast<char>('a' + i)), dtype::f32, {8}));
  }
  for (const std::string failing : {"data", "index"}) {
    CAPTURE(failing);
    temp_dir dir("st_atomic");
    int calls = 0;
    io::write_options opt;
    opt.on_stage = [&](std::string_view stage) {
      // Fail at the third shard's data, or when the index is written (after all shards were renamed).
      if (stage == failing && (failing == "index" || ++calls == 3)) {
        throw std::runtime_error("simulated");
      }
    };
    CHECK_THROWS(io::write_sharded_safetensors(dir.path(), as_writes(ts), 32, opt));
    CHECK(dir.listing().empty());
  }
}
