// The scheduler: the real-time Scheduler for the serving layer's workers, and the simulator.
// Blocking calls (acquire, reap, simulate) release the GIL; the short ones keep it, since they
// only ever wait for the scheduler's own mutex, which no holder keeps while waiting for the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "convert.h"
#include "core/scheduler/policies.h"
#include "core/scheduler/scheduler.h"
#include "core/scheduler/simulator.h"

namespace py = pybind11;

namespace phi::py_bind {

namespace {

using namespace phi::sched;

const std::string kOp = "scheduler";

double number_from(const py::handle& obj, const std::string& what) {
  PHI_CHECK(!py::isinstance<py::bool_>(obj) && (py::isinstance<py::int_>(obj) || py::isinstance<py::float_>(obj) ||
                                                  py::isinstance(obj, py::module_::import("numpy").attr("number"))),
            kOp, what + " must be a number");
  return obj.cast<double>();
}

std::vector<double> numbers_from(const py::handle& obj, const std::string& what) {
  PHI_CHECK(py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj), kOp, what + " must be a list of numbers");
  std::vector<double> out;
  for (auto item : py::reinterpret_borrow<py::sequence>(obj)) out.push_back(number_from(item, what));
  return out;
}

int small_int(const py::handle& obj, const std::string& what) {
  const int64_t v = int_from(obj, kOp, what);
  PHI_CHECK(v >= -(1LL << 30) && v <= (1LL << 30), kOp, what + " is out of range");
  return static_cast<int>(v);
}

Config config_from(const py::dict& d) {
  Config c;
  for (auto [key_obj, value] : d) {
    const std::string key = str_from(key_obj, kOp, "a config key");
    if (key == "policy") c.policy = str_from(value, kOp, "policy");
    else if (key == "max_batch") c.max_batch = small_int(value, "max_batch");
    else if (key == "max_batch_cost") c.max_batch_cost = number_from(value, "max_batch_cost");
    else if (key == "workers") c.workers = small_int(value, "workers");
    else if (key == "max_queue") c.max_queue = int_from(value, kOp, "max_queue");
    else if (key == "class_weights") c.class_weights = numbers_from(value, "class_weights");
    else if (key == "tenant_weights") c.tenant_weights = numbers_from(value, "tenant_weights");
    else if (key == "min_share") c.min_share = numbers_from(value, "min_share");
    else if (key == "theta") c.theta = number_from(value, "theta");
    else if (key == "aging") c.aging = number_from(value, "aging");
    else if (key == "gamma") c.gamma = number_from(value, "gamma");
    else if (key == "margin") c.margin = number_from(value, "margin");
    else if (key == "headroom_weight") c.headroom_weight = number_from(value, "headroom_weight");
    else if (key == "max_queue_delay") c.max_queue_delay = number_from(value, "max_queue_delay");
    else if (key == "aimd_step") c.aimd_step = number_from(value, "aimd_step");
    else if (key == "aimd_backoff") c.aimd_backoff = number_from(value, "aimd_backoff");
    else if (key == "preferred_batch_sizes") {
      c.preferred_batch_sizes.clear();
      for (double v : numbers_from(value, "preferred_batch_sizes")) {
        PHI_CHECK(v == std::floor(v) && std::abs(v) < 1e9, kOp, "preferred batch sizes must be integers");
        c.preferred_batch_sizes.push_back(static_cast<int>(v));
      }
    } else {
      fail(kOp, "unknown config key '" + key + "'");
    }
  }
  return c;
}

py::dict stats_dict(const SchedulerStats& s) {
  py::dict d;
  d["queued"] = s.queued;
  d["in_flight"] = s.in_flight;
  d["submitted"] = s.submitted;
  py::dict ended;
  for (size_t i = 1; i < s.ended.size(); ++i) ended[outcome_name(static_cast<Outcome>(i))] = s.ended[i];
  d["ended"] = ended;
  d["submit_ns"] = s.submit_ns;
  py::list decisions;
  for (size_t b = 0; b < s.decisions.size(); ++b) {
    const auto& x = s.decisions[b];
    if (x.count == 0) continue;
    decisions.append(py::make_tuple(b == 0 ? 1 : (1LL << b), x.count, x.total_ns / x.count, x.max_ns));
  }
  d["decisions"] = decisions;  // (queue length up to, count, mean ns, max ns)
  return d;
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

template <class T>
std::vector<T> from_array(const py::handle& obj, const std::string& what) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
  PHI_CHECK(a && a.ndim() == 1, "simulate", what + " must be a one-dimensional array");
  return std::vector<T>(a.data(), a.data() + a.size());
}

py::dict run_simulation(const py::dict& config, const py::dict& workload, const py::sequence& table_cost,
                        const py::sequence& table_seconds, uint64_t seed, bool learn) {
  Config c = config_from(config);
  Workload w;
  w.arrival = from_array<double>(workload["arrival"], "arrival");
  w.cls = from_array<int>(workload["cls"], "cls");
  w.tenant = from_array<int>(workload["tenant"], "tenant");
  w.cost = from_array<double>(workload["cost"], "cost");
  w.deadline = from_array<double>(workload["deadline"], "deadline");
  LatencyTable t;
  t.cost = numbers_from(table_cost, "table costs");
  for (auto row : table_seconds) t.seconds.push_back(numbers_from(row, "table seconds"));
  SimResult r;
  {
    py::gil_scoped_release release;
    r = simulate(c, w, t, seed, learn);
  }
  py::dict out;
  out["outcome"] = to_array(r.outcome);
  out["start"] = to_array(r.start);
  out["finish"] = to_array(r.finish);
  out["batch"] = to_array(r.batch);
  out["batch_cost"] = to_array(r.batch_cost);
  out["batch_seconds"] = to_array(r.batch_seconds);
  out["decision_queue"] = to_array(r.decision_queue);
  out["decision_ns"] = to_array(r.decision_ns);
  out["submit_ns"] = r.submit_ns;
  return out;
}

}  // namespace

void init_scheduler(py::module_& m) {
  py::class_<Scheduler, std::shared_ptr<Scheduler>>(m, "Scheduler",
                                                    "The native request scheduler of one deployment (private).")
      .def(py::init([](const py::dict& config) { return std::make_shared<Scheduler>(config_from(config)); }),
           py::arg("config"))
      .def_static("now", &Scheduler::now, "Seconds on the steady clock every scheduler time is on.")
      .def(
          "submit",
          [](Scheduler& s, const py::object& id, const py::object& cls, const py::object& tenant,
             const py::object& cost, const py::object& deadline_in) {
            const int64_t rid = int_from(id, kOp, "request id");
            PHI_CHECK(rid >= 0, kOp, "request ids are non-negative");
            const double dl = number_from(deadline_in, "deadline");
            PHI_CHECK(dl > 0, kOp, "the deadline must be in the future");
            return std::string(outcome_name(s.submit(static_cast<uint64_t>(rid), small_int(cls, "priority class"),
                                                     small_int(tenant, "tenant"), number_from(cost, "cost"), dl)));
          },
          py::arg("id"), py::arg("cls"), py::arg("tenant"), py::arg("cost"), py::arg("deadline_in"),
          "Queue a request arriving now, due deadline_in seconds from now (inf: best effort). Returns 'pending' "
          "or the reason it was rejected: 'queue_full', 'deadline_infeasible' or 'closed'.")
      .def(
          "submit_inline",
          [](Scheduler& s, const py::object& id, const py::object& cls, const py::object& tenant,
             const py::object& cost, const py::object& deadline_in) -> py::object {
            const int64_t rid = int_from(id, kOp, "request id");
            PHI_CHECK(rid >= 0, kOp, "request ids are non-negative");
            const double dl = number_from(deadline_in, "deadline");
            PHI_CHECK(dl > 0, kOp, "the deadline must be in the future");
            Batch b;
            const Outcome out = s.submit_inline(static_cast<uint64_t>(rid), small_int(cls, "priority class"),
                                                small_int(tenant, "tenant"), number_from(cost, "cost"), dl, b);
            if (b.requests.empty()) return py::str(outcome_name(out));
            return py::make_tuple(b.token, b.start, b.requests.front().arrival);
          },
          py::arg("id"), py::arg("cls"), py::arg("tenant"), py::arg("cost"), py::arg("deadline_in"),
          "submit() that may hand the request back to run in the caller's thread: (token, start, arrival) "
          "when the policy dispatches it at once on an idle scheduler (run it, then release(token)); else "
          "submit()'s answer.")
      .def(
          "acquire",
          [](Scheduler& s, double timeout) -> py::object {
            Batch b;
            bool open;
            {
              py::gil_scoped_release release;
              open = s.acquire(timeout, b);
            }
            if (!open) return py::none();
            py::list ids, arrivals;
            for (const Request& r : b.requests) {
              ids.append(r.id);
              arrivals.append(r.arrival);
            }
            return py::make_tuple(b.token, b.start, ids, arrivals, b.cost);
          },
          py::arg("timeout"),
          "For a free worker: (token, start, ids, arrivals, cost) of the next batch, with ids empty when the "
          "timeout passed first; None once closed with nothing left to run.")
      .def("release", &Scheduler::release, py::arg("token"), py::arg("ok"),
           "The worker finished the batch (ok false: it failed).")
      .def(
          "reap",
          [](Scheduler& s, double timeout) -> py::object {
            std::vector<Ended> ended;
            bool open;
            {
              py::gil_scoped_release release;
              open = s.reap(timeout, ended);
            }
            if (!open) return py::none();
            py::list out;
            for (const Ended& e : ended) out.append(py::make_tuple(e.id, outcome_name(e.outcome)));
            return out;
          },
          py::arg("timeout"),
          "[(id, reason)] of requests that ended without running (possibly empty after the timeout); None once "
          "closed and nothing more can end that way.")
      .def("cancel", &Scheduler::cancel, py::arg("id"), "Withdraw a queued request; False once dispatched.")
      .def("close", &Scheduler::close, py::arg("drain"), "Stop accepting; without drain, queued requests end.")
      .def("record_latency", &Scheduler::record_latency, py::arg("cost"), py::arg("seconds"),
           "Teach the latency model one measured batch (the warm-up sweep).")
      .def(
          "latency_table",
          [](const Scheduler& s) {
            py::list out;
            for (const LatencyPoint& p : s.latency_table()) out.append(py::make_tuple(p.cost, p.seconds, p.samples));
            return out;
          },
          "[(batch cost, estimated tail seconds, samples)] of the latency model.")
      .def("stats", [](const Scheduler& s) { return stats_dict(s.stats()); }, "Counters and decision times.");

  m.def("scheduler_policies", &policy_names, "The scheduling policies the core implements.");
  m.def("simulate", &run_simulation, py::arg("config"), py::arg("workload"), py::arg("table_cost"),
        py::arg("table_seconds"), py::arg("seed") = 0, py::arg("learn") = true,
        "Run a workload through the scheduler on a virtual clock with latencies drawn from a measured table.");
}

}  // namespace phi::py_bind
