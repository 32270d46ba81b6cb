// A main() for the fuzz targets without libFuzzer: runs LLVMFuzzerTestOneInput once on every
// file of the corpus directories (or files) given, in name order. ctest runs each target so over
// its seed corpus in the normal and sanitizer builds (fuzz_<name>), so every seed and every
// crasher ever found stays a regression test. An empty or missing corpus is an error, so a
// mistyped path cannot pass.

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/base/file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) {
    LLVMFuzzerInitialize(&argc, &argv);
  }
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    struct stat st;
    if (::stat(argv[i], &st) != 0) {
      std::fprintf(stderr, "%s: no such corpus\n", argv[i]);
      return 2;
    }
    if (!S_ISDIR(st.st_mode)) {
      files.push_back(argv[i]);
      continue;
    }
    DIR* dir = ::opendir(argv[i]);
    while (dirent* e = dir == nullptr ? nullptr : ::readdir(dir)) {
      if (e->d_name[0] != '.') {
        files.push_back(std::string(argv[i]) + "/" + e->d_name);
      }
    }
    if (dir != nullptr) {
      ::closedir(dir);
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "no corpus inputs given\n");
    return 2;
  }
  for (const std::string& f : files) {
    absl::StatusOr<std::string> data = meshtls::base::ReadFileToString(f, 16 << 20);
    if (!data.ok()) {
      std::fprintf(stderr, "%s\n", std::string(data.status().message()).c_str());
      return 2;
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data->data()), data->size());
  }
  std::printf("%zu corpus inputs ran\n", files.size());
  return 0;
}
