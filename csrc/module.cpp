// The Python module pydcr._C: loading it registers the op schemas and CPU kernels; it also
// reports how it was built and sets the floating-point mode of torch's CPU threads.
#include <pybind11/pybind11.h>
#include <torch/csrc/stable/ops.h>

#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace py = pybind11;

namespace {

py::list split_archs(const std::string& csv) {
  py::list out;
  std::string cur;
  for (char ch : csv + ",") {
    if (ch == ',') {
      if (!cur.empty()) out.append(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  return out;
}

// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags, which
// torch.set_flush_denormal sets on the calling thread only.
constexpr unsigned kFlushDenormal = 0x8040;

void set_flush_denormal_here(bool on) {
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(on ? csr | kFlushDenormal : csr & ~kFlushDenormal);
#endif
}

// Sets the flags on every thread of torch's intra-op pool, which runs the convolutions and the
// fused kernels: a parallel_for of one item per thread gives each thread exactly one item (torch's
// OpenMP backend splits the range evenly over its threads).
bool set_flush_denormal_pool(bool on) {
#if defined(__x86_64__) || defined(_M_X64)
  const int64_t threads = torch::stable::get_num_threads();
  torch::stable::parallel_for(0, threads, 1, [on](int64_t, int64_t) { set_flush_denormal_here(on); });
  set_flush_denormal_here(on);
  return true;
#else
  return false;
#endif
}

// Whether the calling thread flushes denormals; None where this build cannot read it (not x86).
py::object flush_denormal_here() {
#if defined(__x86_64__) || defined(_M_X64)
  return py::bool_((_mm_getcsr() & kFlushDenormal) == kFlushDenormal);
#else
  return py::none();
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pydcr compiled extension: op schemas, CPU kernels and build information";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = PYDCR_VERSION;
    info["torch_built"] = PYDCR_TORCH_VERSION;
    info["torch_abi_target"] = PYDCR_TORCH_TARGET;
    info["cuda"] = static_cast<bool>(PYDCR_WITH_CUDA);
    info["cuda_version"] = PYDCR_CUDA_VERSION;
    info["cuda_archs"] = split_archs(PYDCR_CUDA_ARCHS);
    info["compiler"] = __VERSION__;
    return info;
  }, "How this extension was compiled.");
  m.def("set_flush_denormal_pool", &set_flush_denormal_pool, py::arg("on"),
        "Flush denormals to zero (or stop) on the calling thread and every thread of torch's CPU pool "
        "(x86; returns False, changing nothing, elsewhere). Call torch.set_flush_denormal first: it "
        "tells whether the CPU supports it.");
  m.def("flush_denormal_here", &flush_denormal_here,
        "Whether the calling thread flushes denormals to zero (None where it cannot tell: not x86).");
}
