// The cpu backend's bfloat16 attention tiles on the CPU's matrix units (bf16_matrix_tiles.h), for
// the block loops of tda_attention_cpu.cpp. Keys and values are sampled in float32 as on every
// path, then rounded to bfloat16 and packed once per call; probabilities and their gradients are
// written in bfloat16 by the softmax itself, for the products that take them, as FlashAttention
// does in half precision. Every product accumulates in float32. Operands whose reduction dimension is odd get
// a zero row or column (the packing pairs rows).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "common/params.h"
#include "cpu/bf16_matrix_tiles.h"
#include "cpu/vec_math.h"

namespace lc4::cpu {

// The matrices made of a block of sampled keys or values: transposed (d x nk) or as they are
// (nk x d).
enum class KeyMatrix { keys_transposed, values_transposed, keys, values };

// Chosen key matrices of every (batch x head, block of keys), rounded to bfloat16 and packed.
class PackedKeyBlocks {
 public:
  using BF16 = c10::BFloat16;

  PackedKeyBlocks(const AttentionParams& p, const float* k_sampled, const float* v_sampled, int64_t block,
                  std::initializer_list<KeyMatrix> matrices)
      : Nk_(p.Nk), d_(p.d), block_(block), blocks_((p.Nk + block - 1) / block) {
    for (KeyMatrix m : matrices) {
      offset_[static_cast<int>(m)] = slot_;
      slot_ += transposed(m) ? packed_size(even(d_), block_) : packed_size(even(block_), d_);
    }
    const int64_t BH = p.B * p.heads;
    storage_ = at::empty({BH * blocks_ * slot_}, at::TensorOptions().dtype(at::kBFloat16));
    at::parallel_for(0, BH * blocks_, 1, [&](int64_t begin, int64_t end) {
      std::vector<BF16> rounded(even(block_) * d_), rows(even(d_) * block_);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / blocks_, j0 = (task % blocks_) * block_, nk = std::min(block_, Nk_ - j0);
        for (KeyMatrix m : matrices) {
          const bool from_keys = m == KeyMatrix::keys_transposed || m == KeyMatrix::keys;
          // (nk x d), rounded in one vectorised pass; a zero row where nk is odd.
          round_to_bf16((from_keys ? k_sampled : v_sampled) + (bh * Nk_ + j0) * d_, nk * d_, rounded.data());
          std::fill_n(rounded.data() + nk * d_, (even(nk) - nk) * d_, BF16(0.f));
          if (transposed(m)) {  // (d x nk), a zero row where d is odd
            transpose(rounded.data(), nk, d_, rows.data());
            std::fill_n(rows.data() + d_ * nk, (even(d_) - d_) * nk, BF16(0.f));
            pack_rows(even(d_), nk, rows.data(), mutable_block(m, bh, j0));
          } else {
            pack_rows(even(nk), d_, rounded.data(), mutable_block(m, bh, j0));
          }
        }
      }
      release_bf16_tiles();
    });
  }

  // The packed matrix of the block of keys starting at j0: a (d_even x nk) or (nk_even x d) B
  // operand of bf16_tile_product.
  const BF16* block(KeyMatrix m, int64_t bh, int64_t j0) const {
    return storage_.data_ptr<BF16>() + (bh * blocks_ + j0 / block_) * slot_ + offset_[static_cast<int>(m)];
  }

 private:
  static bool transposed(KeyMatrix m) { return m == KeyMatrix::keys_transposed || m == KeyMatrix::values_transposed; }
  // (rows x cols) into (cols x rows), 16 rows at a time so that the rows read stay in L1 (row by
  // row, each element went to another cache line: 70% of this constructor's time).
  static void transpose(const BF16* in, int64_t rows, int64_t cols, BF16* out) {
    constexpr int64_t kRows = 16;
    for (int64_t i0 = 0; i0 < rows; i0 += kRows) {
      const int64_t n = std::min(kRows, rows - i0);
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t i = 0; i < n; ++i) out[c * rows + i0 + i] = in[(i0 + i) * cols + c];
    }
  }
  BF16* mutable_block(KeyMatrix m, int64_t bh, int64_t j0) { return const_cast<BF16*>(block(m, bh, j0)); }

  int64_t Nk_, d_, block_, blocks_, slot_ = 0;
  int64_t offset_[4] = {0, 0, 0, 0};
  at::Tensor storage_;
};

// (rows x d) bfloat16 rows `row_stride` apart into (rows x d_even), a zero column where d is odd.
inline void copy_rows_padded(const c10::BFloat16* first, int64_t rows, int64_t d, int64_t row_stride,
                             c10::BFloat16* out) {
  const int64_t d_even = even(d);
  for (int64_t i = 0; i < rows; ++i) {
    std::copy_n(first + i * row_stride, d, out + i * d_even);
    if (d_even != d) out[i * d_even + d] = c10::BFloat16(0.f);
  }
}

// (rows x d) bfloat16 rows `row_stride` apart, transposed into (d x rows_even), a zero column
// where rows is odd.
inline void transpose_rows_padded(const c10::BFloat16* first, int64_t rows, int64_t d, int64_t row_stride,
                                  c10::BFloat16* out) {
  const int64_t width = even(rows);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t i = 0; i < rows; ++i) out[c * width + i] = first[i * row_stride + c];
  if (width != rows)
    for (int64_t c = 0; c < d; ++c) out[c * width + rows] = c10::BFloat16(0.f);
}

// bfloat16 storage as the vectorised softmax rows (vec_math.h) write it.
inline uint16_t* bits(c10::BFloat16* p) { return reinterpret_cast<uint16_t*>(p); }

// The forward's products: scores = q K~^T (unscaled: the softmax applies the scale in its
// exponent; a pass over the scores took 12% of the forward's time) and acc += P V~.
class Bf16ForwardTiles {
 public:
  using BF16 = c10::BFloat16;

  Bf16ForwardTiles(const AttentionParams& p, const PackedKeyBlocks& packed, int64_t block_q, int64_t block_k)
      : packed_(packed), d_(p.d), scale_(static_cast<float>(p.scale)), q_rows_(block_q * even(p.d)),
        p_rows_(block_q * even(block_k)) {}

  void load_queries(const BF16* first, int64_t nq, int64_t row_stride) {
    copy_rows_padded(first, nq, d_, row_stride, q_rows_.data());
  }
  void scores(int64_t bh, int64_t j0, int64_t nq, int64_t nk, float* scores) {
    bf16_tile_product(nq, nk, even(d_), q_rows_.data(), even(d_), packed_.block(KeyMatrix::keys_transposed, bh, j0),
                      scores, nk, /*accumulate=*/false);
  }
  float unapplied_scale() const { return scale_; }
  // Row i of the block's probabilities, exp(row * factor - shift), written straight into the
  // bfloat16 operand of P V~; returns their sum, unrounded.
  float exponentiate_row(int64_t i, const float* row, int64_t nk, float factor, float shift) {
    BF16* probs = p_rows_.data() + i * even(nk);
    const float sum = exp_rows_and_sum(row, nk, factor, shift, bits(probs));
    if (nk & 1) probs[nk] = BF16(0.f);
    return sum;
  }
  void accumulate(int64_t bh, int64_t j0, int64_t nq, int64_t nk, float* acc) {
    const int64_t width = even(nk);
    bf16_tile_product(nq, d_, width, p_rows_.data(), width, packed_.block(KeyMatrix::values, bh, j0), acc, d_,
                      /*accumulate=*/true);
  }
  void finish() { release_bf16_tiles(); }

 private:
  const PackedKeyBlocks& packed_;
  int64_t d_;
  float scale_;
  std::vector<BF16> q_rows_, p_rows_;
};

// The backward's products over one block of queries and one of keys. dk~ and dv~ accumulate
// transposed, (d x Nk) per task, so that P and dS enter as packed B operands of dV~^T = dO^T P
// and dK~^T = q^T dS, never transposed themselves: the caller transposes the reduced sums once.
class Bf16BackwardTiles {
 public:
  using BF16 = c10::BFloat16;
  static constexpr bool transposed_partials = true;

  Bf16BackwardTiles(const AttentionParams& p, const PackedKeyBlocks& packed, int64_t block_q, int64_t block_k,
                    float* partial_dk, float* partial_dv)
      : packed_(packed), d_(p.d), Nk_(p.Nk), partial_dk_(partial_dk), partial_dv_(partial_dv),
        q_rows_(block_q * even(p.d)), do_rows_(block_q * even(p.d)), q_t_(p.d * even(block_q)),
        do_t_(p.d * even(block_q)), p_rows_(even(block_q) * even(block_k)), ds_rows_(even(block_q) * even(block_k)),
        p_packed_(packed_size(even(block_q), block_k)), ds_packed_(packed_size(even(block_q), block_k)) {}

  void load_queries(const BF16* q_first, const BF16* do_first, int64_t nq, int64_t row_stride) {
    copy_rows_padded(q_first, nq, d_, row_stride, q_rows_.data());
    copy_rows_padded(do_first, nq, d_, row_stride, do_rows_.data());
    transpose_rows_padded(q_first, nq, d_, row_stride, q_t_.data());
    transpose_rows_padded(do_first, nq, d_, row_stride, do_t_.data());
  }
  // Raw q K~^T into probs and dO V~^T into dscores, unscaled.
  void scores(int64_t bh, int64_t j0, int64_t nq, int64_t nk, float* probs, float* dscores) {
    const int64_t d_even = even(d_);
    bf16_tile_product(nq, nk, d_even, q_rows_.data(), d_even, packed_.block(KeyMatrix::keys_transposed, bh, j0),
                      probs, nk, /*accumulate=*/false);
    bf16_tile_product(nq, nk, d_even, do_rows_.data(), d_even, packed_.block(KeyMatrix::values_transposed, bh, j0),
                      dscores, nk, /*accumulate=*/false);
  }
  // Row i of P and dS from its raw scores and dO . v~, written straight into the bfloat16
  // operands: P (rows nk apart) and dS (rows nk_even apart, a zero column where nk is odd).
  void softmax_row(int64_t i, const float* scores, const float* dots, int64_t nk, float scale, float lse,
                   float delta) {
    BF16* probs = p_rows_.data() + i * nk;
    BF16* dscores = ds_rows_.data() + i * even(nk);
    softmax_backward_row(scores, dots, nk, scale, lse, delta, bits(probs), bits(dscores));
    if (nk & 1) dscores[nk] = BF16(0.f);
  }
  // dv~^T += dO^T P and dk~^T += q^T dS into the task's partial sums, dq += dS K~.
  void accumulate(int64_t task, int64_t bh, int64_t j0, int64_t nq, int64_t nk, float* dq) {
    const int64_t nq_even = even(nq), nk_even = even(nk);
    if (nq != nq_even) {  // a zero row pairs the last one in the packing
      std::fill_n(p_rows_.data() + nq * nk, nk, BF16(0.f));
      std::fill_n(ds_rows_.data() + nq * nk_even, nk_even, BF16(0.f));
    }
    pack_rows(nq_even, nk, p_rows_.data(), p_packed_.data());
    pack_rows(nq_even, nk, ds_rows_.data(), ds_packed_.data(), /*ld=*/nk_even);
    const int64_t partial = task * d_ * Nk_ + j0;
    bf16_tile_product(d_, nk, nq_even, do_t_.data(), nq_even, p_packed_.data(), partial_dv_ + partial, Nk_,
                      /*accumulate=*/true);
    bf16_tile_product(d_, nk, nq_even, q_t_.data(), nq_even, ds_packed_.data(), partial_dk_ + partial, Nk_,
                      /*accumulate=*/true);
    bf16_tile_product(nq, d_, nk_even, ds_rows_.data(), nk_even, packed_.block(KeyMatrix::keys, bh, j0), dq, d_,
                      /*accumulate=*/true);
  }
  void finish() { release_bf16_tiles(); }

 private:
  const PackedKeyBlocks& packed_;
  int64_t d_, Nk_;
  float *partial_dk_, *partial_dv_;
  std::vector<BF16> q_rows_, do_rows_, q_t_, do_t_, p_rows_, ds_rows_, p_packed_, ds_packed_;
};

}  // namespace lc4::cpu
