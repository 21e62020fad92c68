#include "core/threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace phi {

namespace {
// The first line of a small file, or "" when it cannot be read.
std::string first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  if (f) std::getline(f, line);
  return line;
}

// The directories from `mount` down to `mount + path`, the mount itself first: a limit set on
// any of them applies (the smallest wins). Where the cgroup is the mount's root (a container
// with its own cgroup namespace, or a v1 mount of just the container's cgroup), `mount` alone.
std::vector<std::string> cgroup_dirs(const std::string& mount, const std::string& path) {
  std::vector<std::string> dirs{mount};
  std::string dir = mount;
  std::stringstream parts(path);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part.empty() || part == "." || part == "..") continue;
    dir += "/" + part;
    dirs.push_back(dir);
  }
  return dirs;
}

// quota / period when both parse as positive numbers, else 0 (no limit).
double ratio(const std::string& quota, const std::string& period) {
  char* end = nullptr;
  const double q = std::strtod(quota.c_str(), &end);
  if (end == quota.c_str() || !(q > 0.0)) return 0.0;
  const double p = std::strtod(period.c_str(), &end);
  if (end == period.c_str() || !(p > 0.0)) return 0.0;
  return q / p;
}
}  // namespace

double cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& root) {
  double limit = 0.0;
  auto take = [&](double r) {
    if (r > 0.0 && (limit == 0.0 || r < limit)) limit = r;
  };
  std::stringstream lines(proc_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    // hierarchy-id:controllers:path (cgroup v2: "0::path")
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (line.compare(0, a, "0") == 0 && controllers.empty()) {
      for (const auto& dir : cgroup_dirs(root, path)) {
        std::stringstream fields(first_line(dir + "/cpu.max"));  // "max 100000" or "150000 100000"
        std::string quota, period;
        fields >> quota >> period;
        take(ratio(quota, period));
      }
      continue;
    }
    std::stringstream names(controllers);
    std::string name;
    bool cpu = false;
    while (std::getline(names, name, ',')) cpu = cpu || name == "cpu";
    if (!cpu) continue;
    for (const char* mount : {"/cpu,cpuacct", "/cpuacct,cpu", "/cpu"}) {
      for (const auto& dir : cgroup_dirs(root + mount, path)) {
        take(ratio(first_line(dir + "/cpu.cfs_quota_us"), first_line(dir + "/cpu.cfs_period_us")));
      }
    }
  }
  return limit;
}

int available_cpus() {
  // Read once: the affinity mask and the CPU quota are fixed for the life of a serving process,
  // and this is asked on every kernel call.
  static const int cpus = [] {
    int n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) n = std::max(1, CPU_COUNT(&set));
    // A container limited by a CPU quota (Kubernetes' CPU limits, docker --cpus) still sees
    // every CPU of the host in its affinity mask; threads beyond the quota only get throttled.
    std::ifstream f("/proc/self/cgroup");
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const double limit = cgroup_cpu_limit(text, "/sys/fs/cgroup");
    if (limit > 0.0) n = std::clamp(static_cast<int>(std::ceil(limit - 1e-9)), 1, n);
#endif
    return n;
  }();
  return cpus;
}

namespace {
thread_local bool in_pool_task = false;
std::atomic<int> g_default_threads{0};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// How long an idle worker, or a caller waiting for its helpers, spins before it blocks. A plan
// runs its kernels back to back, each a parallel_for a few microseconds to milliseconds long:
// blocking between them costs a futex wake-up (tens of microseconds, more on a busy machine) per
// kernel per thread, which at batch 1 is a large share of a model's run. Spinning briefly keeps
// the threads hot; the bound keeps an idle process from burning a core. PHI_ENGINE_SPIN_US sets
// it (0: block at once, for machines shared with other busy processes).
std::chrono::microseconds spin_budget() {
  static const std::chrono::microseconds budget = [] {
    const char* env = std::getenv("PHI_ENGINE_SPIN_US");
    long us = env != nullptr ? std::strtol(env, nullptr, 10) : 100;
    return std::chrono::microseconds(std::clamp<long>(us, 0, 100000));
  }();
  return budget;
}

// Spins until ready() or the spin budget is spent; true if ready.
template <typename Ready>
bool spin_until(Ready ready) {
  const auto budget = spin_budget();
  if (budget.count() == 0) return ready();
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (int i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if ((i & 63) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) return ready();
      // Let another runnable thread have the core: on a machine with more busy threads than
      // cores, the thread we wait for may be the one we would otherwise keep off it.
      std::this_thread::yield();
    }
  }
}

// Whether the pool keeps the threads of one call on different CPUs (wake_sleepers, claim_cpu).
// PHI_ENGINE_SPREAD=0 leaves placement to the OS alone.
bool spread_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("PHI_ENGINE_SPREAD");
    return env == nullptr || std::strtol(env, nullptr, 10) != 0;
  }();
  return enabled;
}

// The CPU the calling thread runs on, or -1 where the OS does not say.
int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// Records the CPU the calling thread runs on in a call's set (which holds CPUs 0-63) and returns
// it (-1: unknown); a helper that finds its CPU already in the set (the caller or another helper
// runs there) moves to one that is not. Narrowing its affinity makes the kernel migrate it at once; the old mask is
// restored right after, which leaves the thread where it now is, so nothing stays pinned.
int claim_cpu(std::atomic<uint64_t>& taken, bool helper) {
#if defined(__linux__)
  const int cpu = current_cpu();
  if (cpu < 0 || cpu >= 64) return cpu;
  const uint64_t before = taken.fetch_or(uint64_t{1} << cpu, std::memory_order_acq_rel);
  if (!helper || (before & (uint64_t{1} << cpu)) == 0) return cpu;
  cpu_set_t mine;
  if (sched_getaffinity(0, sizeof(mine), &mine) != 0) return cpu;
  cpu_set_t free_cpus;
  CPU_ZERO(&free_cpus);
  for (int c = 0; c < 64; ++c) {
    if (CPU_ISSET(c, &mine) && (before & (uint64_t{1} << c)) == 0) CPU_SET(c, &free_cpus);
  }
  if (CPU_COUNT(&free_cpus) == 0 || sched_setaffinity(0, sizeof(free_cpus), &free_cpus) != 0) return cpu;
  sched_setaffinity(0, sizeof(mine), &mine);
  const int now = current_cpu();
  if (now >= 0 && now < 64) taken.fetch_or(uint64_t{1} << now, std::memory_order_acq_rel);
  return now;
#else
  (void)taken;
  (void)helper;
  return -1;
#endif
}
}  // namespace

// Why the pool places its threads: Linux often wakes a sleeping helper on its waker's CPU (on a
// VM an idle vCPU looks busy to the guest, since the host has descheduled it), and then leaves
// caller and helper together, both busy and cache-hot, so a two-thread call runs at one
// thread's speed. After 0.1 s idle, 2-thread 256^3 and 512^3 products took 1.8-1.9x longer
// (median) that way; 87-88 % of rounds slow against 13-30 % with the placement below
// (`benchmarks/bench_runtime.py --only placement`). Narrowing a sleeping helper's affinity to one
// CPU before waking it decides where it wakes (the CPU it slept on, unless a thread of the call
// is there); it restores its mask once it runs.
struct ThreadPool::Worker {
  std::thread thread;
  std::condition_variable wake;
  bool asleep = false;              // guarded by mutex_
  std::atomic<bool> placed{false};  // its affinity was narrowed for a wake-up: restore it
#if defined(__linux__)
  std::atomic<pid_t> tid{0};
  cpu_set_t mask{};   // its affinity when it started, written before it first sleeps
  int last_cpu = -1;  // where it went to sleep (guarded by mutex_)
#endif
};

struct ThreadPool::Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t ntasks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;
  std::exception_ptr error;
  std::atomic<uint64_t> cpus{0};  // CPUs (below 64) the call's threads run on: claim_cpu
};

ThreadPool::ThreadPool(int workers) {
  for (int i = 0; i < workers; ++i) workers_.push_back(std::make_unique<Worker>());
  for (auto& w : workers_) {
    Worker* self = w.get();
    w->thread = std::thread([this, self] { worker_loop(*self); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    stopping_.store(true);
  }
  for (auto& w : workers_) w->wake.notify_one();
  for (auto& w : workers_) w->thread.join();
}

namespace {
// The process-wide pool, and whether it was inherited through fork(): a child gets a copy of the
// pool's state but none of its worker threads, so it must not queue work for them (it would wait
// on nobody) or change their affinity (their thread ids name the parent's threads).
std::atomic<ThreadPool*> g_pool{nullptr};
std::atomic<bool> g_pool_inherited{false};
std::atomic<bool> g_pool_busy{false};  // a spin lock (a mutex held at fork stays held in the child)

void pool_after_fork_in_child() {
  g_pool_inherited.store(true, std::memory_order_relaxed);
  g_pool_busy.store(false, std::memory_order_relaxed);
}
}  // namespace

ThreadPool& ThreadPool::global() {
  ThreadPool* pool = g_pool.load(std::memory_order_acquire);
  if (pool != nullptr && !g_pool_inherited.load(std::memory_order_relaxed)) [[likely]]
    return *pool;
  while (g_pool_busy.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  pool = g_pool.load(std::memory_order_relaxed);
  if (pool == nullptr || g_pool_inherited.load(std::memory_order_relaxed)) {
#if defined(__unix__) || defined(__APPLE__)
    if (pool == nullptr) pthread_atfork(nullptr, nullptr, pool_after_fork_in_child);
#endif
    // Leaked on purpose, as is an inherited one (its workers do not exist here): worker threads
    // must outlive every static destructor that may still run kernels at interpreter shutdown.
    pool = new ThreadPool(available_cpus() - 1);
    g_pool.store(pool, std::memory_order_release);
    g_pool_inherited.store(false, std::memory_order_relaxed);
  }
  g_pool_busy.store(false, std::memory_order_release);
  return *pool;
}

void ThreadPool::drain(Job& job, bool helper) {
  if (helper && spread_enabled() && job.next.load(std::memory_order_relaxed) < job.ntasks) claim_cpu(job.cpus, true);
  in_pool_task = true;
  for (;;) {
    int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.ntasks) break;
    try {
      (*job.fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.mutex);
      if (!job.error) job.error = std::current_exception();
    }
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.ntasks) {
      std::lock_guard<std::mutex> lock(job.mutex);
      job.finished.notify_all();
    }
  }
  in_pool_task = false;
}

void ThreadPool::worker_loop(Worker& self) {
#if defined(__linux__)
  sched_getaffinity(0, sizeof(self.mask), &self.mask);
  self.tid.store(static_cast<pid_t>(syscall(SYS_gettid)));
#endif
  for (;;) {
    spin_until([this] { return pending_.load(std::memory_order_acquire) > 0 || stopping_.load(); });
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      while (!stop_ && queue_.empty()) {
        // Under mutex_, as parallel_for reads both: no lost wake-up.
        self.asleep = true;
#if defined(__linux__)
        self.last_cpu = sched_getcpu();
#endif
        ++sleepers_;
        self.wake.wait(lock);
        if (self.asleep) {  // woken by something other than wake_sleepers
          self.asleep = false;
          --sleepers_;
        }
      }
      if (stop_ && queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      pending_.fetch_sub(1, std::memory_order_relaxed);
    }
#if defined(__linux__)
    if (self.placed.exchange(false)) sched_setaffinity(0, sizeof(self.mask), &self.mask);
#endif
    drain(*job, true);
  }
}

std::vector<ThreadPool::Worker*> ThreadPool::wake_sleepers(int count, int caller) {
  std::vector<Worker*> woken;
#if defined(__linux__)
  const bool place = spread_enabled();
  cpu_set_t used;
  CPU_ZERO(&used);
  if (caller >= 0 && caller < CPU_SETSIZE) CPU_SET(caller, &used);
#else
  (void)caller;
#endif
  for (auto& w : workers_) {
    if (static_cast<int>(woken.size()) >= count) break;
    if (!w->asleep) continue;
    w->asleep = false;
    --sleepers_;
    woken.push_back(w.get());
#if defined(__linux__)
    const pid_t tid = w->tid.load();
    if (!place || tid == 0) continue;
    // Where it slept, unless a thread of this call is there: then the next CPU of its mask after
    // the caller's. Keeping the OS's own spread matters where several processes share a machine
    // (a fixed choice would stack every process's helpers on the same CPUs).
    int target = w->last_cpu;
    if (target < 0 || target >= CPU_SETSIZE || !CPU_ISSET(target, &w->mask) || CPU_ISSET(target, &used)) {
      target = -1;
      for (int i = 1; i <= CPU_SETSIZE && target < 0; ++i) {
        const int c = (std::max(caller, 0) + i) % CPU_SETSIZE;
        if (CPU_ISSET(c, &w->mask) && !CPU_ISSET(c, &used)) target = c;
      }
    }
    if (target < 0) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(target, &one);
    if (sched_setaffinity(tid, sizeof(one), &one) == 0) {
      w->placed.store(true);
      CPU_SET(target, &used);
    }
#endif
  }
  return woken;
}

void ThreadPool::parallel_for(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn) {
  if (ntasks <= 0) return;
  int helpers = std::min<int64_t>({static_cast<int64_t>(threads) - 1, ntasks - 1,
                                   static_cast<int64_t>(workers_.size())});
  if (in_pool_task || helpers <= 0) {
    for (int64_t i = 0; i < ntasks; ++i) fn(i);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->ntasks = ntasks;
  // The caller's CPU, recorded before any helper can look.
  const int caller = spread_enabled() ? claim_cpu(job->cpus, false) : -1;
  std::vector<Worker*> woken;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < helpers; ++i) queue_.push_back(job);
    pending_.fetch_add(helpers, std::memory_order_release);
    // Spinning workers see pending_ and need no wake-up (a futex syscall each).
    if (sleepers_ > 0) woken = wake_sleepers(helpers, caller);
  }
  for (Worker* w : woken) w->wake.notify_one();
  drain(*job, false);
  auto all_done = [&] { return job->done.load(std::memory_order_acquire) == job->ntasks; };
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(lock, all_done);
  }
  // A helper that wakes late finds no task left and never touches fn (it holds the job alive).
  if (job->error) std::rethrow_exception(job->error);
}

int default_threads() {
  int t = g_default_threads.load(std::memory_order_relaxed);
  return t > 0 ? t : available_cpus();
}

void set_default_threads(int threads) { g_default_threads.store(std::max(0, threads), std::memory_order_relaxed); }

void parallel_range(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(threads, (n + grain - 1) / std::max<int64_t>(grain, 1)));
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  ThreadPool::global().parallel_for(chunks, static_cast<int>(chunks), [&](int64_t c) {
    fn(c * n / chunks, (c + 1) * n / chunks);
  });
}

}  // namespace phi
