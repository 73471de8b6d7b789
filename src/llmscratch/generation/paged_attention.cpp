// Decode attention that reads a paged KV cache in place, for the CPU.
//
// Why C++: at a decode step each of B sequences has one new query per head,
// and its keys and values lie scattered over the cache's blocks. PyTorch's
// CPU kernels want each sequence's keys as one dense matrix, so the engine's
// other path first copies them out through the block tables (paged_cache.py);
// that copy, and attention over the copy padded to the longest sequence, were
// most of a throughput run (docs/benchmarks.md). Here each (sequence, key/value
// head) pair walks its own blocks, reads every key and value once, where they
// are, and never touches padding. The work is memory-bound: the aim is to read
// the cache at the machine's copy bandwidth.
//
// Layout (paged_cache.py): keys (Hkv, N, Dh), values (Hkv, N, Dv), slot
// `block * block_size + offset`; so one head's positions of one block are
// block_size consecutive rows. Queries come as (B, H, Dh), H = G * Hkv: the G
// query heads of a group share their key/value head, and each key row read is
// used by all G of them (grouped-query attention without repeating keys).
//
// For one (sequence b, key/value head h), with n positions visible:
//   pass 1: score[g][p] = scale * q[g] . k[p]      (reads the n keys)
//   softmax over p, in float, for each g
//   pass 2: out[g] = sum_p weight[g][p] * v[p]      (reads the n values)
// The scores are kept (n floats per query head) so that each key and value is
// read only once. Every product and sum is in float; bf16 rows are widened as
// they are read.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Lanes of independent partial sums: the compiler turns these loops into SIMD
// instructions without reordering a single sum (no -ffast-math needed).
constexpr int64_t kLanes = 16;

// A cache element as a float: bf16 is the top half of an fp32's bits, so widening is a shift.
inline float widen(float x) { return x; }
inline float widen(c10::BFloat16 x) { return static_cast<float>(x); }

// How many positions ahead rows are fetched from memory. The hardware's own prefetcher
// stops at each 4 KB page, and a block of one head is a page of its own (block_size
// rows), so without this every block would begin with the wait for memory.
constexpr int64_t kAhead = 16;

template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t width) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < width * int64_t(sizeof(scalar_t)); offset += 64)
    __builtin_prefetch(bytes + offset);
}

// q . row, q already in float, the row widened as it is read.
template <typename scalar_t>
inline float dot(const float* q, const scalar_t* row, int64_t width) {
  float part[kLanes] = {0};
  int64_t d = 0;
  for (; d + kLanes <= width; d += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += q[d + l] * widen(row[d + l]);
  float sum = 0;
  for (; d < width; ++d) sum += q[d] * widen(row[d]);
  for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

// acc += weight * row, the row widened as it is read.
template <typename scalar_t>
inline void add_scaled(float* acc, const scalar_t* row, float weight, int64_t width) {
  for (int64_t d = 0; d < width; ++d) acc[d] += weight * widen(row[d]);
}

template <typename scalar_t>
void decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
            const at::Tensor& tables, const at::Tensor& totals, int64_t block_size,
            int64_t window, double scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Dh = q.size(2);
  const int64_t Hkv = keys.size(0), N = keys.size(1), Dv = values.size(2);
  const int64_t G = H / Hkv, width = tables.size(1);
  const scalar_t* q_data = q.data_ptr<scalar_t>();
  const scalar_t* k_data = keys.data_ptr<scalar_t>();
  const scalar_t* v_data = values.data_ptr<scalar_t>();
  const int64_t* table_data = tables.data_ptr<int64_t>();
  const int64_t* total_data = totals.data_ptr<int64_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();

  // One task per (sequence, key/value head); PyTorch's thread pool shares them out.
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(G * Dh), acc(G * Dv), score;
    std::vector<int64_t> slots;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, h = task % Hkv;
      const int64_t total = total_data[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, total - window) : 0;
      const int64_t n = total - first;  // positions this query sees
      const int64_t* table = table_data + b * width;
      for (int64_t g = 0; g < G; ++g) {  // the group's queries, scaled, in float
        const scalar_t* q_g = q_data + (b * H + h * G + g) * Dh;
        for (int64_t d = 0; d < Dh; ++d)
          query[g * Dh + d] = widen(q_g[d]) * static_cast<float>(scale);
      }
      // The slots of positions first .. total - 1, block by block: position p is
      // offset p % block_size of block table[p / block_size].
      slots.clear();
      for (int64_t p = first; p < total;) {
        const int64_t block = p / block_size, stop = std::min(total, (block + 1) * block_size);
        const int64_t base = table[block] * block_size - block * block_size;
        for (; p < stop; ++p) slots.push_back(base + p);
      }
      score.resize(G * n);  // score[g * n + i]: query g against position first + i
      for (int64_t i = 0; i < n; ++i) {  // pass 1: every key once
        if (i + kAhead < n) prefetch_row(k_data + (h * N + slots[i + kAhead]) * Dh, Dh);
        const scalar_t* k = k_data + (h * N + slots[i]) * Dh;
        for (int64_t g = 0; g < G; ++g) score[g * n + i] = dot(query.data() + g * Dh, k, Dh);
      }
      for (int64_t g = 0; g < G; ++g) {  // softmax, each query's row
        float* s = score.data() + g * n;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < n; ++i) top = std::max(top, s[i]);
        float sum = 0;
        for (int64_t i = 0; i < n; ++i) sum += (s[i] = std::exp(s[i] - top));
        for (int64_t i = 0; i < n; ++i) s[i] /= sum;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t i = 0; i < n; ++i) {  // pass 2: every value once
        if (i + kAhead < n) prefetch_row(v_data + (h * N + slots[i + kAhead]) * Dv, Dv);
        const scalar_t* v = v_data + (h * N + slots[i]) * Dv;
        for (int64_t g = 0; g < G; ++g)
          add_scaled(acc.data() + g * Dv, v, score[g * n + i], Dv);
      }
      for (int64_t g = 0; g < G; ++g) {
        scalar_t* o = out_data + (b * H + h * G + g) * Dv;
        for (int64_t d = 0; d < Dv; ++d) o[d] = static_cast<scalar_t>(acc[g * Dv + d]);
      }
    }
  });
}

// q (B, H, Dh), keys (Hkv, N, Dh), values (Hkv, N, Dv), tables (B, blocks) int64,
// totals (B,) int64: each sequence's length -> (B, H, Dv).
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                        const at::Tensor& tables, const at::Tensor& totals, int64_t block_size,
                        int64_t window, double scale) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.dim() == 3, "q, keys, values: 3-D");
  TORCH_CHECK(q.size(1) % keys.size(0) == 0, "query heads must be a multiple of key heads");
  TORCH_CHECK(q.is_contiguous() && keys.is_contiguous() && values.is_contiguous() &&
              tables.is_contiguous() && totals.is_contiguous(), "contiguous tensors only");
  TORCH_CHECK(q.scalar_type() == keys.scalar_type() && q.scalar_type() == values.scalar_type(),
              "q, keys and values of one dtype");
  TORCH_CHECK(tables.scalar_type() == at::kLong && totals.scalar_type() == at::kLong,
              "tables and totals: int64");
  at::Tensor out = at::empty({q.size(0), q.size(1), values.size(2)}, q.options());
  AT_DISPATCH_SWITCH(q.scalar_type(), "paged_decode",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        decode<float>(q, keys, values, tables, totals, block_size, window, scale, out);
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        decode<c10::BFloat16>(q, keys, values, tables, totals, block_size, window, scale, out);
      }));
  return out;
}

}  // namespace

TORCH_LIBRARY(llmscratch, m) {
  m.def("paged_decode(Tensor q, Tensor keys, Tensor values, Tensor tables, Tensor totals, "
        "int block_size, int window, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmscratch, CPU, m) { m.impl("paged_decode", paged_decode); }
