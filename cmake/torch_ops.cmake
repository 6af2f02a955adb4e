# svdzip._C: TORCH_LIBRARY schemas + CPU impls (+ CUDA when built) + a tiny pybind11 module.
find_package(Python REQUIRED COMPONENTS Interpreter Development.Module)
execute_process(COMMAND ${Python_EXECUTABLE} -c "import torch, sys; sys.stdout.write(torch.utils.cmake_prefix_path)"
                OUTPUT_VARIABLE _torch_prefix RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "svdzip: `import torch` failed in ${Python_EXECUTABLE}; install torch first "
                      "and build with --no-build-isolation (see README)")
endif()
execute_process(COMMAND ${Python_EXECUTABLE} -m pybind11 --cmakedir OUTPUT_VARIABLE _pybind_dir
                OUTPUT_STRIP_TRAILING_WHITESPACE)
list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}" "${_pybind_dir}")
if(SVDZIP_WITH_CUDA)
  # Torch's CMake looks for the toolkit itself: point it at nvcc's (a wrapper script may sit
  # on PATH), and keep it off architectures nvcc 13 no longer knows (sm_50 ... sm_70).
  if(NOT CUDA_TOOLKIT_ROOT_DIR)
    set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}")
  endif()
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0")
  endif()
endif()
find_package(Torch REQUIRED)
find_package(pybind11 CONFIG REQUIRED)

Python_add_library(_C MODULE WITH_SOABI
  csrc/torch/schemas.cpp csrc/torch/cpu_ops.cpp csrc/torch/cpu_gemm_ops.cpp csrc/torch/module.cpp)
target_link_libraries(_C PRIVATE svdzip_core torch pybind11::headers)
# at::parallel_for is a header template whose OpenMP path exists only in code compiled with
# OpenMP; without it the CPU Gram's slabs and a batch's SVDs run one after another. Torch's wheels bundle a
# libgomp.so.1, so at run time this library binds to the one torch has already loaded.
find_package(OpenMP COMPONENTS CXX)
if(OpenMP_CXX_FOUND)
  target_link_libraries(_C PRIVATE OpenMP::OpenMP_CXX)
  target_compile_definitions(_C PRIVATE SVDZIP_OPENMP=1)
else()
  message(WARNING "svdzip: no OpenMP for ${CMAKE_CXX_COMPILER_ID}: the CPU Gram slabs and SVD batches will run serially")
endif()
if(SVDZIP_WITH_CUDA)
  target_sources(_C PRIVATE csrc/torch/cuda_ops.cpp)
  target_link_libraries(_C PRIVATE svdzip_core_cuda)
endif()
if(Torch_VERSION VERSION_GREATER_EQUAL 2.14)
  target_compile_features(_C PRIVATE cxx_std_20)  # torch 2.14's headers require C++20
endif()
target_compile_definitions(_C PRIVATE
  SVDZIP_TORCH_VERSION="${Torch_VERSION}" SVDZIP_WITH_CUDA=${SVDZIP_WITH_CUDA})
install(TARGETS _C LIBRARY DESTINATION svdzip)
