# SVDZIP_CUDA = OFF | ON | AUTO. The CUDA kernels (csrc/cuda) are not written yet (issue 7):
# ON fails loudly rather than pretending, AUTO builds the CPU backend and says so.
string(TOUPPER "${SVDZIP_CUDA}" SVDZIP_CUDA)
if(NOT SVDZIP_CUDA MATCHES "^(OFF|ON|AUTO)$")
  message(FATAL_ERROR "SVDZIP_CUDA=${SVDZIP_CUDA}: expected OFF, ON or AUTO")
endif()
file(GLOB SVDZIP_CUDA_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
set(SVDZIP_WITH_CUDA 0)
if(SVDZIP_CUDA STREQUAL "ON" AND NOT SVDZIP_CUDA_SOURCES)
  message(FATAL_ERROR "SVDZIP_CUDA=ON, but csrc/cuda has no kernels yet; build with SVDZIP_CUDA=OFF")
elseif(SVDZIP_CUDA STREQUAL "AUTO" AND NOT SVDZIP_CUDA_SOURCES)
  message(STATUS "svdzip: CUDA backend not available in this tree; building CPU only")
endif()
