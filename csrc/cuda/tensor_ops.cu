// Data movement and small reductions for running whole plans on the GPU: strided copies (which
// are transpose, slice, expand and concat), row gathers (embedding lookups), element type casts
// and reductions over one run of axes. Memory-bound and simple: one grid-stride pass, the
// element moved as an unsigned integer of its size so one kernel serves every dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/device_common.cuh"

namespace phi::cuda {
namespace {

// ---- strided copy ------------------------------------------------------------------------------

struct CopyDims {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
};

template <typename T>
__global__ void strided_copy_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t n, CopyDims d) {
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    int64_t rem = i, off = 0;
    for (int k = d.ndim - 1; k >= 0; --k) {
      const int64_t c = rem % d.shape[k];
      rem /= d.shape[k];
      off += c * d.stride[k];
    }
    dst[i] = src[off];
  }
}

template <typename T>
void launch_copy_typed(const void* src, void* dst, int64_t n, const CopyDims& d, cudaStream_t stream) {
  strided_copy_kernel<T><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(static_cast<const T*>(src),
                                                                               static_cast<T*>(dst), n, d);
}

// ---- gather --------------------------------------------------------------------------------------

// out[o, j, r] = data[o, idx[j], r] for o < outer, j < count, r < row (elements of size T).
// A bad index writes zeros and reports itself through `error` (two words: a flag set once, then
// the first bad index seen), so nothing outside `data` is ever read.
template <typename T, typename I>
__global__ void gather_kernel(const T* __restrict__ data, const I* __restrict__ idx, T* __restrict__ out,
                              int64_t outer, int64_t count, int64_t dim, int64_t row,
                              unsigned long long* __restrict__ error) {
  const int64_t n = outer * count * row;
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    const int64_t r = i % row;
    const int64_t oj = i / row;
    const int64_t j = oj % count;
    const int64_t o = oj / count;
    int64_t v = static_cast<int64_t>(idx[j]);
    if (v < -dim || v >= dim) {
      out[i] = T{};
      if (error != nullptr && r == 0 && atomicCAS(error, 0ull, 1ull) == 0ull) {
        error[1] = static_cast<unsigned long long>(v);
      }
      continue;
    }
    if (v < 0) v += dim;
    out[i] = data[(o * dim + v) * row + r];
  }
}

template <typename T>
void launch_gather_typed(const void* data, const void* idx, bool idx64, void* out, int64_t outer, int64_t count,
                         int64_t dim, int64_t row, unsigned long long* error, cudaStream_t stream) {
  const unsigned grid = detail::grid_for(outer * count * row);
  if (idx64) {
    gather_kernel<T, int64_t><<<grid, detail::kThreads, 0, stream>>>(
        static_cast<const T*>(data), static_cast<const int64_t*>(idx), static_cast<T*>(out), outer, count, dim, row,
        error);
  } else {
    gather_kernel<T, int32_t><<<grid, detail::kThreads, 0, stream>>>(
        static_cast<const T*>(data), static_cast<const int32_t*>(idx), static_cast<T*>(out), outer, count, dim, row,
        error);
  }
}

// ---- cast ----------------------------------------------------------------------------------------

// The integer targets' minimums (std::numeric_limits is host-only in device code).
template <typename T>
struct IntRange;
template <>
struct IntRange<int32_t> {
  static constexpr int32_t lo = INT32_MIN;
};
template <>
struct IntRange<int64_t> {
  static constexpr int64_t lo = INT64_MIN;
};

template <typename T>
constexpr bool is_half_v = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

template <typename T>
__device__ __forceinline__ float half_to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

// numpy's astype on x86-64, as the CPU kernel (csrc/core/cast.cpp) does it: float to integer
// truncates toward zero; where the value does not fit (NaN, infinities, out of range) a 32- or
// 64-bit target gets its minimum (the x86 "integer indefinite") and an 8-bit target the low byte
// of the int32 conversion; integer to narrower integer wraps; to bool is x != 0 (NaN is true).
// Each conversion rounds once: double to float16 / bfloat16 directly, integers straight to the
// target float type.
template <typename From, typename To>
__device__ __forceinline__ To convert(From x) {
  if constexpr (is_half_v<From>) {
    return convert<float, To>(half_to_float(x));  // widening is exact
  } else if constexpr (std::is_same_v<To, bool>) {
    return x != From(0);
  } else if constexpr (std::is_same_v<To, __half>) {
    if constexpr (std::is_same_v<From, double>) {
      return __double2half(x);
    } else if constexpr (std::is_same_v<From, int64_t>) {
      return __ll2half_rn(static_cast<long long>(x));
    } else {
      return __float2half_rn(static_cast<float>(x));
    }
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    if constexpr (std::is_same_v<From, double>) {
      return __double2bfloat16(x);
    } else if constexpr (std::is_same_v<From, int64_t>) {
      return __ll2bfloat16_rn(static_cast<long long>(x));
    } else {
      return __float2bfloat16_rn(static_cast<float>(x));
    }
  } else if constexpr (std::is_floating_point_v<From> && std::is_integral_v<To>) {
    if constexpr (sizeof(To) >= 4) {
      if constexpr (std::is_signed_v<To>) {
        // Fits iff min <= x < -min (both powers of two, exact in double); NaN fails both.
        const double v = static_cast<double>(x);
        const double lo = static_cast<double>(IntRange<To>::lo);
        return (v >= lo && v < -lo) ? static_cast<To>(x) : IntRange<To>::lo;
      } else {
        return static_cast<To>(convert<From, int64_t>(x));
      }
    } else {
      return static_cast<To>(static_cast<uint32_t>(convert<From, int32_t>(x)));
    }
  } else if constexpr (std::is_integral_v<From> && std::is_integral_v<To>) {
    return static_cast<To>(static_cast<std::make_unsigned_t<To>>(x));  // modular, never UB
  } else {
    return static_cast<To>(x);
  }
}

template <typename From, typename To>
__global__ void cast_kernel(const From* __restrict__ x, To* __restrict__ out, int64_t n) {
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) out[i] = convert<From, To>(x[i]);
}

template <typename From, typename To>
void launch_cast_typed(const void* x, void* out, int64_t n, cudaStream_t stream) {
  cast_kernel<From, To><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(static_cast<const From*>(x),
                                                                             static_cast<To*>(out), n);
}

template <typename From>
bool launch_cast_from(const void* x, DType to, void* out, int64_t n, cudaStream_t stream) {
  switch (to) {
    case DType::f32: launch_cast_typed<From, float>(x, out, n, stream); return true;
    case DType::f64: launch_cast_typed<From, double>(x, out, n, stream); return true;
    case DType::f16: launch_cast_typed<From, __half>(x, out, n, stream); return true;
    case DType::i8: launch_cast_typed<From, int8_t>(x, out, n, stream); return true;
    case DType::u8: launch_cast_typed<From, uint8_t>(x, out, n, stream); return true;
    case DType::i32: launch_cast_typed<From, int32_t>(x, out, n, stream); return true;
    case DType::i64: launch_cast_typed<From, int64_t>(x, out, n, stream); return true;
    case DType::boolean: launch_cast_typed<From, bool>(x, out, n, stream); return true;
    case DType::bf16: launch_cast_typed<From, __nv_bfloat16>(x, out, n, stream); return true;
  }
  return false;
}

// ---- reduce --------------------------------------------------------------------------------------

template <ReduceOp OP>
__device__ __forceinline__ float reduce_init() {
  if constexpr (OP == ReduceOp::max) {
    return -INFINITY;
  } else if constexpr (OP == ReduceOp::min) {
    return INFINITY;
  } else if constexpr (OP == ReduceOp::prod) {
    return 1.0f;
  } else {
    return 0.0f;
  }
}

// NaN propagates through max and min as in numpy.
template <ReduceOp OP>
__device__ __forceinline__ float reduce_step(float acc, float v) {
  if constexpr (OP == ReduceOp::max) {
    return (isnan(acc) || isnan(v)) ? acc + v : fmaxf(acc, v);
  } else if constexpr (OP == ReduceOp::min) {
    return (isnan(acc) || isnan(v)) ? acc + v : fminf(acc, v);
  } else if constexpr (OP == ReduceOp::prod) {
    return acc * v;
  } else {
    return acc + v;
  }
}

template <ReduceOp OP>
__device__ __forceinline__ float warp_reduce(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = reduce_step<OP>(v, __shfl_xor_sync(detail::kFullMask, v, offset));
  }
  return v;
}

// Reducing the last axis (inner == 1): one warp per output, reading its row coalesced.
template <ReduceOp OP>
__global__ void reduce_rows_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t len) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * detail::kWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarps + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const float* p = x + row * len;
    float acc = reduce_init<OP>();
    for (int64_t c = lane; c < len; c += 32) acc = reduce_step<OP>(acc, p[c]);
    acc = warp_reduce<OP>(acc);
    if (lane == 0) out[row] = OP == ReduceOp::mean ? acc / static_cast<float>(len) : acc;
  }
}

// Any other run of axes: one thread per output, neighbouring threads reading neighbouring inner
// elements (coalesced across the warp).
template <ReduceOp OP>
__global__ void reduce_inner_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t outer, int64_t len,
                                    int64_t inner) {
  const int64_t n = outer * inner;
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    const int64_t o = i / inner, in = i % inner;
    const float* p = x + o * len * inner + in;
    float acc = reduce_init<OP>();
    for (int64_t c = 0; c < len; ++c) acc = reduce_step<OP>(acc, p[c * inner]);
    out[i] = OP == ReduceOp::mean ? acc / static_cast<float>(len) : acc;
  }
}

template <ReduceOp OP>
void launch_reduce_typed(const float* x, float* out, int64_t outer, int64_t len, int64_t inner, cudaStream_t stream) {
  if (inner == 1) {
    const int64_t blocks = (outer + detail::kWarps - 1) / detail::kWarps;
    const unsigned grid = detail::grid_for(blocks * detail::kThreads);
    reduce_rows_kernel<OP><<<grid, detail::kThreads, 0, stream>>>(x, out, outer, len);
  } else {
    reduce_inner_kernel<OP><<<detail::grid_for(outer * inner), detail::kThreads, 0, stream>>>(x, out, outer, len,
                                                                                             inner);
  }
}

// ---- convolution and pooling -------------------------------------------------------------------

// cols[n, (c, i, j), (oh, ow)] = x[n, c, oh * sh - pt + i * dh, ow * sw - pl + j * dw], 0 outside:
// the matrix a convolution multiplies by its weights (one GEMM per image).
__global__ void im2col_kernel(const float* __restrict__ x, float* __restrict__ cols, Conv2dGeometry g) {
  const int64_t plane = g.oh * g.ow;
  const int64_t rows = g.c * g.kh * g.kw;
  const int64_t n_total = g.n * rows * plane;
  for (int64_t i = detail::global_thread(); i < n_total; i += detail::grid_threads()) {
    const int64_t p = i % plane;
    const int64_t r = (i / plane) % rows;
    const int64_t n = i / (plane * rows);
    const int64_t ow = p % g.ow, oh = p / g.ow;
    const int64_t kj = r % g.kw, ki = (r / g.kw) % g.kh, c = r / (g.kw * g.kh);
    const int64_t y = oh * g.sh - g.pt + ki * g.dh;
    const int64_t xw = ow * g.sw - g.pl + kj * g.dw;
    float v = 0.0f;
    if (y >= 0 && y < g.h && xw >= 0 && xw < g.w) v = x[((n * g.c + c) * g.h + y) * g.w + xw];
    cols[i] = v;
  }
}

// One output per thread: the max (NaN wins, as in numpy) or the sum times inv_count[oh, ow] of
// the taps inside the input.
template <bool MAX>
__global__ void pool2d_kernel(const float* __restrict__ x, float* __restrict__ out, Conv2dGeometry g,
                              const float* __restrict__ inv_count) {
  const int64_t plane = g.oh * g.ow;
  const int64_t n_total = g.n * g.c * plane;
  for (int64_t i = detail::global_thread(); i < n_total; i += detail::grid_threads()) {
    const int64_t p = i % plane, nc = i / plane;
    const int64_t ow = p % g.ow, oh = p / g.ow;
    const float* src = x + nc * g.h * g.w;
    float acc = MAX ? -INFINITY : 0.0f;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t y = oh * g.sh - g.pt + ki * g.dh;
      if (y < 0 || y >= g.h) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t xw = ow * g.sw - g.pl + kj * g.dw;
        if (xw < 0 || xw >= g.w) continue;
        const float v = src[y * g.w + xw];
        if constexpr (MAX) {
          acc = (v > acc || isnan(v)) && !isnan(acc) ? v : acc;
        } else {
          acc += v;
        }
      }
    }
    out[i] = MAX ? acc : acc * inv_count[p];
  }
}

// ---- comparisons, where -----------------------------------------------------------------------

// Offsets of up to three broadcast operands for each element of a dense output.
struct Broadcast3 {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[3][kMaxDims] = {};
};

__device__ __forceinline__ void broadcast_offsets(int64_t i, const Broadcast3& d, int64_t* off, int operands) {
  off[0] = off[1] = off[2] = 0;
  for (int k = d.ndim - 1; k >= 0; --k) {
    const int64_t c = i % d.shape[k];
    i /= d.shape[k];
    for (int j = 0; j < operands; ++j) off[j] += c * d.stride[j][k];
  }
}

template <typename T>
__global__ void compare_kernel(CompareOp op, const T* __restrict__ a, const T* __restrict__ b,
                               bool* __restrict__ out, int64_t n, Broadcast3 d) {
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    int64_t off[3];
    broadcast_offsets(i, d, off, 2);
    const T x = a[off[0]], y = b[off[1]];
    bool r = false;
    switch (op) {  // uniform across the grid
      case CompareOp::equal: r = x == y; break;
      case CompareOp::less: r = x < y; break;
      case CompareOp::less_equal: r = x <= y; break;
      case CompareOp::greater: r = x > y; break;
      case CompareOp::greater_equal: r = x >= y; break;
    }
    out[i] = r;
  }
}

template <typename T>
__global__ void where_kernel(const bool* __restrict__ cond, const T* __restrict__ a, const T* __restrict__ b,
                             T* __restrict__ out, int64_t n, Broadcast3 d) {
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    int64_t off[3];
    broadcast_offsets(i, d, off, 3);
    out[i] = cond[off[0]] ? a[off[1]] : b[off[2]];
  }
}

// ---- log-softmax, RMS norm, argmax -------------------------------------------------------------

// One warp per row: x - max - log(sum(exp(x - max))).
__global__ void log_softmax_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * detail::kWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarps + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const float* p = x + row * cols;
    float m = -INFINITY;
    for (int64_t c = lane; c < cols; c += 32) m = fmaxf(m, p[c]);
    m = detail::warp_max(m);
    float sum = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) sum += expf(p[c] - m);
    sum = detail::warp_sum(sum);
    const float lse = m + logf(sum);
    for (int64_t c = lane; c < cols; c += 32) out[row * cols + c] = p[c] - lse;
  }
}

// One warp per row: x * rsqrt(mean(x^2) + eps) * gamma.
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ gamma, float* __restrict__ out,
                                int64_t rows, int64_t cols, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * detail::kWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarps + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const float* p = x + row * cols;
    float ss = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) ss += p[c] * p[c];
    ss = detail::warp_sum(ss);
    const float rstd = rsqrtf(ss / static_cast<float>(cols) + eps);
    for (int64_t c = lane; c < cols; c += 32) out[row * cols + c] = p[c] * rstd * gamma[c];
  }
}

// One thread per output: the index of the max (min) along len; the first NaN wins as in numpy
// (the last one with select_last_index, which also takes the last of equal extremes).
__global__ void arg_kernel(const float* __restrict__ x, int64_t* __restrict__ out, int64_t outer, int64_t len,
                           int64_t inner, bool is_max, bool last) {
  const int64_t n = outer * inner;
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    const int64_t o = i / inner, in = i % inner;
    const float* p = x + o * len * inner + in;
    float best = p[0];
    int64_t at = 0;
    for (int64_t l = 1; l < len; ++l) {
      const float v = p[l * inner];
      bool take;
      if (isnan(best)) {
        take = last && isnan(v);
      } else if (isnan(v)) {
        take = true;
      } else {
        take = is_max ? (v > best || (last && v == best)) : (v < best || (last && v == best));
      }
      if (take) {
        best = v;
        at = l;
      }
    }
    out[i] = at;
  }
}

}  // namespace

cudaError_t launch_strided_copy(const void* src, void* dst, int elem_size, int ndim, const int64_t* shape,
                                const int64_t* src_stride, cudaStream_t stream) {
  CopyDims d;
  d.ndim = ndim;
  int64_t n = 1;
  for (int k = 0; k < ndim; ++k) {
    d.shape[k] = shape[k];
    d.stride[k] = src_stride[k];
    n *= shape[k];
  }
  if (n <= 0) return cudaSuccess;
  detail::clear_stale_error();
  switch (elem_size) {
    case 1: launch_copy_typed<uint8_t>(src, dst, n, d, stream); break;
    case 2: launch_copy_typed<uint16_t>(src, dst, n, d, stream); break;
    case 4: launch_copy_typed<uint32_t>(src, dst, n, d, stream); break;
    case 8: launch_copy_typed<unsigned long long>(src, dst, n, d, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return detail::launch_status();
}

cudaError_t launch_gather(const void* data, int elem_size, const void* indices, bool indices64, void* out,
                          int64_t outer, int64_t count, int64_t dim, int64_t row, unsigned long long* error,
                          cudaStream_t stream) {
  if (outer * count * row <= 0) return cudaSuccess;
  detail::clear_stale_error();
  switch (elem_size) {
    case 1: launch_gather_typed<uint8_t>(data, indices, indices64, out, outer, count, dim, row, error, stream); break;
    case 2: launch_gather_typed<uint16_t>(data, indices, indices64, out, outer, count, dim, row, error, stream); break;
    case 4: launch_gather_typed<uint32_t>(data, indices, indices64, out, outer, count, dim, row, error, stream); break;
    case 8:
      launch_gather_typed<unsigned long long>(data, indices, indices64, out, outer, count, dim, row, error, stream);
      break;
    default: return cudaErrorInvalidValue;
  }
  return detail::launch_status();
}

cudaError_t launch_cast(const void* x, DType from, void* out, DType to, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  detail::clear_stale_error();
  bool ok = false;
  switch (from) {
    case DType::f32: ok = launch_cast_from<float>(x, to, out, n, stream); break;
    case DType::f64: ok = launch_cast_from<double>(x, to, out, n, stream); break;
    case DType::f16: ok = launch_cast_from<__half>(x, to, out, n, stream); break;
    case DType::i8: ok = launch_cast_from<int8_t>(x, to, out, n, stream); break;
    case DType::u8: ok = launch_cast_from<uint8_t>(x, to, out, n, stream); break;
    case DType::i32: ok = launch_cast_from<int32_t>(x, to, out, n, stream); break;
    case DType::i64: ok = launch_cast_from<int64_t>(x, to, out, n, stream); break;
    case DType::boolean: ok = launch_cast_from<bool>(x, to, out, n, stream); break;
    case DType::bf16: ok = launch_cast_from<__nv_bfloat16>(x, to, out, n, stream); break;
  }
  return ok ? detail::launch_status() : cudaErrorInvalidValue;
}

cudaError_t launch_im2col(const float* x, float* cols, const Conv2dGeometry& g, cudaStream_t stream) {
  const int64_t n = g.n * g.c * g.kh * g.kw * g.oh * g.ow;
  if (n <= 0) return cudaSuccess;
  detail::clear_stale_error();
  im2col_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(x, cols, g);
  return detail::launch_status();
}

cudaError_t launch_pool2d(bool is_max, const float* x, float* out, const Conv2dGeometry& g, const float* inv_count,
                          cudaStream_t stream) {
  const int64_t n = g.n * g.c * g.oh * g.ow;
  if (n <= 0) return cudaSuccess;
  detail::clear_stale_error();
  if (is_max) {
    pool2d_kernel<true><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(x, out, g, inv_count);
  } else {
    pool2d_kernel<false><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(x, out, g, inv_count);
  }
  return detail::launch_status();
}

namespace {
Broadcast3 make_broadcast(int ndim, const int64_t* out_shape, const int64_t* const* strides, int operands) {
  Broadcast3 d;
  d.ndim = ndim;
  for (int k = 0; k < ndim; ++k) {
    d.shape[k] = out_shape[k];
    for (int j = 0; j < operands; ++j) d.stride[j][k] = strides[j][k];
  }
  return d;
}

int64_t count(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int k = 0; k < ndim; ++k) n *= shape[k];
  return n;
}
}  // namespace

cudaError_t launch_compare(CompareOp op, DType dtype, const void* a, const int64_t* a_strides, const void* b,
                           const int64_t* b_strides, bool* out, const int64_t* out_shape, int ndim,
                           cudaStream_t stream) {
  const int64_t n = count(ndim, out_shape);
  if (n <= 0) return cudaSuccess;
  const int64_t* strides[2] = {a_strides, b_strides};
  const Broadcast3 d = make_broadcast(ndim, out_shape, strides, 2);
  detail::clear_stale_error();
  const unsigned grid = detail::grid_for(n);
  switch (dtype) {
    case DType::f32:
      compare_kernel<float><<<grid, detail::kThreads, 0, stream>>>(op, static_cast<const float*>(a),
                                                                   static_cast<const float*>(b), out, n, d);
      break;
    case DType::i32:
      compare_kernel<int32_t><<<grid, detail::kThreads, 0, stream>>>(op, static_cast<const int32_t*>(a),
                                                                     static_cast<const int32_t*>(b), out, n, d);
      break;
    case DType::i64:
      compare_kernel<int64_t><<<grid, detail::kThreads, 0, stream>>>(op, static_cast<const int64_t*>(a),
                                                                     static_cast<const int64_t*>(b), out, n, d);
      break;
    default: return cudaErrorInvalidValue;
  }
  return detail::launch_status();
}

cudaError_t launch_where(int elem_size, const bool* cond, const int64_t* c_strides, const void* a,
                         const int64_t* a_strides, const void* b, const int64_t* b_strides, void* out,
                         const int64_t* out_shape, int ndim, cudaStream_t stream) {
  const int64_t n = count(ndim, out_shape);
  if (n <= 0) return cudaSuccess;
  const int64_t* strides[3] = {c_strides, a_strides, b_strides};
  const Broadcast3 d = make_broadcast(ndim, out_shape, strides, 3);
  detail::clear_stale_error();
  const unsigned grid = detail::grid_for(n);
  switch (elem_size) {
    case 1:
      where_kernel<uint8_t><<<grid, detail::kThreads, 0, stream>>>(
          cond, static_cast<const uint8_t*>(a), static_cast<const uint8_t*>(b), static_cast<uint8_t*>(out), n, d);
      break;
    case 2:
      where_kernel<uint16_t><<<grid, detail::kThreads, 0, stream>>>(
          cond, static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b), static_cast<uint16_t*>(out), n, d);
      break;
    case 4:
      where_kernel<uint32_t><<<grid, detail::kThreads, 0, stream>>>(
          cond, static_cast<const uint32_t*>(a), static_cast<const uint32_t*>(b), static_cast<uint32_t*>(out), n, d);
      break;
    case 8:
      where_kernel<unsigned long long><<<grid, detail::kThreads, 0, stream>>>(
          cond, static_cast<const unsigned long long*>(a), static_cast<const unsigned long long*>(b),
          static_cast<unsigned long long*>(out), n, d);
      break;
    default: return cudaErrorInvalidValue;
  }
  return detail::launch_status();
}

cudaError_t launch_log_softmax(const float* x, float* out, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  detail::clear_stale_error();
  const int64_t blocks = (rows + detail::kWarps - 1) / detail::kWarps;
  log_softmax_kernel<<<detail::grid_for(blocks * detail::kThreads), detail::kThreads, 0, stream>>>(x, out, rows, cols);
  return detail::launch_status();
}

cudaError_t launch_rms_norm(const float* x, const float* gamma, float* out, int64_t rows, int64_t cols, float eps,
                            cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  detail::clear_stale_error();
  const int64_t blocks = (rows + detail::kWarps - 1) / detail::kWarps;
  rms_norm_kernel<<<detail::grid_for(blocks * detail::kThreads), detail::kThreads, 0, stream>>>(x, gamma, out, rows,
                                                                                              cols, eps);
  return detail::launch_status();
}

cudaError_t launch_arg(bool is_max, bool last, const float* x, int64_t* out, int64_t outer, int64_t len, int64_t inner,
                       cudaStream_t stream) {
  if (outer * inner <= 0 || len <= 0) return cudaSuccess;
  detail::clear_stale_error();
  arg_kernel<<<detail::grid_for(outer * inner), detail::kThreads, 0, stream>>>(x, out, outer, len, inner, is_max,
                                                                              last);
  return detail::launch_status();
}

cudaError_t launch_reduce(ReduceOp op, const float* x, float* out, int64_t outer, int64_t len, int64_t inner,
                          cudaStream_t stream) {
  if (outer * inner <= 0) return cudaSuccess;
  detail::clear_stale_error();
  switch (op) {
    case ReduceOp::sum: launch_reduce_typed<ReduceOp::sum>(x, out, outer, len, inner, stream); break;
    case ReduceOp::mean: launch_reduce_typed<ReduceOp::mean>(x, out, outer, len, inner, stream); break;
    case ReduceOp::max: launch_reduce_typed<ReduceOp::max>(x, out, outer, len, inner, stream); break;
    case ReduceOp::min: launch_reduce_typed<ReduceOp::min>(x, out, outer, len, inner, stream); break;
    case ReduceOp::prod: launch_reduce_typed<ReduceOp::prod>(x, out, outer, len, inner, stream); break;
  }
  return detail::launch_status();
}

}  // namespace phi::cuda
