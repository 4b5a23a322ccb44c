#include "runner.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

#include <executorch/extension/module/module.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/core/portable_type/tensor_impl.h>
#include <executorch/runtime/platform/runtime.h>

namespace l2mu::native {

namespace et = ::executorch::runtime;
using ::executorch::aten::ScalarType;
using ::executorch::extension::module::Module;

namespace {

constexpr size_t kMaxRank = 8;

std::string describe(et::Error error) {
  std::string name = et::to_string(error);
  const std::string prefix = "Error::";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

std::string shape_text(const std::vector<int64_t>& sizes) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << "]";
  return out.str();
}

int64_t numel(const std::vector<int64_t>& sizes) {
  return std::accumulate(sizes.begin(), sizes.end(), int64_t{1}, std::multiplies<int64_t>());
}

std::vector<int64_t> tensor_sizes(const et::Result<et::TensorInfo>& info) {
  std::vector<int64_t> sizes;
  if (info.ok()) {
    for (int32_t s : info->sizes()) sizes.push_back(s);
  }
  return sizes;
}

// A TensorImpl over caller memory, alive for one call: ExecuTorch copies a planned input into its
// own arena at set_input, so nothing here outlives `run`.
struct BorrowedTensor {
  std::array<::executorch::aten::SizesType, kMaxRank> sizes{};
  std::array<::executorch::aten::DimOrderType, kMaxRank> dim_order{};
  std::array<::executorch::aten::StridesType, kMaxRank> strides{};
  std::unique_ptr<::executorch::runtime::etensor::TensorImpl> impl;

  explicit BorrowedTensor(const TensorView& view) {
    const size_t rank = view.sizes.size();
    if (rank > kMaxRank) throw RunnerError("an input has more than 8 dimensions");
    ::executorch::aten::StridesType stride = 1;
    for (size_t i = rank; i-- > 0;) {
      sizes[i] = static_cast<::executorch::aten::SizesType>(view.sizes[i]);
      dim_order[i] = static_cast<::executorch::aten::DimOrderType>(i);
      strides[i] = stride;
      stride *= sizes[i];
    }
    impl = std::make_unique<::executorch::runtime::etensor::TensorImpl>(
        ScalarType::Float, static_cast<ssize_t>(rank), sizes.data(), view.data, dim_order.data(), strides.data(),
        ::executorch::aten::TensorShapeDynamism::STATIC);
  }
};

}  // namespace

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

// A method's memory-planned buffers. Module would hold them in zero-filled vectors, every page written and so
// resident; `step` is planned for its largest batch of chains, and an agent with one watch runs one. Memory
// from calloc is the kernel's untouched zero pages (for buffers above malloc's mmap threshold): only the rows
// a call actually uses become resident.
struct PlannedBuffers {
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> storage;
  std::vector<et::Span<uint8_t>> spans;
  std::unique_ptr<et::HierarchicalAllocator> allocator;
};

struct Runner::Impl {
  std::map<std::string, PlannedBuffers> planned;  // before `module`, whose methods use them: destroyed after it
  std::unique_ptr<Module> module;
  std::vector<std::vector<float>> scratch;  // run_rows' gathered states, kept so they are not reallocated each step
};

Runner::Runner(const std::string& path, const std::vector<std::string>& preload) : impl_(std::make_unique<Impl>()) {
  et::runtime_init();
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw RunnerError("cannot open the program file");
  }
  // The whole file in memory: a program is a few hundred KB, and a replaced or truncated file on disk
  // can then no longer change a program already loaded.
  impl_->module = std::make_unique<Module>(path, Module::LoadMode::File);
  et::Error err = impl_->module->load(et::Program::Verification::InternalConsistency);
  if (err != et::Error::Ok) {
    throw RunnerError("not an ExecuTorch program, or a damaged one (" + describe(err) + ")");
  }
  auto names = impl_->module->method_names();
  if (!names.ok()) throw RunnerError("cannot list its methods (" + describe(names.error()) + ")");
  std::vector<std::string> sorted(names->begin(), names->end());
  std::sort(sorted.begin(), sorted.end());
  for (const auto& name : sorted) {
    auto meta = impl_->module->method_meta(name);
    if (!meta.ok()) throw RunnerError("method '" + name + "' has no metadata (" + describe(meta.error()) + ")");
    MethodInfo info{name, {}, {}};
    for (size_t i = 0; i < meta->num_inputs(); ++i) {
      auto t = meta->input_tensor_meta(i);
      if (!t.ok() || t->scalar_type() != ScalarType::Float) {
        throw RunnerError("method '" + name + "' takes an input that is not a float32 tensor");
      }
      info.input_sizes.push_back(tensor_sizes(t));
    }
    for (size_t i = 0; i < meta->num_outputs(); ++i) {
      auto t = meta->output_tensor_meta(i);
      if (!t.ok() || t->scalar_type() != ScalarType::Float) {
        throw RunnerError("method '" + name + "' returns an output that is not a float32 tensor");
      }
      info.output_sizes.push_back(tensor_sizes(t));
    }
    methods_.push_back(std::move(info));
  }
  for (const auto& name : preload.empty() ? sorted : preload) load_method(name);
}

void Runner::load_method(const std::string& name) {
  method(name);  // a one-line error for a method the program lacks
  if (impl_->module->is_method_loaded(name)) return;
  auto meta = impl_->module->method_meta(name);
  if (!meta.ok()) throw RunnerError("method '" + name + "' has no metadata (" + describe(meta.error()) + ")");
  PlannedBuffers planned;
  for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    auto size = meta->memory_planned_buffer_size(i);
    if (!size.ok()) throw RunnerError("method '" + name + "' has no size for its planned buffer " + std::to_string(i));
    auto* bytes = static_cast<uint8_t*>(std::calloc(std::max<int64_t>(*size, 1), 1));
    if (bytes == nullptr) throw RunnerError("method '" + name + "': no memory for its planned buffers");
    planned.storage.emplace_back(bytes);
    planned.spans.emplace_back(bytes, static_cast<size_t>(*size));
  }
  planned.allocator = std::make_unique<et::HierarchicalAllocator>(
      et::Span<et::Span<uint8_t>>(planned.spans.data(), planned.spans.size()));
  auto& kept = impl_->planned[name] = std::move(planned);
  et::Error err;
  {
    // XNNPACK takes its thread pool when a delegate is initialised; with this guard it gets none and
    // runs every operator on the calling thread. A step is microseconds of arithmetic: handing it to
    // pool threads costs more than it saves, and on a busy machine each hand-over waits for a core.
    ::executorch::extension::threadpool::NoThreadPoolGuard single_threaded;
    err = impl_->module->load_method(name, kept.allocator.get());
  }
  if (err != et::Error::Ok) {
    impl_->planned.erase(name);
    throw RunnerError("method '" + name + "' cannot be loaded (" + describe(err) + ")");
  }
}

bool Runner::is_loaded(const std::string& name) const { return impl_->module->is_method_loaded(name); }

Runner::~Runner() = default;

const MethodInfo& Runner::method(const std::string& name) const {
  for (const auto& m : methods_) {
    if (m.name == name) return m;
  }
  std::string known;
  for (const auto& m : methods_) known += (known.empty() ? "" : ", ") + m.name;
  throw RunnerError("the program has no method '" + name + "' (it has: " + (known.empty() ? "none" : known) + ")");
}

namespace {

std::vector<et::EValue> execute(Module& module, const MethodInfo& info, const std::vector<TensorView>& inputs) {
  // Loaded by the caller (Runner::run), so this only checks shapes and runs.
  if (inputs.size() != info.input_sizes.size()) {
    throw RunnerError("method '" + info.name + "' takes " + std::to_string(info.input_sizes.size()) +
                      " inputs, got " + std::to_string(inputs.size()));
  }
  std::vector<BorrowedTensor> borrowed;
  borrowed.reserve(inputs.size());
  std::vector<et::EValue> values;
  values.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& bound = info.input_sizes[i];
    const auto& sizes = inputs[i].sizes;
    bool fits = sizes.size() == bound.size();
    for (size_t d = 0; fits && d < sizes.size(); ++d) fits = sizes[d] >= 1 && sizes[d] <= bound[d];
    if (!fits) {
      throw RunnerError("method '" + info.name + "' input " + std::to_string(i) + ": shape " + shape_text(sizes) +
                        " does not fit " + shape_text(bound));
    }
    borrowed.emplace_back(inputs[i]);
    values.emplace_back(::executorch::aten::Tensor(borrowed.back().impl.get()));
  }
  auto result = module.execute(info.name, values);
  if (!result.ok()) {
    throw RunnerError("method '" + info.name + "' failed (" + describe(result.error()) + ")");
  }
  for (const auto& v : *result) {
    if (!v.isTensor() || v.toTensor().scalar_type() != ScalarType::Float) {
      throw RunnerError("method '" + info.name + "' returned something other than float32 tensors");
    }
  }
  return std::move(*result);
}

std::vector<int64_t> sizes_of(const ::executorch::aten::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
}

}  // namespace

std::vector<std::vector<int64_t>> Runner::run(const std::string& method_name, const std::vector<TensorView>& inputs,
                                              const std::vector<TensorView>& outputs) {
  const MethodInfo& info = method(method_name);
  load_method(method_name);
  auto values = execute(*impl_->module, info, inputs);
  if (outputs.size() != values.size()) {
    throw RunnerError("method '" + info.name + "' returns " + std::to_string(values.size()) + " outputs, " +
                      std::to_string(outputs.size()) + " buffers given");
  }
  std::vector<std::vector<int64_t>> shapes;
  for (size_t i = 0; i < values.size(); ++i) {
    const auto& t = values[i].toTensor();
    auto sizes = sizes_of(t);
    if (numel(outputs[i].sizes) < static_cast<int64_t>(t.numel())) {
      throw RunnerError("method '" + info.name + "' output " + std::to_string(i) + ": buffer " +
                        shape_text(outputs[i].sizes) + " is smaller than " + shape_text(sizes));
    }
    std::copy_n(t.const_data_ptr<float>(), t.numel(), outputs[i].data);
    shapes.push_back(std::move(sizes));
  }
  return shapes;
}

void Runner::run_rows(const std::string& method_name, const TensorView& samples, const std::vector<TensorView>& pools,
                      const std::vector<int64_t>& rows, const TensorView& counts) {
  const MethodInfo& info = method(method_name);
  const auto batch = static_cast<int64_t>(rows.size());
  if (samples.sizes.size() != 2 || samples.sizes[0] != batch) {
    throw RunnerError("method '" + info.name + "': samples " + shape_text(samples.sizes) + " for " +
                      std::to_string(batch) + " rows");
  }
  std::vector<TensorView> inputs{samples};
  inputs.reserve(pools.size() + 1);
  auto& scratch = impl_->scratch;
  scratch.resize(pools.size());
  for (size_t p = 0; p < pools.size(); ++p) {
    const auto& pool = pools[p];
    if (pool.sizes.size() != 2) throw RunnerError("state pool " + std::to_string(p) + " is not [rows, n]");
    const int64_t n = pool.sizes[1];
    scratch[p].resize(static_cast<size_t>(batch * n));
    for (int64_t i = 0; i < batch; ++i) {
      if (rows[i] < 0 || rows[i] >= pool.sizes[0]) {
        throw RunnerError("row " + std::to_string(rows[i]) + " is outside the state pool of " +
                          std::to_string(pool.sizes[0]) + " rows");
      }
      std::copy_n(pool.data + rows[i] * n, n, scratch[p].data() + i * n);
    }
    inputs.push_back(TensorView{scratch[p].data(), {batch, n}});
  }
  load_method(method_name);
  auto values = execute(*impl_->module, info, inputs);
  if (values.size() != pools.size()) {
    throw RunnerError("method '" + info.name + "' returns " + std::to_string(values.size()) + " outputs for " +
                      std::to_string(pools.size()) + " state parts");
  }
  const auto& k = values[0].toTensor();
  if (numel(counts.sizes) < static_cast<int64_t>(k.numel())) {
    throw RunnerError("method '" + info.name + "': counts buffer " + shape_text(counts.sizes) + " is smaller than " +
                      shape_text(sizes_of(k)));
  }
  std::copy_n(k.const_data_ptr<float>(), k.numel(), counts.data);
  for (size_t p = 0; p < pools.size(); ++p) {
    const auto& t = values[p].toTensor();
    const int64_t n = pools[p].sizes[1];
    if (static_cast<int64_t>(t.numel()) != batch * n) {
      throw RunnerError("method '" + info.name + "' output " + std::to_string(p) + ": " + shape_text(sizes_of(t)) +
                        " does not fit state pool " + shape_text(pools[p].sizes));
    }
    const float* src = t.const_data_ptr<float>();
    for (int64_t i = 0; i < batch; ++i) std::copy_n(src + i * n, n, pools[p].data + rows[i] * n);
  }
}

std::vector<std::pair<std::vector<float>, std::vector<int64_t>>> Runner::run(const std::string& method_name,
                                                                            const std::vector<TensorView>& inputs) {
  const MethodInfo& info = method(method_name);
  load_method(method_name);
  auto values = execute(*impl_->module, info, inputs);
  std::vector<std::pair<std::vector<float>, std::vector<int64_t>>> out;
  for (const auto& v : values) {
    const auto& t = v.toTensor();
    const float* p = t.const_data_ptr<float>();
    out.emplace_back(std::vector<float>(p, p + t.numel()), sizes_of(t));
  }
  return out;
}

}  // namespace l2mu::native
