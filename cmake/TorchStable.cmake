# Locates the Python torch for a LibTorch stable-ABI build, without find_package(Torch).
#
# Defines:
#   torch_stable       INTERFACE target: headers, TORCH_TARGET_VERSION, libtorch_cpu
#   torch_stable_cuda  INTERFACE target: libtorch_cuda (only when torch is a CUDA build)
#   TORCH_VERSION      the version of the torch built against
#   TORCH_CUDA_VERSION torch.version.cuda, empty for a CPU-only torch

# The oldest torch this build must load under. The stable ABI is forward compatible, so
# building against a newer torch with this target yields a module that loads in 2.11 and later.
set(PYDCR_TORCH_TARGET_MAJOR 2)
set(PYDCR_TORCH_TARGET_MINOR 11)

execute_process(
  COMMAND ${Python_EXECUTABLE} -c
    "import os, torch; print(torch.__version__); print(torch.version.cuda or ''); print(os.path.dirname(torch.__file__))"
  OUTPUT_VARIABLE _torch_info
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "pydcr: could not import torch with ${Python_EXECUTABLE}; install torch first "
                      "(it is a build requirement)")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 TORCH_VERSION)
list(GET _torch_info 1 TORCH_CUDA_VERSION)
list(GET _torch_info 2 TORCH_ROOT)
message(STATUS "pydcr: building against torch ${TORCH_VERSION} (CUDA: '${TORCH_CUDA_VERSION}') at ${TORCH_ROOT}")

math(EXPR _target_hex "(${PYDCR_TORCH_TARGET_MAJOR} << 8) | ${PYDCR_TORCH_TARGET_MINOR}" OUTPUT_FORMAT HEXADECIMAL)
# TORCH_TARGET_VERSION packs major and minor into the top two bytes of a 64-bit value.
string(REPLACE "0x" "" _target_hex "${_target_hex}")
set(PYDCR_TORCH_TARGET_VERSION "0x0${_target_hex}000000000000")

find_library(TORCH_CPU_LIBRARY torch_cpu PATHS ${TORCH_ROOT}/lib NO_DEFAULT_PATH REQUIRED)
add_library(torch_stable INTERFACE)
target_include_directories(torch_stable SYSTEM INTERFACE ${TORCH_ROOT}/include)
target_compile_definitions(torch_stable INTERFACE TORCH_TARGET_VERSION=${PYDCR_TORCH_TARGET_VERSION})
target_link_libraries(torch_stable INTERFACE ${TORCH_CPU_LIBRARY})
# Installed next to torch in site-packages: find its libraries there when torch has not loaded them.
set(CMAKE_INSTALL_RPATH "$ORIGIN/../torch/lib")

if(TORCH_CUDA_VERSION)
  find_library(TORCH_CUDA_LIBRARY torch_cuda PATHS ${TORCH_ROOT}/lib NO_DEFAULT_PATH)
  add_library(torch_stable_cuda INTERFACE)
  target_link_libraries(torch_stable_cuda INTERFACE ${TORCH_CUDA_LIBRARY})
endif()
