// The Python module pydcr._C: loading it registers the op schemas and CPU kernels; it also
// reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

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
}
