// A plain C++17 runner for an ExecuTorch program: no Python types, so a JNI layer (Android) or a
// command-line tool can link the same core against ExecuTorch's own libraries.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace l2mu::native {

// Every failure — a file that cannot be read, a program the runtime refuses, a method it cannot
// plan, inputs of the wrong shape — is one exception whose message is one line.
class RunnerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A float32 tensor the caller owns: `data` holds prod(sizes) values, C order.
struct TensorView {
  float* data = nullptr;
  std::vector<int64_t> sizes;
};

struct MethodInfo {
  std::string name;
  std::vector<std::vector<int64_t>> input_sizes;   // upper bounds for dynamic dimensions
  std::vector<std::vector<int64_t>> output_sizes;  // likewise
};

class Runner {
 public:
  // Loads and verifies the program, and loads (plans, initialises the delegates of) the methods named in
  // `preload` — every method when it is empty — so a program that cannot run them fails here rather than
  // on a first call. Any other method is loaded on its first `run`.
  explicit Runner(const std::string& path, const std::vector<std::string>& preload = {});
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  const std::vector<MethodInfo>& methods() const { return methods_; }
  const MethodInfo& method(const std::string& name) const;
  void load_method(const std::string& name);
  bool is_loaded(const std::string& name) const;

  // Runs `method` on float32 inputs and copies each output into `outputs[i]` (which must hold
  // room for it); returns the outputs' actual sizes. The inputs are read in place.
  std::vector<std::vector<int64_t>> run(const std::string& method, const std::vector<TensorView>& inputs,
                                        const std::vector<TensorView>& outputs);

  // Steps chains whose states are rows of caller-owned pools. `pools[p]` is a [rows, n_p] array holding state
  // part p of every chain; the method takes (samples [B, C], part_0 [B, n_0], …) and returns the new parts,
  // part 0 being the counts so far. Row rows[i] of every pool is gathered as chain i, and the new parts are
  // written back to the same rows; part 0 is also copied to `counts` ([B, n_0] or larger). Rows must be
  // distinct. This is the batched step of a pool of chains without a numpy gather and scatter per part.
  void run_rows(const std::string& method, const TensorView& samples, const std::vector<TensorView>& pools,
                const std::vector<int64_t>& rows, const TensorView& counts);

  // Like `run`, but returns each output's values in a new vector (for callers without buffers).
  std::vector<std::pair<std::vector<float>, std::vector<int64_t>>> run(const std::string& method,
                                                                       const std::vector<TensorView>& inputs);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<MethodInfo> methods_;
};

}  // namespace l2mu::native
