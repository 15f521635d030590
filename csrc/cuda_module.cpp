// The Python module pydcr._C_cuda: loading it registers the CUDA kernels. Kept apart from
// pydcr._C so that a CPU-only torch never has to resolve a CUDA symbol.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C_cuda, m) { m.doc() = "pydcr CUDA kernels"; }
