#include "core/threadpool.h"

#include <algorithm>
#include <atomic>
#include <exception>

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
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_ && queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < helpers; ++i) queue_.push_back(job);
  }
  if (helpers == 1) cv_.notify_one(); else cv_.notify_all();
  drain(*job);
  {
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == job->ntasks; });
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
