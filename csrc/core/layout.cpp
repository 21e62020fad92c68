// Layout ops: transpose, gather, concat and slice. They move bytes and never look at values, so
// every dtype is handled by its element size (1, 2, 4 or 8 bytes) and copies are bit-exact.
#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "core/op_registry.h"

namespace phi {

namespace {

constexpr int64_t kBytesPerThread = 1 << 18;  // below 256 KiB a second thread costs more than it saves
constexpr int64_t kTile = 32;                 // transpose tile: 32x32 elements of <= 8 bytes fit L1

// Threads worth using for a copy of `bytes`, at most `threads`.
int copy_threads(int64_t bytes, int threads) {
  return static_cast<int>(std::clamp<int64_t>(bytes / kBytesPerThread, 1, std::max(1, threads)));
}

// Items per parallel chunk so that each chunk moves at least kBytesPerThread / 4 bytes.
int64_t grain_for(int64_t bytes_per_item) {
  return std::max<int64_t>(1, (kBytesPerThread / 4) / std::max<int64_t>(1, bytes_per_item));
}

Shape dense_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
  return strides;
}

// Row-major walk over `dims` tracking a source and a destination offset (elements), so the
// loops that use it never divide. An empty `dims` is a single point at offset 0.
class Odometer {
 public:
  Odometer(const Shape& dims, const Shape& src_strides, const Shape& dst_strides, int64_t start)
      : dims_(dims), ss_(src_strides), ds_(dst_strides), coord_(dims.size(), 0) {
    for (int64_t d = static_cast<int64_t>(dims_.size()) - 1; d >= 0; --d) {
      coord_[d] = start % dims_[d];
      start /= dims_[d];
      src_ += coord_[d] * ss_[d];
      dst_ += coord_[d] * ds_[d];
    }
  }
  int64_t src() const { return src_; }
  int64_t dst() const { return dst_; }
  void next() {
    for (int64_t d = static_cast<int64_t>(dims_.size()) - 1; d >= 0; --d) {
      src_ += ss_[d];
      dst_ += ds_[d];
      if (++coord_[d] < dims_[d]) return;
      src_ -= ss_[d] * dims_[d];
      dst_ -= ds_[d] * dims_[d];
      coord_[d] = 0;
    }
  }

 private:
  const Shape& dims_;
  const Shape& ss_;
  const Shape& ds_;
  Shape coord_;
  int64_t src_ = 0, dst_ = 0;
};

// ---- element loops, one per element size --------------------------------------------------

template <typename T>
inline void strided_row(T* PHI_RESTRICT dst, const T* PHI_RESTRICT src, int64_t n, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

// dst[b * ldd + a] = src[a * lds + b] for a < na, b < nb: one tile, hot in L1 on both sides.
template <typename T>
inline void transpose_tile(T* PHI_RESTRICT dst, const T* PHI_RESTRICT src, int64_t na, int64_t nb, int64_t lds,
                           int64_t ldd) {
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t a = 0; a < na; ++a) dst[b * ldd + a] = src[a * lds + b];
}

PHI_HOT void strided_row_1(uint8_t* d, const uint8_t* s, int64_t n, int64_t st) { strided_row(d, s, n, st); }
PHI_HOT void strided_row_2(uint16_t* d, const uint16_t* s, int64_t n, int64_t st) { strided_row(d, s, n, st); }
PHI_HOT void strided_row_4(uint32_t* d, const uint32_t* s, int64_t n, int64_t st) { strided_row(d, s, n, st); }
PHI_HOT void strided_row_8(uint64_t* d, const uint64_t* s, int64_t n, int64_t st) { strided_row(d, s, n, st); }

PHI_HOT void transpose_tile_1(uint8_t* d, const uint8_t* s, int64_t na, int64_t nb, int64_t lds, int64_t ldd) {
  transpose_tile(d, s, na, nb, lds, ldd);
}
PHI_HOT void transpose_tile_2(uint16_t* d, const uint16_t* s, int64_t na, int64_t nb, int64_t lds, int64_t ldd) {
  transpose_tile(d, s, na, nb, lds, ldd);
}
PHI_HOT void transpose_tile_4(uint32_t* d, const uint32_t* s, int64_t na, int64_t nb, int64_t lds, int64_t ldd) {
  transpose_tile(d, s, na, nb, lds, ldd);
}
PHI_HOT void transpose_tile_8(uint64_t* d, const uint64_t* s, int64_t na, int64_t nb, int64_t lds, int64_t ldd) {
  transpose_tile(d, s, na, nb, lds, ldd);
}

// Copies n elements of size es from src (element stride `stride`) to dense dst.
void copy_row(std::byte* dst, const std::byte* src, int64_t n, int64_t stride, size_t es) {
  if (stride == 1) {
    std::memcpy(dst, src, static_cast<size_t>(n) * es);
    return;
  }
  switch (es) {
    case 1: return strided_row_1(reinterpret_cast<uint8_t*>(dst), reinterpret_cast<const uint8_t*>(src), n, stride);
    case 2: return strided_row_2(reinterpret_cast<uint16_t*>(dst), reinterpret_cast<const uint16_t*>(src), n, stride);
    case 4: return strided_row_4(reinterpret_cast<uint32_t*>(dst), reinterpret_cast<const uint32_t*>(src), n, stride);
    default: return strided_row_8(reinterpret_cast<uint64_t*>(dst), reinterpret_cast<const uint64_t*>(src), n, stride);
  }
}

void copy_tile(std::byte* dst, const std::byte* src, int64_t na, int64_t nb, int64_t lds, int64_t ldd, size_t es) {
  switch (es) {
    case 1:
      return transpose_tile_1(reinterpret_cast<uint8_t*>(dst), reinterpret_cast<const uint8_t*>(src), na, nb, lds, ldd);
    case 2:
      return transpose_tile_2(reinterpret_cast<uint16_t*>(dst), reinterpret_cast<const uint16_t*>(src), na, nb, lds,
                              ldd);
    case 4:
      return transpose_tile_4(reinterpret_cast<uint32_t*>(dst), reinterpret_cast<const uint32_t*>(src), na, nb, lds,
                              ldd);
    default:
      return transpose_tile_8(reinterpret_cast<uint64_t*>(dst), reinterpret_cast<const uint64_t*>(src), na, nb, lds,
                              ldd);
  }
}

// ---- strided copy: the engine of transpose and slice --------------------------------------

// dst (dense, row-major over dims) = src[offset + sum_d i_d * strides[d]], strides in elements
// and possibly negative (a slice with a negative step).
struct StridedCopy {
  Shape dims, strides;
  int64_t offset = 0;
  size_t es = 1;

  // Drops dimensions of size 1 and merges neighbours whose strides compose (the outer stride is
  // the inner one times the inner size), so any transpose or slice runs as the fewest, longest
  // inner loops: a [B, S, H, D] -> [B, H, S, D] transpose becomes D-element memcpy rows.
  void simplify() {
    Shape d2, s2;
    for (size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == 1) continue;
      if (!d2.empty() && s2.back() == dims[i] * strides[i]) {
        d2.back() *= dims[i];
        s2.back() = strides[i];
      } else {
        d2.push_back(dims[i]);
        s2.push_back(strides[i]);
      }
    }
    dims = std::move(d2);
    strides = std::move(s2);
  }

  int64_t count() const { return numel(dims); }

  // After simplify(): rows of the innermost dimension, contiguous in dst.
  void run_rows(void* dst, const void* src, int threads) const {
    auto* out = static_cast<std::byte*>(dst);
    const auto* in = static_cast<const std::byte*>(src) + offset * static_cast<int64_t>(es);
    if (dims.empty()) {
      std::memcpy(out, in, es);
      return;
    }
    int64_t n = dims.back(), stride = strides.back();
    Shape outer(dims.begin(), dims.end() - 1), outer_src(strides.begin(), strides.end() - 1);
    Shape outer_dst = dense_strides(outer);
    int64_t rows = numel(outer), row_bytes = n * static_cast<int64_t>(es);
    parallel_range(rows, copy_threads(rows * row_bytes, threads), grain_for(row_bytes), [&](int64_t b, int64_t e) {
      Odometer od(outer, outer_src, outer_dst, b);
      for (int64_t r = b; r < e; ++r, od.next())
        copy_row(out + r * row_bytes, in + od.src() * static_cast<int64_t>(es), n, stride, es);
    });
  }

  // After simplify(), when the innermost dst dimension is strided in src: tiles of the plane
  // (dst's contiguous axis a = last, src's contiguous axis b = the one with stride 1), so both
  // sides are read and written a cache line at a time.
  void run_tiled(void* dst, const void* src, int threads) const {
    int64_t r = static_cast<int64_t>(dims.size());
    int64_t q = std::find(strides.begin(), strides.end(), 1) - strides.begin();
    Shape dst_strides = dense_strides(dims);
    int64_t na = dims[r - 1], lds = strides[r - 1];
    int64_t nb = dims[q], ldd = dst_strides[q];
    Shape outer, outer_src, outer_dst;
    for (int64_t d = 0; d < r - 1; ++d) {
      if (d == q) continue;
      outer.push_back(dims[d]);
      outer_src.push_back(strides[d]);
      outer_dst.push_back(dst_strides[d]);
    }
    int64_t b_tiles = (nb + kTile - 1) / kTile;
    int64_t units = numel(outer) * b_tiles;
    int64_t isz = static_cast<int64_t>(es);
    auto* out = static_cast<std::byte*>(dst);
    const auto* in = static_cast<const std::byte*>(src) + offset * isz;
    int64_t unit_bytes = std::min(nb, kTile) * na * isz;
    parallel_range(units, copy_threads(units * unit_bytes, threads), grain_for(unit_bytes), [&](int64_t u0, int64_t u1) {
      Odometer od(outer, outer_src, outer_dst, u0 / b_tiles);
      for (int64_t u = u0; u < u1; ++u) {
        int64_t bt = u % b_tiles;
        if (bt == 0 && u != u0) od.next();
        int64_t b0 = bt * kTile, mb = std::min(kTile, nb - b0);
        for (int64_t a0 = 0; a0 < na; a0 += kTile) {
          copy_tile(out + (od.dst() + b0 * ldd + a0) * isz, in + (od.src() + a0 * lds + b0) * isz,
                    std::min(kTile, na - a0), mb, lds, ldd, es);
        }
      }
    });
  }

  void run(void* dst, const void* src, int threads) const {
    if (count() == 0) return;
    if (dims.size() >= 2 && strides.back() != 1 &&
        std::find(strides.begin(), strides.end(), 1) != strides.end()) {
      run_tiled(dst, src, threads);
    } else {
      run_rows(dst, src, threads);
    }
  }
};

// ---- transpose ----------------------------------------------------------------------------

// numpy.transpose: perm absent reverses the axes; negative axes count from the end.
class TransposeKernel final : public Kernel {
 public:
  TransposeKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "transpose";
    const TensorDesc& x = in[0];
    int64_t r = x.ndim();
    Shape perm(static_cast<size_t>(r));
    std::iota(perm.rbegin(), perm.rend(), 0);
    if (attrs.has("perm")) perm = attrs.get_ints(op, "perm", perm);
    PHI_CHECK(static_cast<int64_t>(perm.size()) == r, op,
              "perm must have " + std::to_string(r) + " axes for a tensor of shape " + shape_str(x.shape) + ", got " +
                  std::to_string(perm.size()));
    std::vector<bool> seen(static_cast<size_t>(r), false);
    for (auto& p : perm) {
      p = normalize_axis(op, p, r);
      PHI_CHECK(!seen[p], op, "perm repeats axis " + std::to_string(p));
      seen[p] = true;
    }
    Shape src_strides = dense_strides(x.shape), out(static_cast<size_t>(r));
    copy_.es = dtype_size(x.dtype);
    for (int64_t i = 0; i < r; ++i) {
      out[i] = x.shape[perm[i]];
      copy_.dims.push_back(out[i]);
      copy_.strides.push_back(src_strides[perm[i]]);
    }
    copy_.simplify();
    outputs_ = {TensorDesc{x.dtype, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    copy_.run(out[0].data, in[0].data, ctx.resolved_threads());
  }

 private:
  StridedCopy copy_;
};

// ---- slice --------------------------------------------------------------------------------

// ONNX Slice (opset 13): starts/ends/axes/steps as attributes, since they fix the output shape.
// Negative starts/ends count from the end; values are clamped to [0, dim] for positive steps and
// to [-1, dim - 1] (ends) / [0, dim - 1] (starts) for negative steps, so INT64_MAX and INT64_MIN
// mean "to the end" either way.
class SliceKernel final : public Kernel {
 public:
  SliceKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "slice";
    const TensorDesc& x = in[0];
    int64_t r = x.ndim();
    check(r >= 1, op, "input must have rank >= 1");
    check(attrs.has("starts") && attrs.has("ends"), op, "starts and ends are required");
    auto starts = attrs.get_ints(op, "starts", {});
    auto ends = attrs.get_ints(op, "ends", {});
    size_t k = starts.size();
    check(ends.size() == k, op, "starts and ends must have the same length");
    Shape axes(k);
    std::iota(axes.begin(), axes.end(), 0);
    axes = attrs.get_ints(op, "axes", axes);
    auto steps = attrs.get_ints(op, "steps", Shape(k, 1));
    check(axes.size() == k, op, "axes must have as many values as starts");
    check(steps.size() == k, op, "steps must have as many values as starts");
    Shape start(static_cast<size_t>(r), 0), step(static_cast<size_t>(r), 1), out = x.shape;
    std::vector<bool> seen(static_cast<size_t>(r), false);
    for (size_t i = 0; i < k; ++i) {
      int64_t a = normalize_axis(op, axes[i], r);
      PHI_CHECK(!seen[a], op, "axis " + std::to_string(a) + " is repeated");
      seen[a] = true;
      PHI_CHECK(steps[i] != 0, op, "steps must be non-zero");
      step[a] = resolve(x.shape[a], starts[i], ends[i], steps[i], start[a], out[a]);
    }
    Shape src_strides = dense_strides(x.shape);
    copy_.es = dtype_size(x.dtype);
    for (int64_t d = 0; d < r; ++d) {
      copy_.offset += start[d] * src_strides[d];
      copy_.dims.push_back(out[d]);
      copy_.strides.push_back(src_strides[d] * step[d]);
    }
    copy_.simplify();
    outputs_ = {TensorDesc{x.dtype, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    copy_.run(out[0].data, in[0].data, ctx.resolved_threads());
  }

 private:
  // The ONNX Slice clamping rules for one axis of length dim; returns the step to walk it with.
  // A step longer than the axis takes at most one element, so it is clamped to the axis length:
  // the same slice, and `step * stride` and `-step` can no longer overflow (INT64_MIN has no negation).
  static int64_t resolve(int64_t dim, int64_t s, int64_t e, int64_t step, int64_t& start, int64_t& len) {
    const int64_t span = std::max<int64_t>(dim, 1);
    step = std::clamp<int64_t>(step, -span, span);
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    if (step > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      len = e > s ? (e - s - 1) / step + 1 : 0;
    } else {
      s = std::clamp<int64_t>(s, 0, std::max<int64_t>(dim - 1, 0));
      e = std::clamp<int64_t>(e, -1, std::max<int64_t>(dim - 1, -1));
      len = (dim > 0 && s > e) ? (s - e - 1) / -step + 1 : 0;
    }
    start = len > 0 ? s : 0;
    return step;
  }

  StridedCopy copy_;
};

// ---- gather -------------------------------------------------------------------------------

// ONNX Gather: out[i_0.., j.., k..] = data[i_0.., indices[j..], k..] along `axis`. Every index is
// checked before anything is written, so a bad index never leaves a half-written output.
class GatherKernel final : public Kernel {
 public:
  GatherKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "gather";
    const TensorDesc& data = in[0];
    const TensorDesc& idx = in[1];
    check(data.ndim() >= 1, op, "data must have rank >= 1");
    PHI_CHECK(idx.dtype == DType::i32 || idx.dtype == DType::i64, op,
              std::string("indices must be int32 or int64, got ") + dtype_name(idx.dtype));
    axis_ = normalize_axis(op, attrs.get_int(op, "axis", 0), data.ndim());
    Shape out(data.shape.begin(), data.shape.begin() + axis_);
    out.insert(out.end(), idx.shape.begin(), idx.shape.end());
    out.insert(out.end(), data.shape.begin() + axis_ + 1, data.shape.end());
    outer_ = numel(Shape(data.shape.begin(), data.shape.begin() + axis_));
    dim_ = data.shape[axis_];
    row_bytes_ = numel(Shape(data.shape.begin() + axis_ + 1, data.shape.end())) * static_cast<int64_t>(dtype_size(data.dtype));
    outputs_ = {TensorDesc{data.dtype, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    std::vector<int64_t> idx = in[1].dtype() == DType::i32 ? checked(in[1].ptr<const int32_t>(), in[1].numel())
                                                            : checked(in[1].ptr<const int64_t>(), in[1].numel());
    const auto* src = static_cast<const std::byte*>(in[0].data);
    auto* dst = static_cast<std::byte*>(out[0].data);
    int64_t n = static_cast<int64_t>(idx.size()), rows = outer_ * n, rb = row_bytes_;
    if (rows == 0 || rb == 0) return;
    // Whole rows (an embedding lookup's vectors) are one memcpy each, split over the threads.
    parallel_range(rows, copy_threads(rows * rb, ctx.resolved_threads()), grain_for(rb), [&](int64_t b, int64_t e) {
      int64_t o = b / n, j = b % n;
      for (int64_t r = b; r < e; ++r) {
        std::memcpy(dst + r * rb, src + (o * dim_ + idx[j]) * rb, static_cast<size_t>(rb));
        if (++j == n) {
          j = 0;
          ++o;
        }
      }
    });
  }

 private:
  // Indices wrapped once into [0, dim), or an error naming the first bad one.
  template <typename T>
  std::vector<int64_t> checked(const T* p, int64_t n) const {
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = p[i];
      if (v < -dim_ || v >= dim_)
        fail("gather", "index " + std::to_string(v) + " out of range [" + std::to_string(-dim_) + ", " +
                           std::to_string(dim_) + ") for axis " + std::to_string(axis_));
      idx[i] = v < 0 ? v + dim_ : v;
    }
    return idx;
  }

  int64_t axis_ = 0, outer_ = 1, dim_ = 0, row_bytes_ = 0;
};

// ---- concat -------------------------------------------------------------------------------

// ONNX Concat: any number of inputs of one dtype, shapes equal except along `axis`. The output is
// cut into equal byte ranges over the threads, so one huge input and many small ones balance alike.
class ConcatKernel final : public Kernel {
 public:
  ConcatKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "concat";
    check(!in.empty(), op, "needs at least one input");
    check(attrs.has("axis"), op, "attribute 'axis' is required");
    const TensorDesc& first = in[0];
    int64_t r = first.ndim();
    check(r >= 1, op, "inputs must have rank >= 1");
    int64_t axis = normalize_axis(op, attrs.get_int(op, "axis", 0), r);
    Shape out = first.shape;
    out[axis] = 0;
    int64_t es = static_cast<int64_t>(dtype_size(first.dtype));
    int64_t inner = numel(Shape(first.shape.begin() + axis + 1, first.shape.end())) * es;
    offsets_.push_back(0);
    for (size_t i = 0; i < in.size(); ++i) {
      const TensorDesc& t = in[i];
      PHI_CHECK(t.present(), op, "input " + std::to_string(i) + " is missing");
      PHI_CHECK(t.dtype == first.dtype, op,
                "input " + std::to_string(i) + " is " + dtype_name(t.dtype) + " but input 0 is " + dtype_name(first.dtype));
      bool same = t.ndim() == r;
      for (int64_t d = 0; same && d < r; ++d) same = d == axis || t.shape[d] == first.shape[d];
      PHI_CHECK(same, op,
                "input " + std::to_string(i) + " has shape " + shape_str(t.shape) + ", which differs from input 0 " +
                    shape_str(first.shape) + " outside axis " + std::to_string(axis));
      out[axis] += t.shape[axis];
      row_bytes_.push_back(t.shape[axis] * inner);
      offsets_.push_back(offsets_.back() + row_bytes_.back());
    }
    outer_ = numel(Shape(first.shape.begin(), first.shape.begin() + axis));
    outputs_ = {TensorDesc{first.dtype, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    auto* dst = static_cast<std::byte*>(out[0].data);
    int64_t out_row = offsets_.back(), total = outer_ * out_row;
    int64_t k = static_cast<int64_t>(row_bytes_.size());
    parallel_range(total, copy_threads(total, ctx.resolved_threads()), kBytesPerThread / 4, [&](int64_t b, int64_t e) {
      // Locate byte b: output row o, input i, byte `within` of that input's row; then walk on.
      int64_t o = b / out_row, off = b % out_row;
      int64_t i = std::upper_bound(offsets_.begin(), offsets_.end(), off) - offsets_.begin() - 1;
      int64_t within = off - offsets_[i];
      for (int64_t pos = b; pos < e;) {
        int64_t len = std::min(e - pos, row_bytes_[i] - within);
        std::memcpy(dst + pos, static_cast<const std::byte*>(in[i].data) + o * row_bytes_[i] + within,
                    static_cast<size_t>(len));
        pos += len;
        within = 0;
        if (++i == k) {
          i = 0;
          ++o;
        }
      }
    });
  }

 private:
  int64_t outer_ = 1;
  Shape row_bytes_;  // bytes of one outer row, per input
  Shape offsets_;    // where each input's row starts in an output row (prefix sums)
};

std::unique_ptr<Kernel> make_transpose(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<TransposeKernel>(in, attrs);
}
std::unique_ptr<Kernel> make_slice(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<SliceKernel>(in, attrs);
}
std::unique_ptr<Kernel> make_gather(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<GatherKernel>(in, attrs);
}
std::unique_ptr<Kernel> make_concat(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<ConcatKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("transpose", 1, 1, make_transpose);
PHI_REGISTER_OP("slice", 1, 1, make_slice);
PHI_REGISTER_OP("gather", 2, 2, make_gather);
PHI_REGISTER_OP("concat", 1, -1, make_concat);

}  // namespace phi
