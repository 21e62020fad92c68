# Builds phi_engine._core_cuda when a CUDA compiler is found (PHI_ENGINE_CUDA=AUTO|ON|OFF).
# Where nvcc exists but no GPU does, the sources are still compiled for sm_80 and sm_90 so they
# cannot rot; tests that need a device are marked `gpu` and skipped.
#
# cuBLAS (for the GEMM) comes from the CUDA toolkit when it has it, else from the nvidia-cublas
# wheel installed in the Python that runs the build (nvidia/cu13 or nvidia/cublas). With neither,
# AUTO builds the module without GEMM (gemm raises UnsupportedError) and ON fails.
if(PHI_ENGINE_CUDA STREQUAL "OFF")
  message(STATUS "phi_engine: CUDA module disabled (PHI_ENGINE_CUDA=OFF)")
  return()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(PHI_ENGINE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PHI_ENGINE_CUDA=ON but no CUDA compiler was found")
  endif()
  message(STATUS "phi_engine: no CUDA compiler found; building without the CUDA module")
  return()
endif()

# In AUTO mode a CUDA setup the module cannot use skips the module instead of failing the build.
macro(phi_cuda_unusable reason)
  if(PHI_ENGINE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PHI_ENGINE_CUDA=ON but ${reason}")
  endif()
  message(WARNING "phi_engine: ${reason}; building without the CUDA module")
  return()
endmacro()

# sm_90 needs CUDA 11.8. Read the version before enable_language, whose compiler check would
# already fail on an architecture the compiler does not know.
execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --version OUTPUT_VARIABLE _phi_nvcc_version_text
                ERROR_QUIET)
string(REGEX MATCH "release ([0-9]+\\.[0-9]+)" _phi_nvcc_release "${_phi_nvcc_version_text}")
if(CMAKE_MATCH_1 AND CMAKE_MATCH_1 VERSION_LESS 11.8)
  phi_cuda_unusable("the CUDA compiler is ${CMAKE_MATCH_1}, older than the 11.8 that sm_90 needs")
endif()

# Explicit architectures: "native" fails on a machine without a GPU. CUDAARCHS or
# -DCMAKE_CUDA_ARCHITECTURES override (benchmarks/gpu/check.sh builds for the GPU it runs on).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "80;90")
endif()
enable_language(CUDA)
find_package(CUDAToolkit)
if(NOT CUDAToolkit_FOUND)
  phi_cuda_unusable("the CUDA toolkit (runtime headers and libraries) was not found")
endif()

# ---- cuBLAS ----------------------------------------------------------------------------------
set(PHI_CUBLAS_TARGET "")
set(PHI_CUBLAS_RPATH "")
if(TARGET CUDA::cublas)
  set(PHI_CUBLAS_TARGET CUDA::cublas)
  set(PHI_CUBLAS_RPATH "${CUDAToolkit_LIBRARY_DIR}")
  message(STATUS "phi_engine: cuBLAS from the CUDA toolkit (${CUDAToolkit_LIBRARY_DIR})")
else()
  # The wheel ships only the versioned library (libcublas.so.<major>), so it is linked by path.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c [=[
import os, sys
major = sys.argv[1]
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
for root in roots:
    for sub in ("cu" + major, "cublas"):
        inc = os.path.join(root, sub, "include")
        lib = os.path.join(root, sub, "lib", "libcublas.so." + major)
        if os.path.isfile(os.path.join(inc, "cublas_v2.h")) and os.path.isfile(lib):
            print(inc + ";" + lib)
            sys.exit(0)
]=] "${CUDAToolkit_VERSION_MAJOR}"
    OUTPUT_VARIABLE _phi_cublas_wheel OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _phi_cublas_rc)
  if(_phi_cublas_rc EQUAL 0 AND _phi_cublas_wheel)
    list(GET _phi_cublas_wheel 0 _phi_cublas_include)
    list(GET _phi_cublas_wheel 1 _phi_cublas_library)
    get_filename_component(_phi_cublas_libdir "${_phi_cublas_library}" DIRECTORY)
    add_library(phi_cublas SHARED IMPORTED)
    set_target_properties(phi_cublas PROPERTIES
      IMPORTED_LOCATION "${_phi_cublas_library}"
      INTERFACE_INCLUDE_DIRECTORIES "${_phi_cublas_include}")
    set(PHI_CUBLAS_TARGET phi_cublas)
    set(PHI_CUBLAS_RPATH "${_phi_cublas_libdir}")
    message(STATUS "phi_engine: cuBLAS from the nvidia-cublas wheel (${_phi_cublas_library})")
  elseif(PHI_ENGINE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PHI_ENGINE_CUDA=ON but no cuBLAS was found: the CUDA toolkit has none and the "
                        "build's Python has no nvidia-cublas wheel (pip install nvidia-cublas)")
  else()
    message(WARNING "phi_engine: no cuBLAS found; building the CUDA module without GEMM "
                    "(pip install nvidia-cublas into the build's Python to get it)")
  endif()
endif()

# ---- kernels: plain CUDA, no Python headers --------------------------------------------------
file(GLOB PHI_CUDA_KERNEL_SOURCES CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu")
add_library(phi_cuda_kernels OBJECT ${PHI_CUDA_KERNEL_SOURCES})
target_include_directories(phi_cuda_kernels PUBLIC "${CMAKE_CURRENT_SOURCE_DIR}/csrc")
set_target_properties(phi_cuda_kernels PROPERTIES
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_VISIBILITY_PRESET hidden
  POSITION_INDEPENDENT_CODE ON)

# ---- the module --------------------------------------------------------------------------------
set(PHI_CUDA_HOST_SOURCES
  "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/runtime.cpp"
  "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/bind_cuda.cpp")
if(PHI_CUBLAS_TARGET)
  list(APPEND PHI_CUDA_HOST_SOURCES "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/gemm_cublas.cpp")
else()
  list(APPEND PHI_CUDA_HOST_SOURCES "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/gemm_no_cublas.cpp")
endif()
pybind11_add_module(_core_cuda MODULE ${PHI_CUDA_HOST_SOURCES})
# The static CUDA runtime loads the driver on first use, so the module imports on machines
# without a GPU or driver and reports no devices there.
target_link_libraries(_core_cuda PRIVATE phi_cuda_kernels CUDA::cudart_static ${PHI_CUBLAS_TARGET})
# A list is "80;90" in CMake; the module reports it as "80,90".
string(REPLACE ";" "," PHI_CUDA_ARCH_LIST "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_definitions(_core_cuda PRIVATE PHI_CUDA_ARCHITECTURES="${PHI_CUDA_ARCH_LIST}")
target_compile_options(_core_cuda PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra -Wno-unused-parameter>)
# cuBLAS is found at run time next to an installed nvidia-cublas wheel (site-packages/nvidia/...),
# else where the build found it.
set_target_properties(_core_cuda PROPERTIES
  CUDA_STANDARD 17
  INSTALL_RPATH "$ORIGIN/../nvidia/cu${CUDAToolkit_VERSION_MAJOR}/lib;$ORIGIN/../nvidia/cublas/lib;${PHI_CUBLAS_RPATH}"
  BUILD_WITH_INSTALL_RPATH ON)
install(TARGETS _core_cuda LIBRARY DESTINATION phi_engine)
message(STATUS "phi_engine: building phi_engine._core_cuda for CUDA architectures ${CMAKE_CUDA_ARCHITECTURES}")
