// The core's own thread pool. Kernels and the GEMM driver split work over it; BLAS runs
// single-threaded inside each task, so there is exactly one pool of compute threads per process
// and alternating calls never fight a second pool for the cores.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace phi {

// Number of CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
// (rounded up) where one is set.
int available_cpus();

// The CPUs a cgroup CPU quota grants (quota / period: cgroup v2's cpu.max, v1's
// cpu.cfs_quota_us and cpu.cfs_period_us), the smallest on the way from the hierarchy's mount to
// the process's cgroup; 0 when none is set. `proc_cgroup` is /proc/self/cgroup's text, `root`
// where the hierarchies are mounted (/sys/fs/cgroup).
double cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& root);

class ThreadPool {
 public:
  explicit ThreadPool(int workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // The process-wide pool: available_cpus() - 1 workers (the calling thread is the last one).
  static ThreadPool& global();

  // Threads a call may use: the workers plus the caller.
  int capacity() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, ntasks) on at most `threads` threads, the caller included, and
  // returns when all are done. The first exception thrown by a task is rethrown here. Calls made
  // from inside a task run serially on that thread, so nesting never oversubscribes.
  void parallel_for(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn);

 private:
  struct Job;
  struct Worker;
  void worker_loop(Worker& self);
  // Wakes up to `count` sleeping workers for a job, each placed first on a CPU that neither the
  // caller (on CPU `caller`, -1 if unknown) nor another woken worker runs on. Called with mutex_
  // held; returns those to notify.
  std::vector<Worker*> wake_sleepers(int count, int caller);
  static void drain(Job& job, bool helper);

  std::vector<std::unique_ptr<Worker>> workers_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::mutex mutex_;
  bool stop_ = false;
  int sleepers_ = 0;                 // workers blocked in worker_loop (guarded by mutex_)
  std::atomic<int> pending_{0};      // queue_.size(), readable without the lock (spinning workers)
  std::atomic<bool> stopping_{false};
};

// Default threads for a call that does not say (set_num_threads; initially available_cpus()).
int default_threads();
void set_default_threads(int threads);

// Splits [0, n) into at most `threads` contiguous chunks of at least `grain` items and runs
// fn(begin, end) for each on the global pool.
void parallel_range(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Per-call execution settings passed to every kernel.
struct ExecContext {
  int threads = 0;  // 0: default_threads()
  int resolved_threads() const { return threads > 0 ? threads : default_threads(); }
};

}  // namespace phi
