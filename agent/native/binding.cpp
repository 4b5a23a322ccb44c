// The Python face of runner.h: numpy float32 arrays in and out, nothing else. Inputs are read where
// they lie (C-contiguous float32, or a TypeError); outputs go into arrays the caller passes, or new ones.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "runner.h"

namespace nb = nanobind;
using l2mu::native::Runner;
using l2mu::native::RunnerError;
using l2mu::native::TensorView;

namespace {

using InArray = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using OutArray = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

template <typename Array>
TensorView view_of(const Array& a) {
  TensorView v;
  v.data = const_cast<float*>(a.data());  // the runtime copies inputs; it never writes through this
  for (size_t d = 0; d < a.ndim(); ++d) v.sizes.push_back(static_cast<int64_t>(a.shape(d)));
  return v;
}

std::vector<TensorView> views(const std::vector<InArray>& arrays) {
  std::vector<TensorView> out;
  out.reserve(arrays.size());
  for (const auto& a : arrays) out.push_back(view_of(a));
  return out;
}

nb::ndarray<nb::numpy, float> to_numpy(std::vector<float>&& values, const std::vector<int64_t>& sizes) {
  auto* owned = new std::vector<float>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  std::vector<size_t> shape(sizes.begin(), sizes.end());
  return nb::ndarray<nb::numpy, float>(owned->data(), shape.size(), shape.data(), owner);
}

}  // namespace

NB_MODULE(_runner, m) {
  m.doc() = "l2mu's native ExecuTorch runner (XNNPACK on the calling thread)";
  nb::exception<RunnerError>(m, "RunnerError", PyExc_RuntimeError);

  nb::class_<Runner>(m, "Runner")
      .def(nb::init<const std::string&, const std::vector<std::string>&>(), nb::arg("path"),
           nb::arg("preload") = std::vector<std::string>{},
           "Load and verify the program at `path` and plan the methods in `preload` (all when empty); RunnerError "
           "if it cannot. Other methods are planned on first use.")
      .def("load_method", &Runner::load_method, nb::arg("method"))
      .def("is_loaded", &Runner::is_loaded, nb::arg("method"))
      .def_prop_ro("method_names",
                   [](const Runner& r) {
                     std::vector<std::string> names;
                     for (const auto& m : r.methods()) names.push_back(m.name);
                     return names;
                   })
      .def("input_sizes", [](const Runner& r, const std::string& method) { return r.method(method).input_sizes; },
           nb::arg("method"), "Each input's sizes (upper bounds where a dimension is dynamic).")
      .def("output_sizes", [](const Runner& r, const std::string& method) { return r.method(method).output_sizes; },
           nb::arg("method"))
      .def(
          "run",
          [](Runner& r, const std::string& method, const std::vector<InArray>& inputs) {
            auto values = r.run(method, views(inputs));
            nb::list out;
            for (auto& [data, sizes] : values) out.append(to_numpy(std::move(data), sizes));
            return out;
          },
          nb::arg("method"), nb::arg("inputs").noconvert(), "Run `method`; returns its outputs as new float32 arrays.")
      .def(
          "run_into",
          [](Runner& r, const std::string& method, const std::vector<InArray>& inputs,
             const std::vector<OutArray>& outputs) {
            std::vector<TensorView> outs;
            for (const auto& a : outputs) outs.push_back(view_of(a));
            return r.run(method, views(inputs), outs);
          },
          nb::arg("method"), nb::arg("inputs").noconvert(), nb::arg("outputs").noconvert(),
          "Run `method`, writing output i into outputs[i] (C-contiguous float32, large enough); returns the "
          "outputs' sizes. An output buffer may be an input of the same call: inputs are read first.")
      .def(
          "run_rows",
          [](Runner& r, const std::string& method, const InArray& samples, const std::vector<OutArray>& pools,
             const std::vector<int64_t>& rows, const OutArray& counts) {
            std::vector<TensorView> parts;
            parts.reserve(pools.size());
            for (const auto& a : pools) parts.push_back(view_of(a));
            r.run_rows(method, view_of(samples), parts, rows, view_of(counts));
          },
          nb::arg("method"), nb::arg("samples").noconvert(), nb::arg("pools").noconvert(), nb::arg("rows"),
          nb::arg("counts").noconvert(),
          "Step the chains at `rows` of the state pools ([rows, n] float32 each) by `samples` [B, C], in place; "
          "counts [B, K] go into `counts`.");
}
