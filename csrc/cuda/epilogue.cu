// The GEMM epilogue on the GPU: c = act(c + bias + residual), one pass over c after cuBLAS wrote
// it (read c and residual once, write c once), so a linear layer costs the product plus one
// memory-bound sweep instead of three.
#include "cuda/device_common.cuh"

namespace phi::cuda {
namespace {

using detail::activate;

// The column of each element is tracked incrementally: one modulo per thread, then an add and a
// conditional subtract per grid-stride step (the step is less than n), instead of a 64-bit
// modulo per element, which would cost more than the memory traffic.

// Scalar path: any n, any alignment.
template <Act A>
__global__ void gemm_epilogue_kernel(float* __restrict__ c, int64_t total, int64_t n,
                                     const float* __restrict__ bias, const float* __restrict__ residual, float lo,
                                     float hi) {
  const int64_t stride = detail::grid_threads();
  const int64_t col_step = stride % n;
  int64_t i = detail::global_thread();
  int64_t col = i % n;
  for (; i < total; i += stride) {
    float v = c[i];
    if (bias != nullptr) v += bias[col];
    if (residual != nullptr) v += residual[i];
    c[i] = activate<A>(v, lo, hi);
    col += col_step;
    if (col >= n) col -= n;
  }
}

// 16-byte path: n % 4 == 0 and every pointer 16-byte aligned, so a float4 never straddles a row
// and its bias slice bias[col..col+3] is itself an aligned float4.
template <Act A>
__global__ void gemm_epilogue_vec_kernel(float4* __restrict__ c, int64_t total4, int64_t n,
                                         const float* __restrict__ bias, const float4* __restrict__ residual,
                                         float lo, float hi) {
  const int64_t stride = detail::grid_threads();
  const int64_t col_step = (stride * 4) % n;
  int64_t i = detail::global_thread();
  int64_t col = (i * 4) % n;
  for (; i < total4; i += stride) {
    float4 v = c[i];
    if (bias != nullptr) {
      const float4 b = *reinterpret_cast<const float4*>(bias + col);
      v.x += b.x;
      v.y += b.y;
      v.z += b.z;
      v.w += b.w;
    }
    if (residual != nullptr) {
      const float4 r = residual[i];
      v.x += r.x;
      v.y += r.y;
      v.z += r.z;
      v.w += r.w;
    }
    c[i] = make_float4(activate<A>(v.x, lo, hi), activate<A>(v.y, lo, hi), activate<A>(v.z, lo, hi),
                       activate<A>(v.w, lo, hi));
    col += col_step;
    if (col >= n) col -= n;
  }
}

template <Act A>
void launch(float* c, int64_t m, int64_t n, const Epilogue& ep, cudaStream_t stream) {
  const int64_t total = m * n;
  const bool vec = n % 4 == 0 && detail::aligned16(c) && detail::aligned16(ep.bias) &&
                   detail::aligned16(ep.residual);
  if (vec) {
    gemm_epilogue_vec_kernel<A><<<detail::grid_for(total / 4), detail::kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(c), total / 4, n, ep.bias, reinterpret_cast<const float4*>(ep.residual),
        ep.clip_min, ep.clip_max);
  } else {
    gemm_epilogue_kernel<A><<<detail::grid_for(total), detail::kThreads, 0, stream>>>(
        c, total, n, ep.bias, ep.residual, ep.clip_min, ep.clip_max);
  }
}

}  // namespace

cudaError_t launch_gemm_epilogue(float* c, int64_t m, int64_t n, const Epilogue& ep, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || ep.empty()) return cudaSuccess;
  detail::clear_stale_error();
  switch (ep.act) {
    case Act::none: launch<Act::none>(c, m, n, ep, stream); break;
    case Act::relu: launch<Act::relu>(c, m, n, ep, stream); break;
    case Act::gelu: launch<Act::gelu>(c, m, n, ep, stream); break;
    case Act::gelu_tanh: launch<Act::gelu_tanh>(c, m, n, ep, stream); break;
    case Act::tanh: launch<Act::tanh>(c, m, n, ep, stream); break;
    case Act::sigmoid: launch<Act::sigmoid>(c, m, n, ep, stream); break;
    case Act::clip: launch<Act::clip>(c, m, n, ep, stream); break;
  }
  return detail::launch_status();
}

}  // namespace phi::cuda
