// Wire tensors (proto Tensor: dtype, shape, raw little-endian row-major bytes) from and to C++
// vectors, and SHA-256 for verifying fetched policies.
//
// The bytes are written and read explicitly little-endian (shifts, not memcpy of the host
// representation), so the same code is right on any host byte order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ludus/v1/trainer.pb.h"

namespace ludus {

// A FLOAT32 tensor of the given shape; throws std::invalid_argument if values.size() differs from
// product(shape) (the service would reject it with INVALID_ARGUMENT anyway, but later and remotely).
v1::Tensor Float32Tensor(const std::vector<float>& values, const std::vector<int64_t>& shape);
// An INT32 tensor (discrete actions), same rules.
v1::Tensor Int32Tensor(const std::vector<int32_t>& values, const std::vector<int64_t>& shape);

// Decode a FLOAT32 / INT32 tensor. Never trusts the sender: throws std::invalid_argument naming
// `field` for another dtype, a compressed tensor, a negative dimension or a byte length that is not
// product(shape) * 4.
std::vector<float> ReadFloat32(const v1::Tensor& tensor, const std::string& field);
std::vector<int32_t> ReadInt32(const v1::Tensor& tensor, const std::string& field);

// Number of elements of a shape (1 for the empty shape, a scalar); throws on a negative dimension
// or overflow.
int64_t ElementCount(const std::vector<int64_t>& shape, const std::string& field);

// Lowercase hex SHA-256 of `data` (what PolicyChunk.sha256 carries).
std::string Sha256Hex(const std::string& data);

}  // namespace ludus
