"""The native ExecuTorch runner: a C++17 core (runner.h/.cpp) and its nanobind binding (`_runner`),
compiled by the package build (CMakeLists.txt) against the ExecuTorch wheel's runtime libraries, which
are installed beside it. l2mu.agent.runtime is the agent's Python face of it."""
