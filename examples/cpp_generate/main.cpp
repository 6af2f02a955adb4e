// svdzip_generate: greedy decoding of an AOTInductor package made by `svdzip export`, no Python.
//
//   svdzip_generate PACKAGE.pt2 N_NEW [IDS_FILE] [--threads K] [--eos ID]
//
// Reads the prompt's token ids (whitespace-separated integers) from IDS_FILE or stdin (the
// tokenizer stays in Python), runs the prompt in one call (prefill), then N_NEW greedy steps of
// one token each. Prints the new token ids on one line of stdout, and the timings on stderr as
// one line of key=value pairs. The package holds the KV cache between calls: input_ids (1, T)
// and cache_position (T) go in, logits (1, T, vocab) come out (python/svdzip/export.py).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string package;
  long n_new = 0;
  std::string ids_file;  // empty: stdin
  int threads = 0;       // 0: libtorch's default
  long eos = -1;
};

[[noreturn]] void fail(const std::string& what) {
  std::cerr << "svdzip_generate: " << what << "\n";
  std::exit(2);
}

long parse_long(const std::string& text, const std::string& what) {
  try {
    size_t used = 0;
    long v = std::stol(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  fail(what + " must be an integer, got '" + text + "'");
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if ((s == "--threads" || s == "--eos") && i + 1 < argc) {
      long v = parse_long(argv[++i], s);
      if (s == "--threads") a.threads = static_cast<int>(v); else a.eos = v;
    } else if (s == "-h" || s == "--help") {
      std::cout << "usage: svdzip_generate PACKAGE.pt2 N_NEW [IDS_FILE] [--threads K] [--eos ID]\n";
      std::exit(0);
    } else {
      pos.push_back(s);
    }
  }
  if (pos.size() < 2 || pos.size() > 3)
    fail("usage: svdzip_generate PACKAGE.pt2 N_NEW [IDS_FILE] [--threads K] [--eos ID]");
  a.package = pos[0];
  a.n_new = parse_long(pos[1], "N_NEW");
  if (a.n_new < 0) fail("N_NEW must be >= 0, got " + pos[1]);
  if (pos.size() == 3) a.ids_file = pos[2];
  return a;
}

std::vector<int64_t> read_ids(const std::string& file) {
  std::ifstream f;
  if (!file.empty()) {
    f.open(file);
    if (!f) fail("cannot read the prompt ids file " + file);
  }
  std::istream& in = file.empty() ? std::cin : f;
  std::vector<int64_t> ids;
  std::string word;
  while (in >> word) ids.push_back(parse_long(word, "a prompt token id"));
  if (ids.empty()) fail("the prompt has no token ids (" + (file.empty() ? "stdin" : file) + ")");
  return ids;
}

// A number the package's metadata holds (svdzip export writes them), or -1 when it is absent.
long meta_long(const std::unordered_map<std::string, std::string>& meta, const std::string& key) {
  auto it = meta.find(key);
  return it == meta.end() ? -1 : parse_long(it->second, key);
}

// Peak resident memory of this process (VmHWM), MiB; 0 where /proc is not there.
double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      double kib = 0;
      status >> kib;
      return kib / 1024.0;
    }
    status.ignore(1 << 20, '\n');
  }
  return 0.0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  if (a.threads > 0) at::set_num_threads(a.threads);
  if (!std::ifstream(a.package)) fail("cannot read the package " + a.package);
  std::vector<int64_t> prompt = read_ids(a.ids_file);
  try {
    torch::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(a.package);
    auto meta = loader.get_metadata();
    const long max_len = meta_long(meta, "svdzip.max_seq_len");
    const long vocab = meta_long(meta, "svdzip.vocab_size");
    const long total = static_cast<long>(prompt.size()) + a.n_new;
    if (max_len < 0 || vocab < 0)
      std::cerr << "svdzip_generate: warning: the package has no svdzip metadata (not made by svdzip "
                   "export?): the prompt's length and ids are not checked\n";
    if (max_len >= 0 && total > max_len)
      fail("prompt (" + std::to_string(prompt.size()) + ") + N_NEW (" + std::to_string(a.n_new) +
           ") = " + std::to_string(total) + " tokens is past the package's max_seq_len " +
           std::to_string(max_len) + " (svdzip export --max-seq-len)");
    for (int64_t id : prompt)
      if (id < 0 || (vocab >= 0 && id >= vocab))
        fail("prompt token id " + std::to_string(id) + " is outside the vocabulary [0, " +
             std::to_string(vocab) + ")");

    const auto T = static_cast<int64_t>(prompt.size());
    auto step = [&](torch::Tensor ids, int64_t start) {
      auto pos = torch::arange(start, start + ids.size(1), torch::kLong);
      auto out = loader.run({ids, pos});
      return out[0].select(0, 0).select(0, -1).argmax().item<int64_t>();
    };
    auto t0 = std::chrono::steady_clock::now();
    int64_t next = step(torch::tensor(prompt, torch::kLong).view({1, T}), 0);
    const double prefill_s = seconds_since(t0);

    std::vector<int64_t> out;
    std::vector<double> step_s;
    for (long i = 0; i < a.n_new; ++i) {
      out.push_back(next);
      if (next == a.eos || i + 1 == a.n_new) break;
      auto ts = std::chrono::steady_clock::now();
      next = step(torch::tensor({next}, torch::kLong).view({1, 1}), T + i);
      step_s.push_back(seconds_since(ts));
    }
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << "\n";

    double decode_s = 0;
    for (double s : step_s) decode_s += s;
    std::vector<double> sorted = step_s;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
    std::cerr << "prefill_tokens=" << T << " prefill_s=" << prefill_s
              << " decode_steps=" << step_s.size() << " decode_s=" << decode_s
              << " decode_median_s=" << median
              << " decode_tok_per_s=" << (median > 0 ? 1.0 / median : 0.0)
              << " threads=" << at::get_num_threads() << " peak_rss_mib=" << peak_rss_mib() << "\n";
  } catch (const c10::Error& e) {
    fail(std::string("libtorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}
