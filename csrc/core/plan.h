// The plan executor: an ordered list of prepared kernel calls over numbered values ("slots"), run
// on a preallocated arena. The graph compiler builds a Plan once per shape bucket; serving runs it
// many times, from several threads at once, so everything that costs (kernel preparation, shape
// checks, liveness, memory planning, view set-up) happens at build time and a run only patches the
// caller's input/output pointers into prebuilt views and calls the kernels in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/op_registry.h"

namespace phi {

// Plan memory starts on a cache line, so every value the planner places there does too.
constexpr size_t kPlanAlignment = 64;

// Owned bytes on a kPlanAlignment boundary (never null, even when empty).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// An immutable weight tensor. Plans hold it by shared_ptr, so the plans of one model's shape
// buckets share one copy of the weights instead of each owning its own.
class Constant {
 public:
  // Copies desc.nbytes() bytes from src into aligned storage.
  Constant(TensorDesc desc, const void* src);
  const TensorDesc& desc() const { return desc_; }
  const void* data() const { return bytes_.data(); }

 private:
  TensorDesc desc_;
  AlignedBuffer bytes_;
};

enum class ValueKind : uint8_t {
  input,         // read in place from the caller's buffer
  constant,      // a Constant the plan holds
  intermediate,  // produced by a step: in the arena, or in the caller's buffer when it is an output
};

// Where a value lives: one entry of Plan::memory_plan().
struct MemoryRegion {
  int value = -1;          // slot id, or -1 for a step's workspace
  int step = -1;           // the step that produces the value, or whose workspace it is
  size_t offset = 0;       // from the arena's start
  size_t bytes = 0;        // rounded up to kPlanAlignment
  int first = 0, last = 0; // lifetime: steps [first, last], inclusive
};

struct RunOptions {
  int threads = 0;            // ExecContext::threads (0: default_threads())
  int64_t* step_ns = nullptr; // when set: num_steps() entries receive each step's wall time in ns
};

class Plan {
 public:
  Plan();
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  // ---- building (one thread, before finalize) ----------------------------------------------

  // A named input of a fixed dtype and shape; returns its slot.
  int add_input(const std::string& name, const TensorDesc& desc);
  // A constant (copied, or shared when given as a Constant); returns its slot.
  int add_constant(const TensorDesc& desc, const void* data);
  int add_constant(std::shared_ptr<const Constant> constant);

  // Appends a call of `op` on the given slots (-1: an absent optional input) and prepares its
  // kernel now, so shapes and attributes are checked at build time. Returns one new slot per
  // kernel output, with the inferred descs. `expected`, when not empty, are the output descs the
  // caller's own shape inference predicts; a mismatch is an error naming the step and op.
  std::vector<int> add_step(const std::string& op, const std::vector<int>& inputs, const Attrs& attrs,
                            const std::vector<TensorDesc>& expected = {});

  // Makes a slot a named plan output. A step-produced value is written straight into the
  // caller's output buffer; an input or constant (or a second name for one value) is copied.
  void mark_output(int value, const std::string& name);

  // Liveness analysis and memory planning; after it the plan is immutable and runnable.
  void finalize();

  // ---- inspection --------------------------------------------------------------------------

  bool finalized() const { return finalized_; }
  size_t num_values() const { return values_.size(); }
  size_t num_steps() const { return steps_.size(); }
  const TensorDesc& value_desc(int value) const;
  ValueKind value_kind(int value) const;
  const std::string& step_op(size_t step) const { return steps_.at(step).op; }
  const std::vector<int>& step_inputs(size_t step) const { return steps_.at(step).inputs; }
  const std::vector<int>& step_outputs(size_t step) const { return steps_.at(step).outputs; }

  size_t num_inputs() const { return inputs_.size(); }
  size_t num_outputs() const { return outputs_.size(); }
  const std::string& input_name(size_t i) const { return inputs_.at(i).name; }
  const std::string& output_name(size_t i) const { return outputs_.at(i).name; }
  const TensorDesc& input_desc(size_t i) const { return values_[inputs_.at(i).value].desc; }
  const TensorDesc& output_desc(size_t i) const { return values_[outputs_.at(i).value].desc; }
  int input_slot(size_t i) const { return inputs_.at(i).value; }
  int output_slot(size_t i) const { return outputs_.at(i).value; }

  // Bytes of one arena (planned intermediates and workspaces, values sharing memory when their
  // lifetimes do not overlap), and what giving every intermediate its own buffer plus one
  // workspace of the largest size would take.
  size_t arena_bytes() const { return arena_bytes_; }
  size_t naive_bytes() const { return naive_bytes_; }
  std::vector<MemoryRegion> memory_plan() const { return regions_; }

  // Arenas alive (idle or in use: as many as the peak number of concurrent runs), and a way to
  // free the idle ones when a cached plan goes quiet (the next run allocates one again).
  size_t arena_count() const;
  void release_idle_arenas();

  // ---- running (any number of threads at once, after finalize) -----------------------------

  // Runs the plan: inputs in add_input order, outputs in mark_output order, each matching its
  // desc. Output buffers must not overlap input buffers or each other. Kernels run in order
  // with ExecContext{options.threads} on an arena no concurrent run shares.
  void run(std::span<const TensorView> inputs, std::span<const TensorView> outputs,
           const RunOptions& options = {}) const;

 private:
  struct Value {
    TensorDesc desc;
    ValueKind kind = ValueKind::intermediate;
    int index = -1;          // input: its position; constant: its position; intermediate: producer step
    int last_use = -1;       // last step reading it
    int direct_output = -1;  // output position its producer writes into, if any
    int alias = -1;          // a reshape's output: the value whose bytes it views (no copy)
  };
  struct Step {
    std::string op;
    std::vector<int> inputs, outputs;
    std::unique_ptr<Kernel> kernel;
  };
  struct Port {
    std::string name;
    int value = -1;
  };
  // A view whose pointer is only known at run time (a caller's buffer) or per arena.
  struct Patch {
    uint32_t view = 0;
    uint32_t index = 0;  // caller input / output position
  };
  struct ArenaPatch {
    uint32_t view = 0;
    size_t offset = 0;
  };
  // A plan output that is not written in place: copied after the steps from `src`.
  struct OutputCopy {
    uint32_t output = 0;
    enum class From : uint8_t { input, constant, output } from = From::input;
    uint32_t index = 0;          // input or output position
    const void* data = nullptr;  // constant bytes
    size_t bytes = 0;
  };
  // The hot loop's view of a step: nothing but pointers and offsets.
  struct ExecStep {
    const Kernel* kernel = nullptr;
    uint32_t in_view = 0, out_view = 0;
  };
  struct Arena;
  class Lease;

  void check_building(const char* what) const;
  int check_slot(int value, const std::string& what) const;
  int new_value(const TensorDesc& desc, ValueKind kind, int index);
  void bind_constants(Kernel& kernel, const std::vector<int>& inputs, const std::vector<TensorDesc>& descs) const;
  void alias_reshapes();
  void plan_memory();
  void build_views();
  void validate(std::span<const TensorView> inputs, std::span<const TensorView> outputs) const;
  std::unique_ptr<Arena> make_arena() const;

  std::vector<Value> values_;
  // Declared before steps_ so that it is destroyed after them: kernels may hold what they derived
  // from constant bytes (Kernel::bind_constants), shared by address while those bytes are alive.
  std::vector<std::shared_ptr<const Constant>> constants_;
  std::vector<Step> steps_;
  std::vector<Port> inputs_, outputs_;
  bool finalized_ = false;

  // Set by finalize().
  std::vector<size_t> value_offsets_;                 // per slot: arena offset of an arena value
  std::vector<size_t> workspace_offsets_;             // per step: arena offset of its workspace
  std::vector<MemoryRegion> regions_;
  size_t arena_bytes_ = 0, naive_bytes_ = 0;
  std::vector<TensorView> view_template_;             // every step's input and output views
  std::vector<ArenaPatch> arena_patches_;
  std::vector<Patch> input_patches_, output_patches_;
  std::vector<OutputCopy> copies_;
  std::vector<ExecStep> exec_;

  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Arena>> pool_;  // idle arenas
  mutable size_t arena_count_ = 0;
};

}  // namespace phi
