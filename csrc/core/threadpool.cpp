#include "core/threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sched.h>
#endif

namespace phi {

int available_cpus() {
  // Read once: the affinity mask is fixed for the life of a serving process, and this is asked
  // on every kernel call.
  static const int cpus = [] {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
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
}  // namespace

struct ThreadPool::Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t ntasks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;
  std::exception_ptr error;
};

ThreadPool::ThreadPool(int workers) {
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    stopping_.store(true);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::global() {
  // Leaked on purpose: worker threads must outlive every static destructor that may still run
  // kernels during interpreter shutdown.
  static ThreadPool* pool = new ThreadPool(available_cpus() - 1);
  return *pool;
}

void ThreadPool::drain(Job& job) {
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

void ThreadPool::worker_loop() {
  for (;;) {
    spin_until([this] { return pending_.load(std::memory_order_acquire) > 0 || stopping_.load(); });
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!stop_ && queue_.empty()) {
        ++sleepers_;  // under mutex_: parallel_for reads it under the same lock, so no lost wake-up
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        --sleepers_;
      }
      if (stop_ && queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      pending_.fetch_sub(1, std::memory_order_relaxed);
    }
    drain(*job);
  }
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
  int sleeping = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < helpers; ++i) queue_.push_back(job);
    pending_.fetch_add(helpers, std::memory_order_release);
    sleeping = sleepers_;
  }
  // Spinning workers see pending_ and need no wake-up (a futex syscall each).
  if (sleeping == 1 || helpers == 1) {
    if (sleeping > 0) cv_.notify_one();
  } else if (sleeping > 1) {
    cv_.notify_all();
  }
  drain(*job);
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
