#include "cuda/runtime.h"

#include "cuda/gemm.h"

#include <mutex>
#include <utility>
#include <vector>

namespace phi::cuda {

namespace {

// Graph captures in progress (any thread) and the frees they put off: CUDA forbids synchronizing
// the device while a stream is capturing, and cudaFree / cudaFreeHost may synchronize, so memory
// dropped during a capture is freed when the last capture ends.
std::mutex capture_mutex;
int captures = 0;
std::vector<std::pair<void*, bool>> deferred;  // (pointer, pinned host memory)

void free_now(void* p, bool host) noexcept {
  const cudaError_t err = host ? cudaFreeHost(p) : cudaFree(p);
  if (err != cudaSuccess) (void)cudaGetLastError();
}

// Frees `p` now, or when the captures in progress have ended.
void release(void* p, bool host) noexcept {
  if (p == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (captures > 0) {
      deferred.emplace_back(p, host);
      return;
    }
  }
  free_now(p, host);
}

void capture_started() {
  std::lock_guard<std::mutex> lock(capture_mutex);
  ++captures;
}

void capture_ended() noexcept {
  std::vector<std::pair<void*, bool>> now;
  {
    std::lock_guard<std::mutex> lock(capture_mutex);
    if (--captures == 0) now.swap(deferred);
  }
  for (const auto& [p, host] : now) free_now(p, host);
}

ErrorCode code_of(cudaError_t err) {
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return ErrorCode::unsupported;
    case cudaErrorMemoryAllocation:
      return ErrorCode::resource;
    default:
      return ErrorCode::internal;
  }
}

std::string describe(cudaError_t err) {
  std::string text = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  if (err == cudaErrorNoKernelImageForDevice) {
    text += " (this build of phi_engine._core_cuda has no code for this GPU; rebuild with "
            "CMAKE_CUDA_ARCHITECTURES naming its compute capability)";
  }
  return text;
}

}  // namespace

void throw_cuda_error(const std::string& op, cudaError_t err) {
  // Reset the runtime's last-error slot so the next call starts clean; a sticky error (a fault
  // inside a kernel) stays and every later call reports it again, which is the truth.
  (void)cudaGetLastError();
  throw Error(code_of(err), "cuda:" + op, describe(err));
}

void fail_cuda(ErrorCode code, const std::string& op, const std::string& message) {
  throw Error(code, "cuda:" + op, message);
}

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string device_status() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (err == cudaErrorInsufficientDriver && driver_version() == 0) {
      return "no NVIDIA driver is installed (" + describe(err) + ")";
    }
    return describe(err);
  }
  return count > 0 ? std::string() : std::string("no CUDA device found");
}

DeviceInfo device_info(int index) {
  const int count = device_count();
  if (index < 0 || index >= count) {
    fail_cuda(ErrorCode::invalid_argument, "device_info",
         "device index " + std::to_string(index) + " out of range (" + std::to_string(count) + " devices)");
  }
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, index), "device_info");
  DeviceInfo info;
  info.index = index;
  info.name = prop.name;
  info.memory_bytes = prop.totalGlobalMem;
  int value = 0;
  check_cuda(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, index), "device_info");
  check_cuda(cudaDeviceGetAttribute(&info.minor, cudaDevAttrComputeCapabilityMinor, index), "device_info");
  check_cuda(cudaDeviceGetAttribute(&info.multiprocessors, cudaDevAttrMultiProcessorCount, index), "device_info");
  check_cuda(cudaDeviceGetAttribute(&value, cudaDevAttrL2CacheSize, index), "device_info");
  info.l2_bytes = static_cast<size_t>(value);
  check_cuda(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, index), "device_info");
  info.shared_per_block_optin = static_cast<size_t>(value);
  return info;
}

int runtime_version() {
  int version = 0;
  if (cudaRuntimeGetVersion(&version) != cudaSuccess) (void)cudaGetLastError();
  return version;
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) (void)cudaGetLastError();
  return version;
}

void require_device(const std::string& op) {
  if (device_count() == 0) {
    fail_cuda(ErrorCode::unsupported, op, "no CUDA device is available here: " + device_status());
  }
}

DeviceBuffer::DeviceBuffer(size_t nbytes) : nbytes_(nbytes) {
  // cudaMalloc(0) may return null or a unique pointer; a 1-byte allocation keeps data() a real,
  // 256-byte aligned device address for empty tensors too.
  check_cuda(cudaMalloc(&data_, nbytes == 0 ? 1 : nbytes), "alloc");
}

DeviceBuffer::~DeviceBuffer() {
  // cudaFree waits for the kernels still using the memory (put off while a graph is being
  // captured). Its error cannot be thrown from a destructor; a sticky fault it might report is
  // reported again by the next call that checks.
  release(data_, false);
}

void copy_to_device(void* dst, const void* src, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  // From pageable memory cudaMemcpy may return before the DMA has landed; waiting for the
  // stream makes the data visible to work queued on any stream afterwards.
  check_cuda(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream), "copy_to_device");
  check_cuda(cudaStreamSynchronize(stream), "copy_to_device");
}

void copy_to_host(void* dst, const void* src, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  check_cuda(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream), "copy_to_host");
  check_cuda(cudaStreamSynchronize(stream), "copy_to_host");
}

void copy_device(void* dst, const void* src, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  check_cuda(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream), "copy_device");
}

void copy_async(void* dst, const void* src, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  check_cuda(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream), "copy_async");
}

void copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
             cudaStream_t stream) {
  if (width == 0 || height == 0) return;
  check_cuda(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDeviceToDevice, stream),
             "copy_2d");
}

void fill_bytes(void* dst, int value, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  check_cuda(cudaMemsetAsync(dst, value, nbytes, stream), "fill_bytes");
}

void synchronize() { check_cuda(cudaDeviceSynchronize(), "synchronize"); }

Event::Event() { check_cuda(cudaEventCreate(&event_), "event"); }

Event::~Event() {
  if (event_ != nullptr && cudaEventDestroy(event_) != cudaSuccess) (void)cudaGetLastError();
}

void Event::record(cudaStream_t stream) { check_cuda(cudaEventRecord(event_, stream), "event"); }

void Event::synchronize() { check_cuda(cudaEventSynchronize(event_), "event"); }

float Event::elapsed_ms(const Event& end) const {
  float ms = 0.0f;
  check_cuda(cudaEventElapsedTime(&ms, event_, end.event_), "event");
  return ms;
}

Stream::Stream() { check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream"); }

Stream::~Stream() {
  if (stream_ == nullptr) return;
  release_stream(stream_);
  if (cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
}

void Stream::synchronize() { check_cuda(cudaStreamSynchronize(stream_), "stream"); }

HostBuffer::HostBuffer(size_t nbytes) : nbytes_(nbytes) {
  check_cuda(cudaHostAlloc(&data_, nbytes == 0 ? 1 : nbytes, cudaHostAllocDefault), "host_alloc");
}

HostBuffer::~HostBuffer() { release(data_, true); }

Graph::~Graph() {
  if (exec_ != nullptr && cudaGraphExecDestroy(exec_) != cudaSuccess) (void)cudaGetLastError();
}

void Graph::launch(cudaStream_t stream) { check_cuda(cudaGraphLaunch(exec_, stream), "graph"); }

void begin_capture(cudaStream_t stream) {
  capture_started();
  const cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    capture_ended();
    throw_cuda_error("graph", err);
  }
}

Graph* end_capture(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  capture_ended();
  check_cuda(ended, "graph");
  size_t nodes = 0;
  cudaError_t err = cudaGraphGetNodes(graph, nullptr, &nodes);
  cudaGraphExec_t exec = nullptr;
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  check_cuda(err, "graph");
  return new Graph(exec, nodes);
}

void abort_capture(cudaStream_t stream) noexcept {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr) (void)cudaGraphDestroy(graph);
    capture_ended();
  }
  (void)cudaGetLastError();
}

}  // namespace phi::cuda
