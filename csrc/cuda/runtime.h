// CUDA runtime plumbing of the CUDA module: runtime errors as phi::Error, what devices exist,
// device memory, copies and events. Host code only; the kernels are in the .cu files.
//
// Every operation runs on the legacy default stream, so it is ordered after whatever the caller
// (or CuPy/PyTorch on their default streams) queued before it, and copies back to the host wait
// for the kernels before them.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/common.h"

namespace phi::cuda {

// The stream every op is queued on.
inline cudaStream_t default_stream() { return nullptr; }

// Throws phi::Error "[cuda:<op>] <cudaErrorName>: <description>". The code says whether the
// caller can do anything about it: no driver or no device -> unsupported, out of device memory
// -> resource, anything else (a failed launch, a fault in a kernel) -> internal.
[[noreturn]] void throw_cuda_error(const std::string& op, cudaError_t err);

inline void check_cuda(cudaError_t err, const std::string& op) {
  if (err != cudaSuccess) throw_cuda_error(op, err);
}

// "[cuda:<op>] message" with the given code.
[[noreturn]] void fail_cuda(ErrorCode code, const std::string& op, const std::string& message);

// Devices the runtime sees; 0 when there is no driver or no GPU (never throws).
int device_count() noexcept;

// Why device_count() is 0 ("" when there is a device): the runtime's own error description.
std::string device_status();

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0;
  int minor = 0;
  int multiprocessors = 0;
  size_t memory_bytes = 0;
  size_t l2_bytes = 0;
  size_t shared_per_block_optin = 0;
};

DeviceInfo device_info(int index);

// The CUDA runtime version the module was built with and the driver's, as 1000 * major + 10 * minor.
int runtime_version();
int driver_version();

// Fails with UnsupportedError naming `op` when no device can run it.
void require_device(const std::string& op);

// Device memory that frees itself. Allocation failure throws ResourceError.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t nbytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

// Host <-> device copies ordered on `stream` (the legacy default stream unless given); both
// return when the copy is done (and so every kernel queued on `stream` before it), so host
// memory may be reused on return. Only that stream is waited for, never the whole device.
void copy_to_device(void* dst, const void* src, size_t nbytes, cudaStream_t stream = default_stream());
void copy_to_host(void* dst, const void* src, size_t nbytes, cudaStream_t stream = default_stream());
// Device -> device, queued on `stream`.
void copy_device(void* dst, const void* src, size_t nbytes, cudaStream_t stream = default_stream());
// Any direction (unified addressing), queued on `stream`; host memory must be pinned
// (HostBuffer) for the copy to be asynchronous and capturable into a graph.
void copy_async(void* dst, const void* src, size_t nbytes, cudaStream_t stream);
// `height` rows of `width` bytes from src (rows `spitch` bytes apart) to dst (rows `dpitch` bytes
// apart), device to device, queued on `stream`: one part of a concatenation.
void copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
             cudaStream_t stream);
// Sets nbytes bytes to `value`, queued on `stream`.
void fill_bytes(void* dst, int value, size_t nbytes, cudaStream_t stream = default_stream());
// Waits for all work on the current device.
void synchronize();

// A timing event on the default stream.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(cudaStream_t stream = default_stream());
  void synchronize();
  // Milliseconds from this event to `end`; both must have been recorded and completed.
  float elapsed_ms(const Event& end) const;

 private:
  cudaEvent_t event_ = nullptr;
};

// A non-blocking stream (it does not wait for the legacy default stream), for work that should
// overlap other streams': a replica's plan runs on one.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  // Waits for everything queued on the stream.
  void synchronize();

 private:
  cudaStream_t stream_ = nullptr;
};

// Pinned (page-locked) host memory: copies from and to it run asynchronously at full PCIe/NVLink
// speed and can be captured into a CUDA graph.
class HostBuffer {
 public:
  explicit HostBuffer(size_t nbytes);
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

// A CUDA graph captured from a stream and instantiated: launch() replays every kernel and copy
// queued during the capture, on the same addresses, as one submission.
class Graph {
 public:
  explicit Graph(cudaGraphExec_t exec, size_t nodes) : exec_(exec), nodes_(nodes) {}
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  void launch(cudaStream_t stream);
  size_t nodes() const { return nodes_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
  size_t nodes_ = 0;
};

// Starts capturing `stream` (thread-local mode: other threads' CUDA calls are unaffected).
void begin_capture(cudaStream_t stream);
// Ends the capture begun on `stream` and instantiates it. When the capture failed (an operation
// that cannot be captured was queued), the error names it and the stream is usable again.
Graph* end_capture(cudaStream_t stream);
// Ends a capture without keeping it (after an error in the middle of one).
void abort_capture(cudaStream_t stream) noexcept;

}  // namespace phi::cuda
