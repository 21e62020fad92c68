# Builds phi_engine._core_cuda when a CUDA compiler is found (PHI_ENGINE_CUDA=AUTO|ON|OFF).
# Where nvcc exists but no GPU does, the sources are still compiled for sm_80 and sm_90 so they
# cannot rot; tests that need a device are marked `gpu` and skipped.
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
message(STATUS "phi_engine: CUDA compiler ${CMAKE_CUDA_COMPILER}; the CUDA module is filled in by csrc/cuda")
