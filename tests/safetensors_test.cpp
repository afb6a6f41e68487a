// safetensors reading and writing: round trips, dtype conversion, and every way an untrusted file
// can be malformed (each must raise an Error naming the file and, where there is one, the tensor).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "test_util.h"
#include "tokenmix/io/safetensors.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"

namespace tokenmix {
namespace {

using test::temp_path;

// Writes an 8-byte length, the header text verbatim and the data bytes.
std::string write_raw(const std::string& name, const std::string& header, const std::vector<uint8_t>& data,
                      int64_t length_override = -1) {
  const std::string path = temp_path(name);
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return path;
}

void expect_open_error(const std::string& path, const std::vector<std::string>& needles) {
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "opened a malformed file: " << path;
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RoundTripFloatBoolInt64AndMetadata) {
  SafetensorsWriter w;
  const Tensor a = test::random_tensor(Shape{2, 3, 4}, 1);
  Mask m{Shape{2, 5}};
  m.at(1, 3) = 1;
  const Tensor five = test::random_tensor(Shape{2 * 3, 1, 2, 2}, 2);
  w.add("a", a);
  w.add("m", m);
  w.add("five", five, {2, 3, 1, 2, 2});
  w.add_int64s("pos", {7, -1, 1ll << 40});
  w.set_metadata("module", "x.y");
  const std::string path = temp_path("roundtrip.safetensors");
  w.write(path);
  SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "five", "m", "pos"}));
  EXPECT_EQ(max_abs_diff(f.tensor("a"), a), 0.f);
  EXPECT_EQ(f.mask("m").at(1, 3), 1);
  EXPECT_EQ(f.mask("m").at(0, 0), 0);
  EXPECT_EQ(f.info("five").dims, (std::vector<int64_t>{2, 3, 1, 2, 2}));
  EXPECT_EQ(f.tensor_flat("five").shape(), (Shape{6, 1, 2, 2}));
  EXPECT_THROW(f.tensor("five"), Error);  // more than 4 axes
  EXPECT_EQ(f.int64s("pos"), (std::vector<int64_t>{7, -1, 1ll << 40}));
  EXPECT_EQ(f.metadata().at("module"), "x.y");
  EXPECT_THROW(f.tensor("m"), Error);  // BOOL is not float
  EXPECT_THROW(f.mask("a"), Error);
  EXPECT_THROW(f.tensor("nope"), Error);
}

// bytes() is exactly the file write() writes, and from_bytes reads it (and refuses a truncated copy).
TEST(Safetensors, InMemoryBytesMatchTheFile) {
  SafetensorsWriter w;
  const Tensor a = test::random_tensor(Shape{3, 4}, 3);
  w.add("a", a);
  w.add_int64s("n", {1, 2});
  w.set_metadata("stream", "S");
  const std::string path = temp_path("inmemory.safetensors");
  w.write(path);
  const std::vector<uint8_t> bytes = w.bytes();
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, on_disk);
  const SafetensorsFile f = SafetensorsFile::from_bytes(bytes, "state");
  EXPECT_EQ(f.path(), "state");
  EXPECT_EQ(max_abs_diff(f.tensor("a"), a), 0.f);
  EXPECT_EQ(f.int64s("n"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(f.metadata().at("stream"), "S");
  test::expect_error([&] { SafetensorsFile::from_bytes({bytes.begin(), bytes.end() - 1}, "cut"); }, "cut");
  test::expect_error([&] { SafetensorsFile::from_bytes({1, 2, 3}, "tiny"); }, "tiny: truncated");
}

TEST(Safetensors, HalfAndBfloat16AreConvertedToFloat) {
  // F16: 1.0 = 0x3c00, -2.5 = 0xc100, 65504 = 0x7bff, smallest subnormal 2^-24 = 0x0001.
  // BF16: 1.0 = 0x3f80, -0.15625 = 0xbe20.
  const std::vector<uint8_t> data = {0x00, 0x3c, 0x00, 0xc1, 0xff, 0x7b, 0x01, 0x00, 0x80, 0x3f, 0x20, 0xbe};
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}})";
  SafetensorsFile f(write_raw("half.safetensors", header, data));
  const Tensor h = f.tensor("h"), b = f.tensor("b");
  EXPECT_EQ(h.at(0), 1.f);
  EXPECT_EQ(h.at(1), -2.5f);
  EXPECT_EQ(h.at(2), 65504.f);
  EXPECT_EQ(h.at(3), std::ldexp(1.f, -24));
  EXPECT_EQ(b.at(0), 1.f);
  EXPECT_EQ(b.at(1), -0.15625f);
}

TEST(Safetensors, Bfloat16TensorsAreReadAsStoredAndWritten) {
  // BF16 bits 0x3f80 (1.0), 0xbe20 (-0.15625), 0x7f80 (+inf), 0x0001 (the smallest subnormal), read
  // from an odd data offset (after a 1-byte BOOL), so the reader must copy rather than alias.
  const std::vector<uint8_t> data = {1, 0x80, 0x3f, 0x20, 0xbe, 0x80, 0x7f, 0x01, 0x00};
  const std::string header =
      R"({"flag":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]},"param.w":{"dtype":"BF16","shape":[2,2],"data_offsets":[1,9]}})";
  const std::string path = write_raw("bf16.safetensors", header, data);
  const SafetensorsFile f(path);
  const Bf16Tensor b = f.bf16_tensor("param.w");
  EXPECT_EQ(b.shape, Shape({2, 2}));
  const std::vector<uint16_t> bits(b.data.get(), b.data.get() + 4);
  EXPECT_EQ(bits, (std::vector<uint16_t>{0x3f80, 0xbe20, 0x7f80, 0x0001}));
  const Tensor widened = b.to_float();
  EXPECT_EQ(widened.at(0, 1), -0.15625f);
  EXPECT_TRUE(test::bit_equal(widened, f.tensor("param.w")));
  const Bf16Tensor row = b.narrow(1, 1);
  EXPECT_EQ(row.shape, Shape({1, 2}));
  EXPECT_EQ(row.data.get()[1], 0x0001);
  test::expect_error([&] { b.narrow(1, 2); }, "Bf16Tensor::narrow: rows [1, 1 + 2): out of range for shape (2, 2)");
  test::expect_error([&] { f.bf16_tensor("flag"); }, "SafetensorsFile::bf16_tensor: " + path + ": tensor 'flag': expected dtype BF16, got BOOL");

  // A StateDict keeps it as BF16 (get() widens), and saves it as BF16.
  const StateDict sd = StateDict::from_file(f, "param.");
  ASSERT_NE(sd.bf16("w"), nullptr);
  EXPECT_TRUE(test::bit_equal(sd.get("w"), widened));
  const std::string saved = temp_path("bf16_saved.safetensors");
  StateDict only;
  only.set("w", b);
  only.save(saved);
  const SafetensorsFile g(saved);
  EXPECT_EQ(g.info("w").dtype, DType::BF16);
  EXPECT_TRUE(test::bit_equal(g.tensor("w"), widened));
  only.set("w", widened);  // replaced by a float32 tensor
  EXPECT_EQ(only.bf16("w"), nullptr);

  // A BF16 weight of the wrong shape is reported like a float32 one.
  WeightReader r(sd, "Layer");
  EXPECT_EQ(r.take_bf16("w", Shape{4}), nullptr);
  EXPECT_TRUE(r.take("w", Shape{4}).empty());
  test::expect_error([&] { r.finish(); }, "Layer: state_dict: shape mismatches [w: expected (4,), got (2, 2)]");

  // A Linear refuses a Bf16Tensor that has a shape but no values.
  test::expect_error([&] { Linear(Bf16Tensor{Shape{2, 2}, nullptr}, Tensor{}, LinearOptions{}); },
                     "Linear: weight: expected 4 bf16 values, got a Bf16Tensor without data");

  // from_float rounds to nearest even (1 + 2^-8 is a tie: down to 1; 1 + 3 * 2^-8: up to 1 + 2^-6).
  const Bf16Tensor r2 = Bf16Tensor::from_float(Tensor(Shape{2}, {1.f + std::ldexp(1.f, -8), 1.f + 3 * std::ldexp(1.f, -8)}));
  EXPECT_EQ(r2.data.get()[0], 0x3f80);
  EXPECT_EQ(r2.data.get()[1], 0x3f82);
}

TEST(Safetensors, MalformedFilesRaiseErrorsNamingFileAndTensor) {
  const std::vector<uint8_t> d16(16, 0);
  {
    const std::string p = temp_path("short.safetensors");
    std::ofstream(p, std::ios::binary) << "abc";
    expect_open_error(p, {p, "truncated file"});
  }
  expect_open_error(write_raw("absurd.safetensors", "{}", {}, 1ll << 40), {"absurd"});
  expect_open_error(write_raw("pastend.safetensors", "{}", {}, 100), {"truncated file"});
  expect_open_error(write_raw("notjson.safetensors", "{not json", {}), {"not valid JSON"});
  expect_open_error(write_raw("array.safetensors", "[1,2]", {}), {"must be a JSON object"});
  expect_open_error(write_raw("dtype.safetensors", R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", d16),
                    {"tensor 't'", "unknown dtype 'F64'"});
  expect_open_error(write_raw("size.safetensors", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d16),
                    {"tensor 't'", "byte size 16 does not match"});
  expect_open_error(write_raw("range.safetensors", R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", d16),
                    {"tensor 't'", "out of range"});
  expect_open_error(write_raw("reversed.safetensors", R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", d16),
                    {"reversed"});
  expect_open_error(
      write_raw("overlap.safetensors",
                R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                d16),
      {"'a' and 'b' overlap"});
  expect_open_error(write_raw("negshape.safetensors", R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", d16),
                    {"non-negative integers"});
  expect_open_error(
      write_raw("overflow.safetensors",
                R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}})", d16),
      {"overflows"});
  expect_open_error(write_raw("fields.safetensors", R"({"t":{"dtype":"F32","shape":[4]}})", d16),
                    {"dtype, shape and data_offsets"});
  expect_open_error(write_raw("offsets.safetensors", R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", d16),
                    {"two non-negative integers"});
  expect_open_error(write_raw("meta.safetensors", R"({"__metadata__":{"k":1}})", {}), {"__metadata__['k']"});
  expect_open_error(temp_path("does_not_exist.safetensors"), {"cannot open"});
}

TEST(Safetensors, UnalignedFloatDataIsCopied) {
  // Header of 3 bytes puts the data section at offset 11: not 4-byte aligned.
  const std::string header = R"({})";
  std::vector<uint8_t> data(4);
  const float one = 1.f;
  std::memcpy(data.data(), &one, 4);
  const std::string h = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} )";
  SafetensorsFile f(write_raw("unaligned.safetensors", h.substr(0, h.size() - 1), data));
  EXPECT_EQ(f.tensor("t").at(0), 1.f);
}

TEST(StateDict, WeightReaderReportsEveryProblemAtOnce) {
  StateDict sd;
  sd.set("w", Tensor{Shape{2, 3}});
  sd.set("extra", Tensor{Shape{1}});
  WeightReader r(sd, "Layer");
  EXPECT_TRUE(r.take("w", Shape{3, 2}).empty());
  EXPECT_TRUE(r.take("b", Shape{3}).empty());
  EXPECT_TRUE(r.take_optional("pe", Shape{3}).empty());
  try {
    r.finish();
    ADD_FAILURE();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("Layer: state_dict: missing keys [b]"), std::string::npos) << m;
    EXPECT_NE(m.find("unexpected keys [extra]"), std::string::npos) << m;
    EXPECT_NE(m.find("w: expected (3, 2), got (2, 3)"), std::string::npos) << m;
  }
}

TEST(Tensor, ShapeChecksAndViews) {
  Tensor t{Shape{2, 3}};
  EXPECT_THROW(t.reshape(Shape{4}), Error);
  EXPECT_THROW(t[2], Error);
  EXPECT_THROW(Shape({1, 2, 3, 4, 5}), Error);
  EXPECT_THROW(Shape({-1}), Error);
  t.at(1, 2) = 5.f;
  EXPECT_EQ(t[1].at(2), 5.f);
  const Tensor c = t.clone();
  t.at(1, 2) = 6.f;
  EXPECT_EQ(c.at(1, 2), 5.f);
  try {
    check_shape(t, {-1, 4}, "f", "x", {"B"});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "f: x: expected shape (B, 4), got (2, 3)");
  }
}

TEST(Tensor, UninitializedOwnsItsStorage) {
  // Tensor::uninitialized: the shape as asked, distinct owned storage that outlives the name it was
  // made under (views keep it alive), and a zero-size tensor that is not empty().
  Tensor a = Tensor::uninitialized(Shape{3, 4});
  ASSERT_EQ(a.shape(), (Shape{3, 4}));
  for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = static_cast<float>(i);
  const Tensor b = Tensor::uninitialized(Shape{3, 4});
  EXPECT_NE(a.data(), b.data());
  const Tensor row = a[2];
  a = Tensor();
  EXPECT_EQ(row.at(3), 11.f);
  const Tensor z = Tensor::uninitialized(Shape{0, 5});
  EXPECT_EQ(z.numel(), 0);
  EXPECT_FALSE(z.empty());
}

}  // namespace
TEST(Tensor, CloneKeepsAbsentTensorsAbsent) {
  // An empty (absent) tensor has a 0-axis shape, whose numel is 1: clone() must not copy from its
  // null data. A zero-size tensor clones to a zero-size tensor that is still present.
  EXPECT_TRUE(Tensor().clone().empty());
  const Tensor z = Tensor::uninitialized(Shape{0, 5}).clone();
  EXPECT_FALSE(z.empty());
  EXPECT_EQ(z.shape(), (Shape{0, 5}));
}

}  // namespace tokenmix
