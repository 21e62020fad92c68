// Runtime facts and settings: CPU features, thread counts, the BLAS in use.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "convert.h"
#include "core/common.h"
#include "core/cpu_features.h"
#include "core/threadpool.h"

namespace py = pybind11;

namespace phi::py_bind {

void init_runtime(py::module_& m) {
  m.def("available_cpus", &available_cpus,
        "CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (rounded up).");
  m.def("cgroup_cpu_limit", &cgroup_cpu_limit, py::arg("proc_cgroup"), py::arg("root"),
        "CPUs a cgroup CPU quota grants (quota / period), the smallest along the process's cgroup path, "
        "read from `root` for the /proc/self/cgroup text `proc_cgroup`; 0 when none is set.");
  m.def("get_num_threads", &default_threads, "Threads a kernel call uses when it does not say.");
  m.def(
      "set_num_threads", [](const py::object& threads) { set_default_threads(threads_from(threads, "set_num_threads")); },
      py::arg("threads"), "Set the default threads per kernel call (0: all available CPUs).");
  m.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["arch"] = f.arch;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f;
    d["neon"] = f.neon;
    return d;
  }, "What the CPU supports, as detected at run time.");
  m.def(
      "pool_placement_probe",
      [](const py::object& threads_obj, double busy_ms) {
        const int threads = threads_from(threads_obj, "pool_placement_probe");
        PHI_CHECK(busy_ms >= 0.0 && busy_ms <= 100.0, "pool_placement_probe",
                  "busy_ms must be in [0, 100], got " + std::to_string(busy_ms));
        auto cpu = [] {
#if defined(__linux__)
          return sched_getcpu();
#else
          return -1;
#endif
        };
        std::vector<std::tuple<bool, int, int>> seen(threads, {false, -1, -1});
        int entry = -1;
        {
          py::gil_scoped_release release;
          const auto caller = std::this_thread::get_id();
          entry = cpu();
          ThreadPool::global().parallel_for(threads, threads, [&](int64_t i) {
            const int start = cpu();
            const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(busy_ms);
            while (std::chrono::steady_clock::now() < until) {
            }
            seen[i] = {std::this_thread::get_id() == caller, start, cpu()};
          });
        }
        return std::make_pair(entry, seen);
      },
      py::arg("threads"), py::arg("busy_ms") = 1.0,
      "Test hook: runs one busy task of `busy_ms` per thread on the core's pool; returns the caller's CPU "
      "when it called, and per task (ran on the caller, CPU at its start, CPU at its end); -1 where the OS "
      "does not say.");
  m.def("blas_info", &blas_info, "The BLAS library the GEMM driver calls and its configuration.");
  m.def(
      "measure_fma_peak",
      [](const py::object& threads_obj, double seconds) {
        const int threads = threads_from(threads_obj, "measure_fma_peak");
        // Each thread runs for `seconds`: an unbounded (or NaN) duration would never return.
        PHI_CHECK(seconds > 0.0 && seconds <= 60.0, "measure_fma_peak",
                  "seconds must be in (0, 60], got " + std::to_string(seconds));
        py::gil_scoped_release release;
        return measure_fma_peak(threads, seconds);
      },
      py::arg("threads") = py::int_(1), py::arg("seconds") = 0.2,
      "Measure the machine's float32 FMA rate in GFLOP/s with independent FMA chains on `threads` threads "
      "(at most the CPUs available).");
}

}  // namespace phi::py_bind
