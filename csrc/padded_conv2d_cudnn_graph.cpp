// The cuDNN operation graph of one padded_conv2d direction (padded_conv2d_cudnn_graph.h).
#include "padded_conv2d_cudnn_graph.h"

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <array>
#include <cstdint>
#include <utility>

namespace vqvae_fast::cudnn_graph::detail {

namespace {

struct OpAttributes {
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t input, filter, output, conv, alpha, beta;
};

OpAttributes op_attributes(Kind kind) {
  switch (kind) {
    case Kind::kForward:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
    case Kind::kBackwardData:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
    case Kind::kBackwardFilter:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
  }
  throw Unsupported("unknown convolution direction");
}

cudnnDataType_t data_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return CUDNN_DATA_FLOAT;
    case at::kDouble: return CUDNN_DATA_DOUBLE;
    case at::kHalf: return CUDNN_DATA_HALF;
    case at::kBFloat16: return CUDNN_DATA_BFLOAT16;
    default: throw Unsupported("cuDNN path: unsupported dtype");
  }
}

}  // namespace

int64_t alignment_of(const at::Tensor& t) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.const_data_ptr());
  int64_t alignment = 16;
  while (alignment > t.element_size() && address % alignment != 0) alignment /= 2;
  return alignment;
}

namespace {

// Packed strides of a 4-D tensor in `format` (the tensor is contiguous in it; size-1 dims may
// carry any stride in PyTorch, cuDNN wants the canonical one).
std::array<int64_t, 4> packed_strides(at::IntArrayRef sizes, at::MemoryFormat format) {
  std::array<int64_t, 4> s{};
  if (format == at::MemoryFormat::ChannelsLast) {  // memory order N, H, W, C
    s[1] = 1;
    s[3] = sizes[1];
    s[2] = sizes[3] * s[3];
    s[0] = sizes[2] * s[2];
  } else {  // N, C, H, W
    s[3] = 1;
    s[2] = sizes[3];
    s[1] = sizes[2] * s[2];
    s[0] = sizes[1] * s[1];
  }
  return s;
}

Desc tensor_desc(int64_t uid, const at::Tensor& t, at::MemoryFormat format) {
  const cudnnDataType_t dtype = data_type(t.scalar_type());
  const std::array<int64_t, 4> dims{t.size(0), t.size(1), t.size(2), t.size(3)};
  const std::array<int64_t, 4> strides = packed_strides(t.sizes(), format);
  const int64_t alignment = alignment_of(t);
  Desc d(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  d.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype)
      .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data())
      .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data())
      .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
      .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment)
      .finalize();
  return d;
}

// Tensors, convolution and operation descriptors, finalized (no handle needed yet).
Graph build_operation(Kind kind, const Operands& t, const ConvGeometry& g, at::MemoryFormat format) {
  Graph graph;
  const bool is_double = t.input.scalar_type() == at::kDouble;
  const cudnnDataType_t compute = is_double ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;

  graph.parts.push_back(tensor_desc(kInputUid, t.input, format));
  graph.parts.push_back(tensor_desc(kFilterUid, t.filter, format));
  graph.parts.push_back(tensor_desc(kOutputUid, t.output, format));

  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const int64_t spatial_dims = 2;
  const int64_t dilations[2] = {1, 1};
  const int64_t strides[2] = {g.sH, g.sW};
  const int64_t pre[2] = {g.pad_top, g.pad_left};
  const int64_t post[2] = {g.pad_bottom, g.pad_right};
  Desc conv(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  conv.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute)
      .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
      .set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial_dims)
      .set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilations)
      .set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides)
      .set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pre)
      .set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, post)
      .finalize();

  const OpAttributes attrs = op_attributes(kind);
  Desc op(attrs.type);
  op.set_desc(attrs.input, graph.parts[0])
      .set_desc(attrs.filter, graph.parts[1])
      .set_desc(attrs.output, graph.parts[2])
      .set_desc(attrs.conv, conv);
  if (is_double) {
    const double alpha = 1.0, beta = 0.0;
    op.set(attrs.alpha, CUDNN_TYPE_DOUBLE, 1, &alpha).set(attrs.beta, CUDNN_TYPE_DOUBLE, 1, &beta);
  } else {
    const float alpha = 1.0f, beta = 0.0f;
    op.set(attrs.alpha, CUDNN_TYPE_FLOAT, 1, &alpha).set(attrs.beta, CUDNN_TYPE_FLOAT, 1, &beta);
  }
  op.finalize();
  graph.parts.push_back(std::move(conv));
  graph.parts.push_back(std::move(op));
  return graph;
}

}  // namespace

Graph build_graph(Kind kind, const Operands& t, const ConvGeometry& g, at::MemoryFormat format,
                  cudnnHandle_t handle) {
  Graph graph = build_operation(kind, t, g, format);
  Desc op_graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  cudnnBackendDescriptor_t ops[1] = {graph.parts[4].get()};
  op_graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, ops)
      .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
      .finalize();
  graph.graph = op_graph.get();
  graph.parts.push_back(std::move(op_graph));
  return graph;
}

}  // namespace vqvae_fast::cudnn_graph::detail

#endif  // VQVAE_FAST_HAVE_CUDNN
