// reshape: the same bytes under a new shape (ONNX Reshape semantics for 0 and -1). As a kernel it
// copies, because a plan gives every value its own region; the copy runs at memory speed and the
// graph compiler can remove it by aliasing where lifetimes allow.
#include <cstring>
#include <limits>

#include "core/op_registry.h"

namespace phi {

namespace {

// Product of the dimensions other than `skip`, saturating at INT64_MAX: a requested shape such as
// (2^32, 2^32) must not wrap around to a count that happens to match the input's.
int64_t saturating_numel(const Shape& shape, int64_t skip) {
  int64_t n = 1;
  bool zero = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (static_cast<int64_t>(i) == skip) continue;
    const int64_t d = shape[i];
    zero = zero || d == 0;
    n = (d != 0 && n > std::numeric_limits<int64_t>::max() / d) ? std::numeric_limits<int64_t>::max() : n * d;
  }
  return zero ? 0 : n;
}

class ReshapeKernel final : public Kernel {
 public:
  ReshapeKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "reshape";
    const TensorDesc& x = in[0];
    PHI_CHECK(attrs.has("shape"), op, "attribute 'shape' is required");
    Shape target = attrs.get_ints(op, "shape", {});
    bool allow_zero = attrs.get_int(op, "allowzero", 0) != 0;
    int64_t infer_at = -1;
    for (size_t i = 0; i < target.size(); ++i) {
      int64_t& d = target[i];
      if (d == 0 && !allow_zero) {
        PHI_CHECK(i < x.shape.size(), op, "0 in shape at index " + std::to_string(i) + " has no input dimension to copy");
        d = x.shape[i];
      }
      if (d == -1) {
        PHI_CHECK(infer_at < 0, op, "at most one dimension may be -1");
        infer_at = static_cast<int64_t>(i);
        continue;
      }
      PHI_CHECK(d >= 0, op, "invalid dimension " + std::to_string(d) + " in shape " + shape_str(target));
    }
    const int64_t known = saturating_numel(target, infer_at);
    if (infer_at >= 0) {
      PHI_CHECK(known != 0 && x.numel() % known == 0, op,
                "cannot reshape " + shape_str(x.shape) + " into " + shape_str(attrs.get_ints(op, "shape", {})));
      target[infer_at] = x.numel() / known;
    }
    PHI_CHECK(saturating_numel(target, -1) == x.numel(), op,
              "cannot reshape " + shape_str(x.shape) + " (" + std::to_string(x.numel()) + " elements) into " +
                  shape_str(target));
    outputs_ = {TensorDesc{x.dtype, target}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext&) const override {
    // memcpy's pointers must be valid even for zero bytes, and an empty value may have none.
    if (const size_t bytes = in[0].desc.nbytes()) std::memcpy(out[0].data, in[0].data, bytes);
  }
};

std::unique_ptr<Kernel> make_reshape(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<ReshapeKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("reshape", 1, 1, make_reshape);

}  // namespace phi
