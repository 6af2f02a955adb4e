# SVDZIP_CUDA = OFF | ON | AUTO: the CUDA backend (csrc/cuda, csrc/torch/cuda_ops.cpp).
#   ON   builds it or fails saying what is missing (nvcc, cuBLAS/cuSOLVER, a CUDA torch).
#   AUTO builds it when all of those are found, else builds CPU only and says why.
# SVDZIP_CUDA_COMPILE_CHECK=ON (with SVDZIP_BUILD_TORCH=OFF) compiles every .cu file and the
# torch CUDA glue against the installed torch's headers without needing a GPU or a CUDA
# torch: what CI runs (scripts/check_cuda_build.sh) so the CUDA code cannot rot.
# cuBLAS/cuSOLVER are looked up in SVDZIP_CUDA_ROOTS, the toolkit, and the nvidia-* wheels
# (site-packages/nvidia/*), which ship only versioned sonames (libcublas.so.13).
string(TOUPPER "${SVDZIP_CUDA}" SVDZIP_CUDA)
if(NOT SVDZIP_CUDA MATCHES "^(OFF|ON|AUTO)$")
  message(FATAL_ERROR "SVDZIP_CUDA=${SVDZIP_CUDA}: expected OFF, ON or AUTO")
endif()
option(SVDZIP_CUDA_COMPILE_CHECK "Compile the CUDA sources and torch glue without a GPU" OFF)
set(SVDZIP_CUDA_ROOTS "" CACHE STRING "Extra prefixes holding include/ and lib/ of cuBLAS and cuSOLVER")
set(SVDZIP_WITH_CUDA 0)

macro(svdzip_cuda_unavailable reason)
  if(SVDZIP_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SVDZIP_CUDA=ON but ${reason}")
  endif()
  message(STATUS "svdzip: CUDA backend off (${reason}); building CPU only")
  return()
endmacro()

if(SVDZIP_CUDA STREQUAL "OFF")
  return()
endif()

find_package(Python COMPONENTS Interpreter)
set(_svdzip_torch_cuda "")
if(SVDZIP_BUILD_TORCH AND Python_EXECUTABLE)
  execute_process(COMMAND ${Python_EXECUTABLE} -c "import torch; print(torch.version.cuda or '')"
                  OUTPUT_VARIABLE _svdzip_torch_cuda OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _svdzip_torch_cuda)
    svdzip_cuda_unavailable("the installed torch has no CUDA")
  endif()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  svdzip_cuda_unavailable("no CUDA compiler (nvcc) found")
endif()
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # nvcc 13 knows sm_75 and newer only, and `native` needs a GPU: build A100 and H100 code.
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

set(_svdzip_cuda_hints ${SVDZIP_CUDA_ROOTS} ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR})
if(Python_EXECUTABLE)
  execute_process(COMMAND ${Python_EXECUTABLE} -c
    "import sysconfig, glob; print(';'.join(sorted(glob.glob(sysconfig.get_paths()['purelib'] + '/nvidia/*'))))"
    OUTPUT_VARIABLE _svdzip_wheel_dirs OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  list(APPEND _svdzip_cuda_hints ${_svdzip_wheel_dirs})
endif()
find_path(SVDZIP_CUSOLVER_INCLUDE_DIR cusolverDn.h HINTS ${_svdzip_cuda_hints} ${CUDAToolkit_INCLUDE_DIRS}
          PATH_SUFFIXES include)
find_path(SVDZIP_CUBLAS_INCLUDE_DIR cublas_v2.h HINTS ${_svdzip_cuda_hints} ${CUDAToolkit_INCLUDE_DIRS}
          PATH_SUFFIXES include)
find_library(SVDZIP_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 libcublas.so.12
             HINTS ${_svdzip_cuda_hints} PATH_SUFFIXES lib lib64)
find_library(SVDZIP_CUSOLVER_LIBRARY NAMES cusolver libcusolver.so.12 libcusolver.so.11
             HINTS ${_svdzip_cuda_hints} PATH_SUFFIXES lib lib64)
foreach(_v SVDZIP_CUSOLVER_INCLUDE_DIR SVDZIP_CUBLAS_INCLUDE_DIR SVDZIP_CUBLAS_LIBRARY SVDZIP_CUSOLVER_LIBRARY)
  if(NOT ${_v})
    svdzip_cuda_unavailable("${_v} not found (pip install nvidia-cublas nvidia-cusolver, or set SVDZIP_CUDA_ROOTS)")
  endif()
endforeach()

file(GLOB SVDZIP_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
add_library(svdzip_core_cuda STATIC ${SVDZIP_CUDA_SOURCES})
add_library(svdzip::core_cuda ALIAS svdzip_core_cuda)
set_target_properties(svdzip_core_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON EXPORT_NAME core_cuda)
target_include_directories(svdzip_core_cuda PUBLIC
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/include>
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/csrc/core/include>
  $<INSTALL_INTERFACE:include>)
target_include_directories(svdzip_core_cuda SYSTEM PUBLIC
  ${SVDZIP_CUBLAS_INCLUDE_DIR} ${SVDZIP_CUSOLVER_INCLUDE_DIR})
target_link_libraries(svdzip_core_cuda PUBLIC CUDA::cudart ${SVDZIP_CUBLAS_LIBRARY} ${SVDZIP_CUSOLVER_LIBRARY})
target_compile_options(svdzip_core_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
set(SVDZIP_WITH_CUDA 1)
message(STATUS "svdzip: CUDA backend on (archs ${CMAKE_CUDA_ARCHITECTURES}; ${SVDZIP_CUBLAS_LIBRARY}; ${SVDZIP_CUSOLVER_LIBRARY})")

if(SVDZIP_CUDA_COMPILE_CHECK AND Python_EXECUTABLE)
  # The torch glue compiled (not linked) against the installed torch's headers, CPU torch
  # included: its ATen/cuda headers are shipped either way.
  execute_process(COMMAND ${Python_EXECUTABLE} -c
    "from torch.utils.cpp_extension import include_paths; print(';'.join(include_paths()))"
    OUTPUT_VARIABLE _svdzip_torch_includes OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  if(_rc EQUAL 0)
    add_library(svdzip_torch_cuda_glue_check OBJECT ${CMAKE_CURRENT_SOURCE_DIR}/csrc/torch/cuda_ops.cpp)
    target_include_directories(svdzip_torch_cuda_glue_check SYSTEM PRIVATE ${_svdzip_torch_includes}
      ${CUDAToolkit_INCLUDE_DIRS} ${SVDZIP_CUBLAS_INCLUDE_DIR} ${SVDZIP_CUSOLVER_INCLUDE_DIR})
    target_include_directories(svdzip_torch_cuda_glue_check PRIVATE
      ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/include ${CMAKE_CURRENT_SOURCE_DIR}/csrc/core/include)
    target_compile_features(svdzip_torch_cuda_glue_check PRIVATE cxx_std_17)
    # A CPU torch lacks this one generated header (it only sets C10_CUDA_BUILD_SHARED_LIBS).
    target_compile_definitions(svdzip_torch_cuda_glue_check PRIVATE C10_CUDA_NO_CMAKE_CONFIGURE_FILE)
  else()
    message(WARNING "svdzip: torch not importable; the torch CUDA glue is not compile-checked")
  endif()
endif()
