#include "core/plan.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <new>

namespace phi {

namespace {

const std::string kPlan = "plan";
constexpr size_t kNoWorkspace = std::numeric_limits<size_t>::max();
// An arena may hold several values of up to kMaxTensorBytes each; offsets below this never overflow.
constexpr size_t kMaxArenaBytes = size_t{1} << 56;

[[noreturn]] void too_big(const std::string& message) { throw Error(ErrorCode::resource, kPlan, message); }

size_t align_up(size_t bytes) { return (bytes + kPlanAlignment - 1) / kPlanAlignment * kPlanAlignment; }

std::string desc_str(const TensorDesc& d) { return std::string(dtype_name(d.dtype)) + " " + shape_str(d.shape); }

bool same_desc(const TensorDesc& a, const TensorDesc& b) { return a.dtype == b.dtype && a.shape == b.shape; }

}  // namespace

// ---- buffers ---------------------------------------------------------------------------------

AlignedBuffer::AlignedBuffer(size_t bytes)
    : data_(static_cast<std::byte*>(::operator new(std::max<size_t>(bytes, 1), std::align_val_t{kPlanAlignment}))),
      size_(bytes) {}

AlignedBuffer::~AlignedBuffer() {
  if (data_) ::operator delete(data_, std::align_val_t{kPlanAlignment});
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) ::operator delete(data_, std::align_val_t{kPlanAlignment});
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

Constant::Constant(TensorDesc desc, const void* src) : desc_(std::move(desc)) {
  check(desc_.present(), kPlan, "a constant needs a dtype");
  size_t bytes = desc_.nbytes();
  check(bytes == 0 || src != nullptr, kPlan, "constant data is null");
  bytes_ = AlignedBuffer(bytes);
  if (bytes) std::memcpy(bytes_.data(), src, bytes);
}

// ---- arenas ----------------------------------------------------------------------------------

// One run's private memory: the planned values and workspaces, and a copy of every step's views
// with the arena's own pointers already bound, so a run only patches the caller's buffers in.
struct Plan::Arena {
  AlignedBuffer memory;
  std::vector<TensorView> views;
  std::vector<void*> workspaces;  // per step, null when the kernel needs none
};

// Takes an idle arena from the plan's pool (or makes one) and gives it back when the run ends,
// also when a kernel throws. The mutex is held only to pop and push a pointer.
class Plan::Lease {
 public:
  explicit Lease(const Plan& plan) : plan_(plan) {
    {
      std::lock_guard<std::mutex> lock(plan_.pool_mutex_);
      if (!plan_.pool_.empty()) {
        arena_ = std::move(plan_.pool_.back());
        plan_.pool_.pop_back();
        return;
      }
    }
    arena_ = plan_.make_arena();  // allocated outside the lock: other runs keep going
    std::lock_guard<std::mutex> lock(plan_.pool_mutex_);
    // Room for every arena alive, so the push_back in ~Lease never allocates (or throws).
    plan_.pool_.reserve(plan_.arena_count_ + 1);
    ++plan_.arena_count_;
  }
  ~Lease() {
    std::lock_guard<std::mutex> lock(plan_.pool_mutex_);
    plan_.pool_.push_back(std::move(arena_));
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  Arena& arena() { return *arena_; }

 private:
  const Plan& plan_;
  std::unique_ptr<Arena> arena_;
};

Plan::Plan() = default;
Plan::~Plan() = default;

std::unique_ptr<Plan::Arena> Plan::make_arena() const {
  auto arena = std::make_unique<Arena>();
  arena->memory = AlignedBuffer(arena_bytes_);
  arena->views = view_template_;
  std::byte* base = arena->memory.data();
  for (const ArenaPatch& p : arena_patches_) arena->views[p.view].data = base + p.offset;
  arena->workspaces.resize(steps_.size(), nullptr);
  for (size_t s = 0; s < steps_.size(); ++s)
    if (workspace_offsets_[s] != kNoWorkspace) arena->workspaces[s] = base + workspace_offsets_[s];
  return arena;
}

size_t Plan::arena_count() const {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  return arena_count_;
}

void Plan::release_idle_arenas() {
  std::vector<std::unique_ptr<Arena>> idle;  // freed after the lock is dropped
  std::lock_guard<std::mutex> lock(pool_mutex_);
  idle.reserve(pool_.size());
  for (auto& arena : pool_) idle.push_back(std::move(arena));
  arena_count_ -= pool_.size();
  pool_.clear();  // keeps its capacity: runs still in flight give their arenas back without allocating
}

// ---- building --------------------------------------------------------------------------------

void Plan::check_building(const char* what) const {
  if (finalized_) fail(kPlan, std::string("cannot ") + what + " after finalize()");
}

int Plan::check_slot(int value, const std::string& what) const {
  PHI_CHECK(value >= 0 && static_cast<size_t>(value) < values_.size(), kPlan,
            what + " refers to slot " + std::to_string(value) + ", but the plan has " + std::to_string(values_.size()) +
                " values");
  return value;
}

const TensorDesc& Plan::value_desc(int value) const { return values_[check_slot(value, "value_desc")].desc; }

ValueKind Plan::value_kind(int value) const { return values_[check_slot(value, "value_kind")].kind; }

int Plan::new_value(const TensorDesc& desc, ValueKind kind, int index) {
  check(values_.size() < static_cast<size_t>(std::numeric_limits<int>::max()), kPlan, "too many values");
  values_.push_back(Value{desc, kind, index, -1, -1});
  return static_cast<int>(values_.size() - 1);
}

int Plan::add_input(const std::string& name, const TensorDesc& desc) {
  check_building("add an input");
  check(!name.empty(), kPlan, "an input needs a name");
  PHI_CHECK(desc.present(), kPlan, "input '" + name + "' needs a dtype");
  for (const Port& p : inputs_) PHI_CHECK(p.name != name, kPlan, "input '" + name + "' is declared twice");
  int slot = new_value(desc, ValueKind::input, static_cast<int>(inputs_.size()));
  inputs_.push_back(Port{name, slot});
  return slot;
}

int Plan::add_constant(const TensorDesc& desc, const void* data) {
  check_building("add a constant");  // before copying the bytes
  return add_constant(std::make_shared<const Constant>(desc, data));
}

int Plan::add_constant(std::shared_ptr<const Constant> constant) {
  check_building("add a constant");
  check(constant != nullptr, kPlan, "constant is null");
  int slot = new_value(constant->desc(), ValueKind::constant, static_cast<int>(constants_.size()));
  constants_.push_back(std::move(constant));
  return slot;
}

std::vector<int> Plan::add_step(const std::string& op, const std::vector<int>& inputs, const Attrs& attrs,
                                const std::vector<TensorDesc>& expected) {
  check_building("add a step");
  const size_t index = steps_.size();
  const std::string where = "step " + std::to_string(index) + " (" + op + ")";
  std::vector<TensorDesc> descs;
  descs.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i] == -1) {
      descs.emplace_back();
    } else {
      descs.push_back(values_[check_slot(inputs[i], where + " input " + std::to_string(i))].desc);
    }
  }
  std::unique_ptr<Kernel> kernel;
  try {
    kernel = make_kernel(op, descs, attrs);
    bind_constants(*kernel, inputs, descs);
  } catch (const Error& e) {
    // Keep the kernel's code and words, and add which step of the plan was at fault.
    std::string message = e.what();
    const std::string prefix = "[" + op + "] ";
    if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
    throw Error(e.code(), op, "step " + std::to_string(index) + ": " + message);
  }
  const auto& produced = kernel->outputs();
  if (!expected.empty()) {
    PHI_CHECK(expected.size() == produced.size(), kPlan,
              where + " declares " + std::to_string(expected.size()) + " outputs, the kernel has " +
                  std::to_string(produced.size()));
    for (size_t i = 0; i < produced.size(); ++i)
      PHI_CHECK(same_desc(expected[i], produced[i]), kPlan,
                where + " output " + std::to_string(i) + " is declared " + desc_str(expected[i]) + " but the kernel infers " +
                    desc_str(produced[i]));
  }
  std::vector<int> slots;
  slots.reserve(produced.size());
  for (const TensorDesc& d : produced) slots.push_back(new_value(d, ValueKind::intermediate, static_cast<int>(index)));
  for (int v : inputs)
    if (v >= 0) values_[v].last_use = static_cast<int>(index);
  steps_.push_back(Step{op, inputs, slots, std::move(kernel)});
  return slots;
}

// Shows a step's kernel the constants among its inputs (Kernel::bind_constants).
void Plan::bind_constants(Kernel& kernel, const std::vector<int>& inputs, const std::vector<TensorDesc>& descs) const {
  std::vector<TensorView> views(kernel.arity());
  bool any = false;
  for (size_t i = 0; i < inputs.size() && i < views.size(); ++i) {
    if (inputs[i] < 0) continue;
    views[i].desc = descs[i];
    const Value& v = values_[inputs[i]];
    if (v.kind != ValueKind::constant) continue;
    views[i].data = const_cast<void*>(constants_[v.index]->data());  // read-only, as in build_views
    any = true;
  }
  if (any) kernel.bind_constants(views.data());
}

void Plan::mark_output(int value, const std::string& name) {
  check_building("mark an output");
  check_slot(value, "output '" + name + "'");
  check(!name.empty(), kPlan, "an output needs a name");
  for (const Port& p : outputs_) PHI_CHECK(p.name != name, kPlan, "output '" + name + "' is declared twice");
  outputs_.push_back(Port{name, value});
}

// ---- finalize: liveness, memory plan, views ----------------------------------------------------

void Plan::finalize() {
  check_building("finalize");
  check(!outputs_.empty(), kPlan, "a plan needs at least one output (mark_output)");
  check(steps_.size() < std::numeric_limits<uint32_t>::max() / 64, kPlan, "too many steps");
  // The first name of a step-produced value is written in place; every other output is a copy.
  copies_.clear();
  for (size_t j = 0; j < outputs_.size(); ++j) {
    Value& v = values_[outputs_[j].value];
    if (v.kind == ValueKind::intermediate && v.direct_output < 0) {
      v.direct_output = static_cast<int>(j);
      continue;
    }
    OutputCopy c;
    c.output = static_cast<uint32_t>(j);
    c.bytes = v.desc.nbytes();
    if (v.kind == ValueKind::input) {
      c.from = OutputCopy::From::input;
      c.index = static_cast<uint32_t>(v.index);
    } else if (v.kind == ValueKind::constant) {
      c.from = OutputCopy::From::constant;
      c.data = constants_[v.index]->data();
    } else {
      c.from = OutputCopy::From::output;
      c.index = static_cast<uint32_t>(v.direct_output);
    }
    copies_.push_back(c);
  }
  alias_reshapes();
  plan_memory();
  build_views();
  finalized_ = true;
}

// A reshape only renames bytes: unless its output is written into a caller's buffer, the output
// views its input's storage (an arena value, a caller's input or a constant) and the step does
// nothing. The storage then lives as long as its last view is read.
void Plan::alias_reshapes() {
  auto root_of = [&](int v) {
    while (values_[v].alias >= 0) v = values_[v].alias;
    return v;
  };
  for (Step& step : steps_) {
    if (step.op != "reshape" || step.inputs.empty() || step.inputs[0] < 0) continue;
    Value& out = values_[step.outputs[0]];
    const int root = root_of(step.inputs[0]);
    const Value& r = values_[root];
    if (out.direct_output >= 0 || (r.kind == ValueKind::intermediate && r.direct_output >= 0)) continue;
    out.alias = root;
  }
  for (Value& v : values_) {
    if (v.alias < 0) continue;
    Value& r = values_[v.alias];
    r.last_use = std::max({r.last_use, v.last_use, v.index});
  }
}

// Greedy by size (largest first), each at the lowest aligned offset free of every placed value
// whose lifetime [first def, last use] overlaps its own: the heuristic TFLite's arena planner and
// ONNX Runtime's memory pattern use, within a few percent of optimal on inference graphs.
// Workspaces are planned like values that live for one step, so a kernel's scratch reuses memory
// of values that are already dead instead of sitting in a reserved block at the end.
void Plan::plan_memory() {
  regions_.clear();
  size_t naive = 0, max_workspace = 0;
  for (size_t v = 0; v < values_.size(); ++v) {
    const Value& val = values_[v];
    if (val.kind != ValueKind::intermediate || val.direct_output >= 0 || val.alias >= 0) continue;
    size_t bytes = align_up(val.desc.nbytes());
    naive += bytes;
    regions_.push_back(MemoryRegion{static_cast<int>(v), val.index, 0, bytes, val.index, std::max(val.index, val.last_use)});
  }
  for (size_t s = 0; s < steps_.size(); ++s) {
    size_t bytes = steps_[s].kernel->workspace_bytes();
    if (bytes == 0) continue;
    if (bytes > kMaxArenaBytes)
      too_big("step " + std::to_string(s) + " (" + steps_[s].op + ") needs a workspace of " + std::to_string(bytes) +
              " bytes, more than an arena may hold");
    max_workspace = std::max(max_workspace, align_up(bytes));
    int step = static_cast<int>(s);
    regions_.push_back(MemoryRegion{-1, step, 0, align_up(bytes), step, step});
  }
  naive_bytes_ = naive + max_workspace;

  std::vector<size_t> order(regions_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return regions_[a].bytes > regions_[b].bytes; });
  std::vector<size_t> placed;
  std::vector<std::pair<size_t, size_t>> busy;  // [offset, end) of placed regions alive at the same time
  size_t arena = 0;
  for (size_t i : order) {
    MemoryRegion& r = regions_[i];
    busy.clear();
    for (size_t j : placed) {
      const MemoryRegion& p = regions_[j];
      if (p.first <= r.last && r.first <= p.last && p.bytes > 0) busy.emplace_back(p.offset, p.offset + p.bytes);
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& [begin, end] : busy) {
      if (offset + r.bytes <= begin) break;
      offset = std::max(offset, end);
    }
    // Values are each below kMaxTensorBytes, but enough of them alive at once could still
    // overflow the sum: refuse the plan rather than wrap around to a small arena.
    if (offset > kMaxArenaBytes - r.bytes) too_big("the arena would need more than " + std::to_string(kMaxArenaBytes) + " bytes");
    r.offset = offset;
    arena = std::max(arena, offset + r.bytes);
    placed.push_back(i);
  }
  arena_bytes_ = arena;

  value_offsets_.assign(values_.size(), 0);
  workspace_offsets_.assign(steps_.size(), kNoWorkspace);
  for (const MemoryRegion& r : regions_) {
    if (r.value >= 0) value_offsets_[r.value] = r.offset;
    else workspace_offsets_[r.step] = r.offset;
  }
  std::sort(regions_.begin(), regions_.end(), [](const MemoryRegion& a, const MemoryRegion& b) {
    return a.first != b.first ? a.first < b.first : a.value < b.value;
  });
}

// Every step's views are laid out once in one flat vector with their descs; constants are bound
// here, arena values per arena (make_arena), caller buffers per run (run).
void Plan::build_views() {
  view_template_.clear();
  arena_patches_.clear();
  input_patches_.clear();
  output_patches_.clear();
  exec_.clear();
  auto add_view = [&](int value) {
    auto idx = static_cast<uint32_t>(view_template_.size());
    view_template_.emplace_back();
    if (value < 0) return;  // an absent optional input: dtype undefined, no data
    TensorView& view = view_template_.back();
    view.desc = values_[value].desc;
    if (values_[value].alias >= 0) value = values_[value].alias;  // a reshape's view: its storage
    const Value& v = values_[value];
    switch (v.kind) {
      case ValueKind::input:
        input_patches_.push_back(Patch{idx, static_cast<uint32_t>(v.index)});
        break;
      case ValueKind::constant:
        // Kernels only read their inputs; the view type is shared with outputs, hence non-const.
        view.data = const_cast<void*>(constants_[v.index]->data());
        break;
      case ValueKind::intermediate:
        if (v.direct_output >= 0) output_patches_.push_back(Patch{idx, static_cast<uint32_t>(v.direct_output)});
        else arena_patches_.push_back(ArenaPatch{idx, value_offsets_[value]});
        break;
    }
  };
  for (const Step& step : steps_) {
    ExecStep e;
    // A reshape whose output views its input runs nothing (its views are still laid out).
    e.kernel = values_[step.outputs[0]].alias >= 0 ? nullptr : step.kernel.get();
    e.in_view = static_cast<uint32_t>(view_template_.size());
    for (size_t i = 0; i < step.kernel->arity(); ++i) add_view(i < step.inputs.size() ? step.inputs[i] : -1);
    e.out_view = static_cast<uint32_t>(view_template_.size());
    for (int v : step.outputs) add_view(v);
    exec_.push_back(e);
  }
}

// ---- running ---------------------------------------------------------------------------------

void Plan::validate(std::span<const TensorView> inputs, std::span<const TensorView> outputs) const {
  if (inputs.size() != inputs_.size())
    fail(kPlan, "expects " + std::to_string(inputs_.size()) + " inputs, got " + std::to_string(inputs.size()));
  if (outputs.size() != outputs_.size())
    fail(kPlan, "expects " + std::to_string(outputs_.size()) + " outputs, got " + std::to_string(outputs.size()));
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorDesc& want = input_desc(i);
    if (!same_desc(inputs[i].desc, want))
      fail(kPlan, "input '" + inputs_[i].name + "' must be " + desc_str(want) + ", got " + desc_str(inputs[i].desc));
    if (inputs[i].data == nullptr && want.nbytes() != 0) fail(kPlan, "input '" + inputs_[i].name + "' has no data");
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const TensorDesc& want = output_desc(i);
    if (!same_desc(outputs[i].desc, want))
      fail(kPlan, "output '" + outputs_[i].name + "' must be " + desc_str(want) + ", got " + desc_str(outputs[i].desc));
    if (outputs[i].data == nullptr && want.nbytes() != 0) fail(kPlan, "output '" + outputs_[i].name + "' has no data");
  }
}

void Plan::run(std::span<const TensorView> inputs, std::span<const TensorView> outputs, const RunOptions& options) const {
  if (!finalized_) fail(kPlan, "run() needs a finalized plan (call finalize() first)");
  if (options.threads < 0) fail(kPlan, "threads must be >= 0, got " + std::to_string(options.threads));
  validate(inputs, outputs);
  Lease lease(*this);
  Arena& arena = lease.arena();
  TensorView* views = arena.views.data();
  for (const Patch& p : input_patches_) views[p.view].data = inputs[p.index].data;
  for (const Patch& p : output_patches_) views[p.view].data = outputs[p.index].data;
  ExecContext ctx;
  ctx.threads = options.threads;
  void* const* workspaces = arena.workspaces.data();
  const size_t n = exec_.size();
  if (options.step_ns == nullptr) {
    for (size_t s = 0; s < n; ++s) {
      const ExecStep& e = exec_[s];
      if (e.kernel != nullptr) e.kernel->run(views + e.in_view, views + e.out_view, workspaces[s], ctx);
    }
  } else {
    using Clock = std::chrono::steady_clock;
    for (size_t s = 0; s < n; ++s) {
      const ExecStep& e = exec_[s];
      auto t0 = Clock::now();
      if (e.kernel != nullptr) e.kernel->run(views + e.in_view, views + e.out_view, workspaces[s], ctx);
      options.step_ns[s] = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
    }
  }
  for (const OutputCopy& c : copies_) {
    if (c.bytes == 0) continue;
    const void* src = c.from == OutputCopy::From::input      ? inputs[c.index].data
                      : c.from == OutputCopy::From::constant ? c.data
                                                             : outputs[c.index].data;
    std::memcpy(outputs[c.output].data, src, c.bytes);
  }
}

}  // namespace phi
