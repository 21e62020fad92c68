#include "core/packed_gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <tuple>
#include <vector>

#include "core/cpu_features.h"
#include "core/threadpool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PHI_PACKED_X86 1
#include <immintrin.h>
#endif

namespace phi {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr size_t kAlign = 64;
size_t align_floats(int64_t floats) { return (static_cast<size_t>(floats) * sizeof(float) + kAlign - 1) / kAlign * kAlign; }

// ---- the micro-kernel --------------------------------------------------------------------------
//
// Written once with GCC/Clang vector extensions and instantiated per ISA inside a function
// compiled for that ISA (below): W floats per vector, NV vectors per row (NR = W * NV columns), MR
// rows. The K loop is the classic outer-product form: per k, NV vector loads of B, MR broadcasts
// of A, MR * NV FMAs into accumulators that never leave registers (AVX-512 6 x 64: 24 of the 32
// zmm registers; AVX2 6 x 16: 12 of the 16 ymm registers), so it is bound by the FMA ports.

// (typedefs in a struct: GCC ignores vector attributes on alias templates)
template <int W>
struct VecTypes {
  typedef float vec __attribute__((vector_size(W * sizeof(float))));
  typedef float unaligned __attribute__((vector_size(W * sizeof(float)), aligned(alignof(float))));
};
template <int W>
using Vec = typename VecTypes<W>::vec;
template <int W>
using UVec = typename VecTypes<W>::unaligned;

// Vectors cross no call boundary (these helpers are always inlined), so the ABI GCC warns about
// for vector returns compiled without AVX never applies.
#pragma GCC diagnostic ignored "-Wpsabi"
template <int W>
PHI_ALWAYS_INLINE Vec<W> load(const float* p) {
  return *reinterpret_cast<const UVec<W>*>(p);
}
template <int W>
PHI_ALWAYS_INLINE void store(float* p, const Vec<W>& v) {
  *reinterpret_cast<UVec<W>*>(p) = v;
}

// W bfloat16 values widened to float32: a bfloat16 is the upper half of a float32's bits.
template <int W>
struct Bf16Types {
  typedef uint16_t half __attribute__((vector_size(W * sizeof(uint16_t)), aligned(alignof(uint16_t))));
  typedef uint32_t word __attribute__((vector_size(W * sizeof(uint32_t))));
};
template <int W>
PHI_ALWAYS_INLINE Vec<W> load_bf16(const uint16_t* p) {
  using T = Bf16Types<W>;
  const typename T::word bits = __builtin_convertvector(*reinterpret_cast<const typename T::half*>(p), typename T::word) << 16;
  return __builtin_bit_cast(Vec<W>, bits);
}

// One call: C[0:rows, 0:cols] of a tile from kc rows of a packed A slice and a B panel slice.
struct TileArgs {
  int64_t kc = 0;
  const float* a = nullptr;  // packed A: kc groups of `rows` floats (k-major); or A itself
  int64_t lda = 0;           // A read in place (row-major, this row stride); 0: A is packed
  const float* b = nullptr;  // B panel slice: kc rows of NR floats, row stride bs
  const uint16_t* b16 = nullptr;  // or the same in bfloat16 (packed weights stored as bfloat16)
  int64_t bs = 0;
  float* c = nullptr;  // the tile's top-left element in C
  int64_t ldc = 0;
  int cols = 0;             // valid columns, <= NR (the last panel may be partial)
  bool accumulate = false;  // add to the partial sums C holds (a later K block)
  bool finish = true;       // the last K block: apply alpha and the epilogue
  float alpha = 1.0f;
  const float* row_alpha = nullptr;  // or a factor per row of the tile (the last K block)
  const Epilogue* ep = nullptr;
  int64_t row0 = 0, col0 = 0;  // the tile's position in C, for bias and residual
  // Prefetched as the loop runs, a row of NR floats per k: address pf + k * pf_step bytes (0:
  // none). An integer, since it may point past the end of B, where a pointer may not.
  uintptr_t pf = 0;
  uintptr_t pf_step = 0;
  // A read in place: the next row block's rows (lda apart), prefetched a line at a time through
  // the K loop while this tile computes (0: none). Each row of A is only K floats long, too short
  // a stream for the hardware prefetchers to ramp up on before it ends.
  uintptr_t apf = 0;
  // Prefetch the tile's rows of C for writing before the K loop (a first write of C).
  bool cpf = false;
};

// DIRECT: A is read where it lies (row i of the tile at a + i * lda, k along the row) instead of
// from a packed copy: the MR rows are MR sequential streams, which L1 and the prefetchers serve as
// well as one packed stream, and the copy (a transpose, and a pass over all of A from memory per
// product) is saved.
// BF16: B is the bfloat16 copy (t.b16), widened as it is loaded: half the bytes of B to stream,
// which is what a product of few rows waits on.
template <int W, int NV, int MR, bool DIRECT, bool BF16>
PHI_ALWAYS_INLINE void tile_kernel(const TileArgs& t) {
  using V = Vec<W>;
  constexpr int NR = W * NV;
  const bool full = t.cols == NR;
  alignas(64) float tile[MR * NR];  // partial tiles and activations go through it (in L1)
  V acc[MR][NV];
  if (t.accumulate && !full) {
    for (int i = 0; i < MR; ++i) {
      std::memcpy(tile + i * NR, t.c + i * t.ldc, sizeof(float) * t.cols);
      std::memset(tile + i * NR + t.cols, 0, sizeof(float) * (NR - t.cols));
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j)
      acc[i][j] = !t.accumulate ? V{} : full ? load<W>(t.c + i * t.ldc + j * W) : load<W>(tile + i * NR + j * W);

  const float* PHI_RESTRICT a = t.a;
  [[maybe_unused]] const float* PHI_RESTRICT b = t.b;
  [[maybe_unused]] const uint16_t* PHI_RESTRICT b16 = t.b16;
  const int64_t bs = t.bs;
  [[maybe_unused]] const int64_t lda = t.lda;
  // One k: NV vector loads of B, then per row one broadcast of A shared by the row's FMAs.
  auto step = [&]() __attribute__((always_inline)) {
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = BF16 ? load_bf16<W>(b16 + j * W) : load<W>(b + j * W);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float ai = DIRECT ? a[i * lda] : a[i];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
    }
    a += DIRECT ? 1 : MR;
    if constexpr (BF16) b16 += bs;
    else b += bs;
  };
  if (t.cpf) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j <= NR * 4; j += 64) __builtin_prefetch(t.c + i * t.ldc + j / 4, 1, 3);  // a row may start mid-line
  }
  // The loop with prefetches apart (it tests them per k), so that the common one has none.
  if (t.pf || t.apf) {
    uintptr_t pf = t.pf;
    // A's lines: row k % MR, line k / MR of the row, until every line of the next block's rows
    // (kc floats each, one line more for a row that starts mid-line) is asked for.
    const int64_t a_lines = t.apf ? MR * ((t.kc * 4 + 63) / 64 + 1) : 0;
    const uintptr_t a_row_bytes = static_cast<uintptr_t>(t.lda) * 4;
    for (int64_t k = 0; k < t.kc; ++k) {
      if (t.pf) {
#pragma GCC unroll 4
        for (int j = 0; j < NR * (BF16 ? 2 : 4); j += 64) __builtin_prefetch(reinterpret_cast<const void*>(pf + j), 0, 3);
        pf += t.pf_step;
      }
      if (k < a_lines)
        __builtin_prefetch(reinterpret_cast<const void*>(t.apf + (k % MR) * a_row_bytes + (k / MR) * 64), 0, 3);
      step();
    }
  } else {
    for (int64_t k = 0; k < t.kc; ++k) step();
  }

  const Epilogue& ep = *t.ep;
  if (t.finish && t.alpha != 1.0f) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] *= t.alpha;
  }
  if (t.finish && t.row_alpha) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] *= t.row_alpha[i];
  }
  if (full) {
    if (t.finish && ep.bias) {
      V bias[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bias[j] = load<W>(ep.bias + t.col0 + j * W);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] += bias[j];
    }
    if (t.finish && ep.residual) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const float* r = ep.residual + (t.row0 + i) * ep.ldr + t.col0;
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] += load<W>(r + j * W);
      }
    }
    if (!t.finish || ep.act == math::Act::none) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) store<W>(t.c + i * t.ldc + j * W, acc[i][j]);
      return;
    }
    if (ep.act == math::Act::gelu || ep.act == math::Act::gelu_tanh || ep.act == math::Act::relu) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) {
          const V v = acc[i][j];
          // relu as numpy's maximum(x, 0) would not keep NaN; x < 0 ? 0 : x does, as math::relu
          const V o = ep.act == math::Act::gelu        ? math::gelu_of(v)
                      : ep.act == math::Act::gelu_tanh ? math::gelu_tanh_of(v)
                                                       : (v < 0.0f ? V{} : v);
          store<W>(t.c + i * t.ldc + j * W, o);
        }
      return;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) store<W>(tile + i * NR + j * W, acc[i][j]);
  if (t.finish) {
    if (full) {
      apply_activation(tile, MR * NR, ep.act, ep.clip_min, ep.clip_max);
    } else {
      apply_epilogue(tile, MR, t.cols, NR, ep, t.row0, t.col0);  // bias, residual: valid columns only
    }
  }
  if (full) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) store<W>(t.c + i * t.ldc + j * W, load<W>(tile + i * NR + j * W));
  } else {
    for (int i = 0; i < MR; ++i) std::memcpy(t.c + i * t.ldc, tile + i * NR, sizeof(float) * t.cols);
  }
}

template <int W, int NV, int MR, bool DIRECT, bool BF16>
PHI_ALWAYS_INLINE void tile_rows_as(int rows, const TileArgs& t) {
  static_assert(MR >= 1 && MR <= 8, "row tiles of 1..8");
  switch (rows) {
    case 1: return tile_kernel<W, NV, 1, DIRECT, BF16>(t);
    case 2: if constexpr (MR >= 2) return tile_kernel<W, NV, 2, DIRECT, BF16>(t); break;
    case 3: if constexpr (MR >= 3) return tile_kernel<W, NV, 3, DIRECT, BF16>(t); break;
    case 4: if constexpr (MR >= 4) return tile_kernel<W, NV, 4, DIRECT, BF16>(t); break;
    case 5: if constexpr (MR >= 5) return tile_kernel<W, NV, 5, DIRECT, BF16>(t); break;
    case 6: if constexpr (MR >= 6) return tile_kernel<W, NV, 6, DIRECT, BF16>(t); break;
    case 7: if constexpr (MR >= 7) return tile_kernel<W, NV, 7, DIRECT, BF16>(t); break;
    case 8: if constexpr (MR >= 8) return tile_kernel<W, NV, 8, DIRECT, BF16>(t); break;
    default: break;
  }
  throw Error(ErrorCode::internal, "gemm", "packed kernel called with " + std::to_string(rows) + " rows");
}

// The row count is a template argument so that every loop above unrolls fully; a call covers
// `rows` <= MR rows (the last row block of C may be short).
template <int W, int NV, int MR>
PHI_ALWAYS_INLINE void tile_rows(int rows, const TileArgs& t) {
  if (t.b16) {
    if (t.lda) return tile_rows_as<W, NV, MR, true, true>(rows, t);
    return tile_rows_as<W, NV, MR, false, true>(rows, t);
  }
  if (t.lda) return tile_rows_as<W, NV, MR, true, false>(rows, t);
  tile_rows_as<W, NV, MR, false, false>(rows, t);
}

// ---- transposes (packing B given n x k, and A) -----------------------------------------------

// dst[k * nr + j] = src[j * ld + k] for j < cols, k < kc: a block of B read row by row (its
// transpose is a slice of a panel of op(B) when B is given n x k).
void transpose_scalar(const float* PHI_RESTRICT src, int64_t ld, int64_t kc, int64_t cols, int nr,
                      float* PHI_RESTRICT dst) {
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t k = 0; k < kc; ++k) dst[k * nr + j] = src[j * ld + k];
}

#if defined(PHI_PACKED_X86)
// The same in 8 x 8 blocks (8 row loads, 24 shuffles, 8 row stores) instead of one scattered store
// per element, which made packing a transposed B slower than the product it feeds (2x384x1536 with
// B packed per call: 643 us element by element, 258 us in blocks; BLAS took 419 us).
__attribute__((target("avx2,fma"))) void transpose_avx2(const float* PHI_RESTRICT src, int64_t ld, int64_t kc,
                                                        int64_t cols, int nr, float* PHI_RESTRICT dst) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const float* s = src + j * ld;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ld + k);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + (k + i) * nr + j, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (k + i + 4) * nr + j, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
    transpose_scalar(s + k, ld, kc - k, 8, nr, dst + k * nr + j);
  }
  transpose_scalar(src + j * ld, ld, kc, cols - j, nr, dst + j);
}
#endif

// ---- dispatch ----------------------------------------------------------------------------------

// One function per ISA, each compiled for that ISA only and entered only when the CPU has it (see
// kernels()): the rest of the core picks clones by target_clones, but the register tile (and so the
// packed layout of B) differs per ISA, so the choice is made here, once, and recorded in PackedB.
using TileFn = void (*)(int rows, const TileArgs& t);

#if defined(PHI_PACKED_X86)
// AVX-512: 6 x 64 rather than 8 x 48. Both run at 99 % of the FMA peak with their operands in
// cache, but 64 columns divide the widths models use (384, 1152, 1536 and every power of two from
// 64), where 48 leaves a partial panel at each power of two (256: 11 % of the work wasted).
__attribute__((target("avx512f,avx2,fma"))) void tile_avx512(int rows, const TileArgs& t) { tile_rows<16, 4, 6>(rows, t); }
__attribute__((target("avx512f,avx2,fma"))) void tile_avx512_narrow(int rows, const TileArgs& t) { tile_rows<16, 2, 6>(rows, t); }
__attribute__((target("avx2,fma"))) void tile_avx2(int rows, const TileArgs& t) { tile_rows<8, 2, 6>(rows, t); }
#endif
// SSE2 on x86-64 without AVX2, NEON on aarch64: 12 accumulators fit 16 registers.
void tile_portable(int rows, const TileArgs& t) { tile_rows<4, 2, 6>(rows, t); }

using TransposeFn = void (*)(const float* src, int64_t ld, int64_t kc, int64_t cols, int nr, float* dst);

struct KernelSet {
  PackedTile tile;
  TileFn fn = nullptr;
  TransposeFn transpose = nullptr;
  int narrow_nr = 0;  // a narrower panel's kernel, for micro_tile(narrow)
  TileFn narrow = nullptr;
};

const KernelSet& kernels() {
  static const KernelSet set = [] {
#if defined(PHI_PACKED_X86)
    const CpuFeatures& f = cpu_features();
    if (f.avx512f && f.avx2 && f.fma)
      return KernelSet{{6, 64, "avx512"}, tile_avx512, transpose_avx2, 32, tile_avx512_narrow};
    if (f.avx2 && f.fma) return KernelSet{{6, 16, "avx2"}, tile_avx2, transpose_avx2, 16, tile_avx2};
#endif
    return KernelSet{{6, 8, "portable"}, tile_portable, transpose_scalar, 8, tile_portable};
  }();
  return set;
}

// ---- packing -----------------------------------------------------------------------------------

}  // namespace

// (declared in packed_gemm.h; the attention kernel packs its K and V panels with it too)
void pack_b_panel(const float* b, int64_t ldb, bool trans_b, int64_t k0, int64_t kc, int64_t j0, int64_t cols, int nr,
                  float* PHI_RESTRICT dst) {
  if (!trans_b) {
    for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * nr, b + (k0 + k) * ldb + j0, sizeof(float) * cols);
  } else {
    kernels().transpose(b + j0 * ldb + k0, ldb, kc, cols, nr, dst);
  }
  for (int64_t k = 0; k < kc; ++k) std::fill(dst + k * nr + cols, dst + (k + 1) * nr, 0.0f);
}

namespace {

// Rows [i0, i0 + rows) of op(A), k-major: element (i0 + i, k) at dst[k * rows + i]. For A given
// row-major that is a transpose, done in 8 x 8 blocks where the CPU has AVX2: the caller packs A
// alone before the threads start, so a slow copy would cost twice on two threads.
void pack_a(const GemmArgs& g, int64_t i0, int rows, float* PHI_RESTRICT dst) {
  if (g.trans_a) {
    for (int64_t k = 0; k < g.k; ++k) std::memcpy(dst + k * rows, g.a + k * g.lda + i0, sizeof(float) * rows);
    return;
  }
  kernels().transpose(g.a + i0 * g.lda, g.lda, g.k, rows, rows, dst);
}

// ---- blocking ----------------------------------------------------------------------------------

// A B panel is reused by every row block of A. Kept below this many bytes it stays in L2 (2 MiB
// per core here, 1 MiB or more on most x86 CPUs of the last decade) between its first use and the
// last; a longer K is cut into blocks, with partial sums kept in C. Blocks small enough for L1
// measured slower (K blocks of 128 or 256: 3-7 % at 16..128 rows, K = 384 and 1536): the kernel
// needs 16 bytes of B a cycle, which L2 delivers, and a block costs a pass over C.
constexpr int64_t kPanelBytes = 512 * 1024;
// Row blocks handled per pass over the panels, so that their rows of A stay in L2 too.
constexpr int64_t kABytes = 512 * 1024;
// Many rows and a K above kLongK: K blocks of at most kLongKBlock (split evenly), so that the MR
// rows of A a tile reads stay in L1 beside the B rows streaming through. Measured on a Zen 4 core
// (32 KiB L1), 1 thread, 2048^3: 99-102 GFLOP/s with K whole, 103-108 in blocks of 768 (three runs
// each); at K = 1536 (4096 x 1536 x 384) blocks were no faster (108-112 both ways).
constexpr int64_t kLongK = 1536;
constexpr int64_t kLongKBlock = 768;
// Work below which a helper thread costs more than it saves (a wake-up is a few microseconds):
// FLOPs, and bytes of B streamed (for few rows the product runs at memory speed).
constexpr double kFlopsPerThread = 2e6;
// Row blocks per thread from which the rows, not the panels, are split between threads.
constexpr int64_t kRowSplitBlocks = 32;
constexpr double kBytesPerThread = 512.0 * 1024;

// How far ahead of its use the kernel prefetches B: a hardware prefetcher following one stream
// per panel keeps too few reads in flight to reach the bandwidth of L3 (measured: M=8 went from
// 192 to 123 us, M=1 from 133 to 94 us at 384x1536 when prefetching 3-6 KiB ahead).
constexpr int64_t kPrefetchBytes = 8192;

struct Blocking {
  int64_t kc = 0;         // K block
  int64_t row_chunk = 1;  // row blocks per pass over the panels
};

// One row block reads each panel once: its K needs no blocking, unless the panel is packed per
// call into a buffer, which the block bounds.
Blocking blocking(int64_t m, int64_t k, bool prepacked) {
  const PackedTile& tile = kernels().tile;
  Blocking bl;
  bl.kc = std::max<int64_t>(k, 1);
  if (m > tile.mr || !prepacked)
    bl.kc = std::min(bl.kc, std::max<int64_t>(256, kPanelBytes / (tile.nr * sizeof(float))));
  if (m > tile.mr && bl.kc > kLongK) bl.kc = ceil_div(ceil_div(bl.kc, ceil_div(bl.kc, kLongKBlock)), 8) * 8;
  bl.row_chunk = std::max<int64_t>(1, kABytes / (tile.mr * bl.kc * static_cast<int64_t>(sizeof(float))));
  return bl;
}

int64_t scratch_slots() { return ThreadPool::global().capacity(); }

// Scratch of the calling thread: A packed for the kernel (when given transposed), and a panel
// buffer per task when B is not packed. Kept between calls up to kKeptScratch bytes (a serving
// thread reuses it on every call, and plans need no workspace for it), allocated per call beyond
// that. Pool tasks only read and write the caller's scratch while the caller waits for them.
constexpr size_t kKeptScratch = size_t{8} << 20;

class Scratch {
 public:
  explicit Scratch(size_t bytes) {
    thread_local Buffer kept;
    thread_local size_t kept_bytes = 0;
    if (bytes > kKeptScratch) {
      own_ = allocate(bytes);
      data_ = own_.get();
      return;
    }
    if (kept_bytes < bytes) {
      kept = allocate(bytes);
      kept_bytes = bytes;
    }
    data_ = kept.get();
  }
  std::byte* data() const { return data_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { ::operator delete(p, std::align_val_t{kAlign}); }
  };
  using Buffer = std::unique_ptr<std::byte, Free>;
  static Buffer allocate(size_t bytes) { return Buffer(static_cast<std::byte*>(::operator new(bytes, std::align_val_t{kAlign}))); }

  Buffer own_;
  std::byte* data_ = nullptr;
};

}  // namespace

// ---- PackedB -------------------------------------------------------------------------------------

const PackedTile& packed_tile() { return kernels().tile; }

bool bf16_weights(const std::string& op, const std::string& dtype) {
  PHI_CHECK(dtype == "float32" || dtype == "bfloat16", op,
            "weights' dtype must be 'float32' or 'bfloat16', got '" + dtype + "'");
  return dtype == "bfloat16";
}

int micro_nr(bool narrow) { return narrow ? kernels().narrow_nr : kernels().tile.nr; }

void micro_tile(int rows, int64_t kc, const float* a, int64_t lda, const float* b, int64_t bs, float* c, int64_t ldc,
                int cols, float alpha, bool narrow, const float* row_alpha) {
  static const Epilogue none;
  TileArgs t;
  t.row_alpha = row_alpha;
  t.kc = kc;
  t.a = a;
  t.lda = lda;
  t.b = b;
  t.bs = bs;
  t.c = c;
  t.ldc = ldc;
  t.cols = cols;
  t.alpha = alpha;
  t.ep = &none;
  const KernelSet& ks = kernels();
  (narrow ? ks.narrow : ks.fn)(rows, t);
}

void PackedB::AlignedFree::operator()(float* p) const { ::operator delete(p, std::align_val_t{kAlign}); }

namespace {
// float32 -> bfloat16, rounded to nearest even; NaN stays a (quiet) NaN of the same sign.
uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
}  // namespace

PackedB::PackedB(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n, int threads, bool bf16)
    : k_(k), n_(n), nr_(kernels().tile.nr), bf16_(bf16) {
  PHI_CHECK(k >= 0 && n >= 0, "gemm", "packed weights need k, n >= 0");
  size_t bytes = std::max<size_t>(nbytes(), kAlign);
  data_.reset(static_cast<float*>(::operator new(bytes, std::align_val_t{kAlign})));
  const int64_t np = panels();
  // Chunks of at least 256 Ki floats: smaller ones cost more to hand out than to copy.
  parallel_range(np, std::max(1, threads), ceil_div(1 << 18, std::max<int64_t>(1, k * nr_)),
                 [&](int64_t p0, int64_t p1) {
                   std::vector<float> tmp(bf16 ? static_cast<size_t>(k * nr_) : 0);
                   for (int64_t p = p0; p < p1; ++p) {
                     const int cols = static_cast<int>(std::min<int64_t>(nr_, n - p * nr_));
                     if (!bf16) {
                       pack_b_panel(b, ldb, trans_b, 0, k, p * nr_, cols, nr_, data_.get() + p * k * nr_);
                       continue;
                     }
                     pack_b_panel(b, ldb, trans_b, 0, k, p * nr_, cols, nr_, tmp.data());
                     uint16_t* dst = reinterpret_cast<uint16_t*>(data_.get()) + p * k * nr_;
                     for (size_t i = 0; i < tmp.size(); ++i) dst[i] = to_bf16(tmp[i]);
                   }
                 });
}

std::shared_ptr<const PackedB> shared_packed_b(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n,
                                               bool bf16) {
  using Key = std::tuple<const float*, int64_t, bool, int64_t, int64_t, bool>;
  static std::mutex mutex;
  static std::map<Key, std::weak_ptr<const PackedB>> cache;
  const Key key{b, ldb, trans_b, k, n, bf16};
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end())
    if (auto hit = it->second.lock()) return hit;
  for (auto it = cache.begin(); it != cache.end();) it = it->second.expired() ? cache.erase(it) : std::next(it);
  auto packed = std::make_shared<const PackedB>(b, ldb, trans_b, k, n, default_threads(), bf16);
  cache[key] = packed;
  return packed;
}

// ---- when to use it --------------------------------------------------------------------------------

// Measured against OpenBLAS (the gemm path otherwise taken) on random inputs, K x N = 384 x 1536
// and 1536 x 384, 1 and 2 threads, Xeon with AVX-512. B packed ahead: 1.1-3x faster for 2..64
// rows, 1.0-1.3x at 128, 0.96-1.18x at 256. One row is a matrix-vector product at memory speed
// either way (the packed kernel ties BLAS's gemv, and splits the read of B across threads).
// Since A is read in place and the AVX-512 tile is 6 x 64, it wins at every size from 128 on a
// Zen 4 core too (benchmarks/RESULTS.md, "GEMM at every size"): 1.07-1.16x numpy's sgemm for
// squares of 128-2048 and 1.02-1.16x for the 4096-row MiniLM products on 1 thread.
//
// With an epilogue (bias, residual, activation) it wins by more: it applies the epilogue in
// registers, where the BLAS path must cut the product into cache-sized tiles (re-packing A and B
// per tile) and make a second pass over each.
//
// One row is the exception: BLAS's matrix-vector product streams B from memory faster than the
// panel walk (Zen 4, 1 x 1024 x 4096, 16 MiB of weights: 15.0 against 9.5 GFLOP/s on 1 thread,
// 17.4 against 8.0 on 2; 1 x 384 x 1536 from L3: 26.2 against 24.6), and its epilogue is a pass
// over one row.
bool packed_gemm_prepacked_wins(int64_t m, bool) { return m >= 2; }

// B as given per call, many rows: packing all of B first (one pass over k x n) and running the
// packed kernel beats BLAS from about 512 in every dimension (2 threads, 1024^2 and 2048^2:
// 187 -> 203 and 196 -> 200-210 GFLOP/s; at 256 the pass costs more than it saves).
bool packed_gemm_per_call_wins(int64_t m, int64_t n, int64_t k) { return std::min({m, n, k}) >= 512; }

// B as given per call: read in place it wins 1.2-2x for 2..32 rows and loses from 64 on (the
// strided reads of a panel cost more than BLAS's packing amortised over many rows); transposed, it
// is packed panel by panel and wins 1.2-2x up to 64 rows. One row stays with BLAS's gemv, which
// streams B in order where a panel walk over a row-major B jumps a row per k.
bool packed_gemm_unpacked_wins(int64_t m, bool trans_b) {
  return m >= 2 && m <= (trans_b ? 64 : 32);
}

// ---- the driver ------------------------------------------------------------------------------------

void packed_gemm_f32(const GemmArgs& g, const PackedB* packed, int threads) {
  if (g.m == 0 || g.n == 0) return;
  const KernelSet& ks = kernels();
  const int mr = ks.tile.mr, nr = ks.tile.nr;
  const bool bf16 = packed && packed->bf16();
  if (packed) {
    PHI_CHECK(packed->k() == g.k && packed->n() == g.n && packed->nr() == nr, "gemm",
              "packed weights of " + std::to_string(packed->k()) + "x" + std::to_string(packed->n()) +
                  " do not fit a product with k=" + std::to_string(g.k) + ", n=" + std::to_string(g.n));
  }
  PHI_CHECK(!g.epilogue.bias_per_row, "gemm", "the packed kernel takes a bias per column");
  const Blocking bl = blocking(g.m, g.k, packed != nullptr);
  const int64_t panels = ceil_div(g.n, nr), row_blocks = ceil_div(g.m, mr);

  const double flops = 2.0 * g.m * g.n * std::max<int64_t>(g.k, 1);
  const double b_bytes = 4.0 * g.n * g.k;
  const double work = std::max(flops / kFlopsPerThread, b_bytes / kBytesPerThread);
  const int64_t t = std::clamp<int64_t>(static_cast<int64_t>(work), 1,
                                        std::min<int64_t>(std::max(1, threads), scratch_slots()));
  // Few rows: split the panels (each thread streams its own share of B, which dominates). Many
  // rows: split the rows (each thread packs and reads only its share of A; both stream all of B,
  // which costs the same L3 traffic as half of B per pass twice as often).
  int64_t gn = std::min(t, panels);
  if (row_blocks >= kRowSplitBlocks * t) gn = 1;
  const int64_t gm = std::min(std::max<int64_t>(1, t / gn), row_blocks);
  const int64_t tasks = gn * gm;

  // Per task: a panel buffer when B is not packed, and A packed for one chunk of row blocks (all
  // of K) when A is given transposed; row-major A is read in place (see tile_kernel: packing it
  // took 3 % of a MiniLM run). A chunk is bounded by kABytes per K block, so the scratch stays
  // small whatever m is.
  const bool direct = !g.trans_a;
  const size_t chunk_floats = direct ? 0 : align_floats(bl.row_chunk * mr * g.k) / sizeof(float);
  const size_t slot_floats = packed ? 0 : align_floats(bl.kc * nr) / sizeof(float);
  Scratch buffers(tasks * (chunk_floats + slot_floats) * sizeof(float));
  float* scratch = reinterpret_cast<float*>(buffers.data());

  const int64_t b_elem = bf16 ? 2 : 4;  // bytes per element of B as the kernel reads it
  const int64_t pf_rows = ceil_div(kPrefetchBytes, nr * b_elem);
  // A one-row product streams B once, as one sequential run through the panels. On AMD's Zen 4
  // the hardware prefetchers keep it faster alone (1 x 384 x 1536 packed: 36.7 -> 30.5 us, 64 ->
  // 77 GB/s of weights from L3, numpy's rate; 8 and 32 rows unchanged within noise), where the
  // Xeon this was tuned on needed the explicit prefetch (133 -> 94 us).
  const bool prefetch_b = !(g.m == 1 && cpu_features().amd);
  auto task = [&](int64_t idx) {
    const int64_t pn = idx % gn, rm = idx / gn;
    const int64_t p0 = pn * panels / gn, p1 = (pn + 1) * panels / gn;
    const int64_t r0 = rm * row_blocks / gm, r1 = (rm + 1) * row_blocks / gm;
    float* achunk = scratch + idx * (chunk_floats + slot_floats);
    float* slot = achunk + chunk_floats;
    TileArgs ta;
    ta.ldc = g.ldc;
    ta.alpha = g.alpha;
    ta.ep = &g.epilogue;
    for (int64_t rc = r0; rc < r1; rc += bl.row_chunk) {
      const int64_t rc1 = std::min(r1, rc + bl.row_chunk);
      for (int64_t rb = rc; rb < rc1 && !direct; ++rb) {
        const int rows = static_cast<int>(std::min<int64_t>(mr, g.m - rb * mr));
        pack_a(g, rb * mr, rows, achunk + (rb - rc) * mr * g.k);
      }
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t j0 = p * nr;
        const int cols = static_cast<int>(std::min<int64_t>(nr, g.n - j0));
        int64_t k0 = 0;
        do {  // at least once: k = 0 still writes the epilogue of zero
          const int64_t kc = std::min(bl.kc, g.k - k0);
          if (bf16) {
            ta.b16 = packed->panel_bf16(p) + k0 * nr;
            ta.bs = nr;
          } else if (packed) {
            ta.b = packed->panel(p) + k0 * nr;
            ta.bs = nr;
          } else if (!g.trans_b && cols == nr) {
            ta.b = g.b + k0 * g.ldb + j0;  // read in place: a full panel's row is nr contiguous floats
            ta.bs = g.ldb;
          } else {
            pack_b_panel(g.b, g.ldb, g.trans_b, k0, kc, j0, cols, nr, slot);
            ta.b = slot;
            ta.bs = nr;
          }
          ta.kc = kc;
          ta.pf_step = ta.bs * b_elem;
          ta.cols = cols;
          ta.accumulate = k0 > 0;
          ta.finish = k0 + kc >= g.k;
          ta.col0 = j0;
          for (int64_t rb = rc; rb < rc1; ++rb) {
            const int rows = static_cast<int>(std::min<int64_t>(mr, g.m - rb * mr));
            if (direct) {
              ta.a = g.a + rb * mr * g.lda + k0;
              ta.lda = g.lda;
            } else {
              ta.a = achunk + (rb - rc) * mr * g.k + k0 * rows;
            }
            ta.c = g.c + rb * mr * g.ldc + j0;
            ta.row0 = rb * mr;
            // The first row block streams the panel from memory, ahead of it by kPrefetchBytes;
            // the others find it in L2.
            const uintptr_t b_addr = bf16 ? reinterpret_cast<uintptr_t>(ta.b16) : reinterpret_cast<uintptr_t>(ta.b);
            ta.pf = rb == rc && prefetch_b ? b_addr + pf_rows * ta.pf_step : 0;
            // The first panel of a chunk reads its rows of A from memory: the next block's (when
            // it is a full one) are prefetched meanwhile; the other panels find them in L2. A tile
            // whose C is written for the first time prefetches its rows of C.
            ta.apf = direct && p == p0 && rb + 1 < rc1 && (rb + 2) * mr <= g.m
                         ? reinterpret_cast<uintptr_t>(ta.a + static_cast<int64_t>(mr) * g.lda)
                         : 0;
            ta.cpf = k0 == 0 && rows == mr && cols == nr;
            ks.fn(rows, ta);
          }
          k0 += kc;
        } while (k0 < g.k);
      }
    }
  };
  if (tasks == 1) return task(0);
  ThreadPool::global().parallel_for(tasks, static_cast<int>(tasks), task);
}

}  // namespace phi
