#include "core/op_registry.h"

#include <algorithm>
#include <map>
#include <mutex>

namespace phi {

namespace {
std::map<std::string, OpInfo>& registry() {
  static std::map<std::string, OpInfo> ops;
  return ops;
}
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

void register_op(OpInfo info) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto name = info.name;
  if (!registry().emplace(name, std::move(info)).second)
    throw Error(ErrorCode::internal, name, "op registered twice");
}

std::vector<std::string> op_names() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& [name, _] : registry()) names.push_back(name);
  return names;
}

bool has_op(const std::string& name) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return registry().count(name) != 0;
}

std::unique_ptr<Kernel> make_kernel(const std::string& name, const std::vector<TensorDesc>& inputs, const Attrs& attrs) {
  KernelFactory make = nullptr;
  int min_in = 0, max_in = 0;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(name);
    if (it == registry().end()) throw Error(ErrorCode::not_found, name, "no such op");
    make = it->second.make;
    min_in = it->second.min_inputs;
    max_in = it->second.max_inputs;
  }
  int n = static_cast<int>(inputs.size());
  if (n < min_in || (max_in >= 0 && n > max_in)) {
    std::string expected = min_in == max_in ? std::to_string(min_in)
                           : max_in < 0     ? "at least " + std::to_string(min_in)
                                            : std::to_string(min_in) + " to " + std::to_string(max_in);
    fail(name, "expects " + expected + " inputs, got " + std::to_string(n));
  }
  for (int i = 0; i < std::min(n, min_in); ++i)
    PHI_CHECK(inputs[i].present(), name, "input " + std::to_string(i) + " is required");
  // Shapes from numpy arrays are always sane, but declared ones (infer, plans) may not be; every
  // factory may then multiply dimensions freely.
  for (int i = 0; i < n; ++i)
    if (inputs[i].present()) checked_numel(name, inputs[i].shape, dtype_size(inputs[i].dtype), "input", i);
  std::vector<TensorDesc> padded = inputs;
  if (max_in >= 0) padded.resize(static_cast<size_t>(max_in));
  auto kernel = make(padded, attrs);
  kernel->arity_ = padded.size();
  // Outputs sized from attributes (reshape, pads) get the same check before anyone allocates them.
  for (size_t i = 0; i < kernel->outputs_.size(); ++i)
    checked_numel(name, kernel->outputs_[i].shape, dtype_size(kernel->outputs_[i].dtype), "output", static_cast<int>(i));
  return kernel;
}

void expect_dtype(const std::string& op, const TensorDesc& d, DType dt, const std::string& what) {
  PHI_CHECK(d.dtype == dt, op, what + " must be " + dtype_name(dt) + ", got " + dtype_name(d.dtype));
}

void expect_float(const std::string& op, const TensorDesc& d, const std::string& what) {
  expect_dtype(op, d, DType::f32, what);
}

void expect_rank(const std::string& op, const TensorDesc& d, int64_t rank, const std::string& what) {
  PHI_CHECK(d.ndim() == rank, op,
        what + " must have rank " + std::to_string(rank) + ", got shape " + shape_str(d.shape));
}

}  // namespace phi
