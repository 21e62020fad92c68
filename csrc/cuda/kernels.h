// Launchers of the CUDA kernels. Each takes device pointers to dense, C-contiguous float32 data,
// queues its work on `stream` and returns at once; the returned cudaError_t is the launch's
// status (cudaGetLastError), never a wait on the result. Shapes are validated by the caller
// (csrc/cuda/bind_cuda.cpp and phi_engine.runtime.cuda): these functions trust their arguments.
// Outputs must not overlap inputs (the pointers are __restrict__), except the epilogue's c,
// which is updated in place by design.
//
// Only CUDA runtime types appear here, so host translation units compiled by the C++ compiler
// can call the launchers without including any device code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace phi::cuda {

// The most dimensions a broadcast elementwise op or a softmax mask may have.
constexpr int kMaxDims = 8;

// Activations a GEMM epilogue may fuse; the same names as phi::math::Act on the CPU.
enum class Act : int { none, relu, gelu, gelu_tanh, tanh, sigmoid, clip };

enum class BinaryOp : int { add, sub, mul, div, maximum, minimum, pow };

enum class UnaryOp : int {
  neg, abs, exp, log, sqrt, reciprocal, erf, relu, gelu, gelu_tanh, tanh, sigmoid, clip, leaky_relu
};

// An activation fused after a binary op, with clip's bounds (read for Act::clip only).
struct ActParams {
  Act act = Act::none;
  float lo = 0.0f;
  float hi = 0.0f;
};

// c = act(c + bias[col] + residual) in place, on the m x n row-major matrix c. bias (n values)
// and residual (m x n) may be null. clip_min/clip_max are read for Act::clip only.
struct Epilogue {
  const float* bias = nullptr;
  const float* residual = nullptr;
  Act act = Act::none;
  float clip_min = 0.0f;
  float clip_max = 0.0f;

  bool empty() const { return bias == nullptr && residual == nullptr && act == Act::none; }
};

cudaError_t launch_gemm_epilogue(float* c, int64_t m, int64_t n, const Epilogue& ep, cudaStream_t stream);

// out = act(op(a, b)) with numpy broadcasting. a_shape and b_shape are left-padded with 1s to
// ndim dimensions; out holds the broadcast shape, which the caller has checked they agree on.
cudaError_t launch_binary(BinaryOp op, const float* a, const int64_t* a_shape, const float* b,
                          const int64_t* b_shape, float* out, const int64_t* out_shape, int ndim,
                          const ActParams& act, cudaStream_t stream);

// out[i] = op(x[i]) for n elements. clip reads its bounds from p0, p1; leaky_relu its slope
// from p0.
cudaError_t launch_unary(UnaryOp op, const float* x, float* out, int64_t n, float p0, float p1,
                         cudaStream_t stream);

// Where the mask value of a softmax row lives: row r of x (shape outer... x cols) reads its mask
// at offset sum_d coord_d(r) * outer_stride[d] plus col * col_stride, where coord(r) is r
// unravelled over outer_shape. A stride of 0 broadcasts that dimension.
struct SoftmaxMask {
  const float* data = nullptr;  // added to the scaled logits; null: no mask
  int outer_ndim = 0;
  int64_t outer_shape[kMaxDims] = {};
  int64_t outer_stride[kMaxDims] = {};
  int64_t col_stride = 0;
};

// Softmax over each row of the rows x cols matrix x: out = exp(z - max z) / sum exp(z - max z),
// z = x * scale + mask. Elements with z = -inf get 0. As in numpy (and the CPU kernel), a row
// whose max is not finite (all -inf, a +inf, a NaN) comes out all NaN.
cudaError_t launch_softmax(const float* x, float* out, int64_t rows, int64_t cols, float scale,
                           const SoftmaxMask& mask, cudaStream_t stream);

// out = (v - mean(v)) / sqrt(var(v) + epsilon) * gamma + beta over each row of v = x + residual
// (rows x cols). residual and beta may be null; gamma and beta hold cols values.
cudaError_t launch_layer_norm(const float* x, const float* residual, const float* gamma, const float* beta,
                              float* out, int64_t rows, int64_t cols, float epsilon, cudaStream_t stream);

// Element types of the data-movement kernels (the same names as numpy's: bool is one byte).
enum class DType : int { f32, f64, f16, i8, u8, i32, i64, boolean, bf16 };

enum class ReduceOp : int { sum, mean, max, min, prod };

// out[i] = src[sum_d coord_d(i) * src_stride[d]] for i over the dense row-major `shape` (ndim
// dimensions, strides in elements, possibly 0 or negative): transpose, slice, expand and each
// part of a concat. elem_size is 1, 2, 4 or 8 bytes.
cudaError_t launch_strided_copy(const void* src, void* dst, int elem_size, int ndim, const int64_t* shape,
                                const int64_t* src_stride, cudaStream_t stream);

// out[o, j, :] = data[o, indices[j], :] (data viewed as outer x dim x row elements, indices int32
// or int64, negative ones counting from the end). An index outside [-dim, dim) gives a zero row
// and, when `error` is not null, sets error[0] = 1 and error[1] = the first such index.
cudaError_t launch_gather(const void* data, int elem_size, const void* indices, bool indices64, void* out,
                          int64_t outer, int64_t count, int64_t dim, int64_t row, unsigned long long* error,
                          cudaStream_t stream);

// out[i] = (to) x[i] for n elements, numpy's astype semantics (float to integer truncates;
// NaN gives 0 and values beyond the integer range saturate).
cudaError_t launch_cast(const void* x, DType from, void* out, DType to, int64_t n, cudaStream_t stream);

// out[o, i] = op over l of x[o, l, i]: x viewed as outer x len x inner float32.
cudaError_t launch_reduce(ReduceOp op, const float* x, float* out, int64_t outer, int64_t len, int64_t inner,
                          cudaStream_t stream);

// The window of a 2-D convolution or pooling over NCHW float32: input n x c x h x w, output
// spatial oh x ow, kernel kh x kw, strides, dilations and the top/left pads.
struct Conv2dGeometry {
  int64_t n = 0, c = 0, h = 0, w = 0, oh = 0, ow = 0, kh = 0, kw = 0;
  int64_t sh = 1, sw = 1, dh = 1, dw = 1, pt = 0, pl = 0;
};

// cols (n x (c * kh * kw) x (oh * ow)) = the input patches each output position sees, 0 where
// a tap falls in the padding.
cudaError_t launch_im2col(const float* x, float* cols, const Conv2dGeometry& g, cudaStream_t stream);

// Max or average pooling (n x c x oh x ow from n x c x h x w; g.c is the channels): max over the
// taps inside the input, or their sum times inv_count[oh * ow + ow_index] (the divisor table).
cudaError_t launch_pool2d(bool is_max, const float* x, float* out, const Conv2dGeometry& g, const float* inv_count,
                          cudaStream_t stream);

enum class CompareOp : int { equal, less, less_equal, greater, greater_equal };

// out[i] = a[...] op b[...] (bool) over the dense out_shape; a_strides / b_strides are element
// strides per output dimension, 0 where an operand broadcasts. dtype is f32, i32 or i64.
cudaError_t launch_compare(CompareOp op, DType dtype, const void* a, const int64_t* a_strides, const void* b,
                           const int64_t* b_strides, bool* out, const int64_t* out_shape, int ndim,
                           cudaStream_t stream);

// out[i] = cond[...] ? a[...] : b[...] with broadcasting as above; elements of 1, 2, 4 or 8 bytes.
cudaError_t launch_where(int elem_size, const bool* cond, const int64_t* c_strides, const void* a,
                         const int64_t* a_strides, const void* b, const int64_t* b_strides, void* out,
                         const int64_t* out_shape, int ndim, cudaStream_t stream);

// Each row of the rows x cols matrix x: x - max - log(sum(exp(x - max))).
cudaError_t launch_log_softmax(const float* x, float* out, int64_t rows, int64_t cols, cudaStream_t stream);

// Each row: x * rsqrt(mean(x^2) + eps) * gamma (cols values).
cudaError_t launch_rms_norm(const float* x, const float* gamma, float* out, int64_t rows, int64_t cols, float eps,
                            cudaStream_t stream);

// out[o, i] = the index along len of the max (min) of x[o, :, i], as int64 (numpy's rules for
// NaN; `last` takes the last of equal extremes).
cudaError_t launch_arg(bool is_max, bool last, const float* x, int64_t* out, int64_t outer, int64_t len, int64_t inner,
                       cudaStream_t stream);

}  // namespace phi::cuda
