// Every kernel is reachable by name through one registry, so phi_engine.ops (eager calls) and the
// plan executor (compiled models) run exactly the same code. An op is prepared once for concrete
// input shapes (validating them and inferring outputs), then run any number of times.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/threadpool.h"

namespace phi {

class Kernel {
 public:
  virtual ~Kernel() = default;

  // Shapes and dtypes of the outputs, fixed at preparation.
  const std::vector<TensorDesc>& outputs() const { return outputs_; }

  // Number of input views run() receives: optional inputs the caller left out are padded with
  // absent views (dtype undefined) up to the op's maximum, so kernels may index them freely.
  size_t arity() const { return arity_; }

  // Scratch memory run() needs; the caller provides it (the plan's arena, or a temporary).
  virtual size_t workspace_bytes() const { return 0; }

  // Computes outputs from inputs. Views match the descs given at preparation (arity() of them);
  // absent optional inputs have dtype undefined. Outputs never alias inputs. Must be safe to call concurrently.
  virtual void run(const TensorView* inputs, TensorView* outputs, void* workspace, const ExecContext& ctx) const = 0;

  // Called once by the plan builder, right after preparation, for a step with constant inputs:
  // arity() views with the prepared descs, whose data is set for the plan's constants (immutable,
  // alive as long as the kernel) and null for every other input. A kernel may derive what it will
  // reuse on every run from them (gemm packs its weights); run() still receives all inputs as
  // usual. Eager calls never call it. May change workspace_bytes(), which is read afterwards.
  virtual void bind_constants(const TensorView* inputs) {}

 protected:
  std::vector<TensorDesc> outputs_;

 private:
  friend std::unique_ptr<Kernel> make_kernel(const std::string&, const std::vector<TensorDesc>&, const Attrs&);
  size_t arity_ = 0;
};

using KernelFactory = std::unique_ptr<Kernel> (*)(const std::vector<TensorDesc>& inputs, const Attrs& attrs);

struct OpInfo {
  std::string name;
  int min_inputs = 1;
  int max_inputs = 1;
  KernelFactory make = nullptr;
};

void register_op(OpInfo info);
std::vector<std::string> op_names();
bool has_op(const std::string& name);

// Validates the input count, pads absent optional inputs and prepares a kernel; throws phi::Error naming the op on bad input.
std::unique_ptr<Kernel> make_kernel(const std::string& name, const std::vector<TensorDesc>& inputs, const Attrs& attrs);

struct OpRegistrar {
  explicit OpRegistrar(OpInfo info) { register_op(std::move(info)); }
};

#define PHI_CONCAT_INNER(a, b) a##b
#define PHI_CONCAT(a, b) PHI_CONCAT_INNER(a, b)
// PHI_REGISTER_OP("softmax", 1, 1, make_softmax);
#define PHI_REGISTER_OP(name, min_in, max_in, factory) \
  static ::phi::OpRegistrar PHI_CONCAT(phi_registrar_, __COUNTER__)(::phi::OpInfo{name, min_in, max_in, factory})

// Helpers for factories.
void expect_dtype(const std::string& op, const TensorDesc& d, DType dt, const std::string& what);
void expect_float(const std::string& op, const TensorDesc& d, const std::string& what);  // f32 for now
void expect_rank(const std::string& op, const TensorDesc& d, int64_t rank, const std::string& what);

}  // namespace phi
