#include "ludus/tensor.h"

#include <openssl/evp.h>

#include <cstring>
#include <limits>
#include <stdexcept>

namespace ludus {
namespace {

// 4-byte elements as little-endian bytes, independent of the host's byte order.
void PutLe32(uint32_t bits, std::string* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

uint32_t GetLe32(const std::string& raw, size_t element) {
  uint32_t bits = 0;
  for (int i = 0; i < 4; ++i) bits |= uint32_t(static_cast<unsigned char>(raw[element * 4 + i])) << (8 * i);
  return bits;
}

// Shared checks of the decoders; returns the element count.
size_t CheckTensor(const v1::Tensor& t, v1::DataType want, const char* want_name, const std::string& field) {
  if (t.dtype() != want) {
    throw std::invalid_argument(field + ": expected " + want_name + ", got " + v1::DataType_Name(t.dtype()));
  }
  if (t.compression() != v1::COMPRESSION_NONE) throw std::invalid_argument(field + ": compressed tensors are not supported here");
  std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  const int64_t count = ElementCount(shape, field);
  if (t.raw_data().size() != static_cast<uint64_t>(count) * 4) {
    throw std::invalid_argument(field + ": raw_data has " + std::to_string(t.raw_data().size()) + " bytes, shape needs " +
                                std::to_string(count * 4));
  }
  return static_cast<size_t>(count);
}

template <typename T>
v1::Tensor Encode(const std::vector<T>& values, const std::vector<int64_t>& shape, v1::DataType dtype) {
  if (ElementCount(shape, "tensor") != static_cast<int64_t>(values.size())) {
    throw std::invalid_argument("tensor: " + std::to_string(values.size()) + " values do not fill the shape");
  }
  v1::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  std::string* raw = t.mutable_raw_data();
  raw->reserve(values.size() * 4);
  for (T v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    PutLe32(bits, raw);
  }
  return t;
}

template <typename T>
std::vector<T> Decode(const v1::Tensor& t, size_t count) {
  std::vector<T> out(count);
  for (size_t i = 0; i < count; ++i) {
    const uint32_t bits = GetLe32(t.raw_data(), i);
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

}  // namespace

int64_t ElementCount(const std::vector<int64_t>& shape, const std::string& field) {
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument(field + ": negative dimension " + std::to_string(d));
    if (d != 0 && count > std::numeric_limits<int64_t>::max() / 8 / d) throw std::invalid_argument(field + ": shape too large");
    count *= d;
  }
  return count;
}

v1::Tensor Float32Tensor(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  static_assert(sizeof(float) == 4, "IEEE-754 binary32 floats required");
  return Encode(values, shape, v1::DATA_TYPE_FLOAT32);
}

v1::Tensor Int32Tensor(const std::vector<int32_t>& values, const std::vector<int64_t>& shape) {
  return Encode(values, shape, v1::DATA_TYPE_INT32);
}

std::vector<float> ReadFloat32(const v1::Tensor& tensor, const std::string& field) {
  return Decode<float>(tensor, CheckTensor(tensor, v1::DATA_TYPE_FLOAT32, "DATA_TYPE_FLOAT32", field));
}

std::vector<int32_t> ReadInt32(const v1::Tensor& tensor, const std::string& field) {
  return Decode<int32_t>(tensor, CheckTensor(tensor, v1::DATA_TYPE_INT32, "DATA_TYPE_INT32", field));
}

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("OpenSSL EVP_Digest(sha256) failed");
  }
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xF]);
  }
  return hex;
}

}  // namespace ludus
