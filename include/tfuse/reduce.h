/* Reproducible sums over MPI ranks.
 *
 * MPI_Allreduce adds the ranks' partial sums in an order that depends on the number of
 * ranks (and on the MPI library's algorithm), so a floating-point result changes with the
 * rank count. reduce_chunks_sum instead splits the work into a fixed number of chunks,
 * chosen by the caller independently of the rank count, and groups them into at most
 * REDUCE_MAX_LEAVES leaves of reduce_leaf_chunks(n_chunks) consecutive chunks (one chunk
 * per leaf up to REDUCE_MAX_LEAVES chunks). A leaf's chunks are added into one buffer in
 * chunk order. The leaves are added over one fixed binary tree on the leaf indices. The
 * node at level k covering leaves [s, s + 2^k), with s a multiple of 2^k, is the sum of
 * its left child [s, s + 2^(k-1)) and its right child. A node whose right child starts at
 * or past the last leaf equals its left child, and the root covers [0, 2^K) with 2^K >=
 * leaves. Every addition is done exactly once, with the same operands, whichever rank
 * does it, so the result is bitwise the same for any number of ranks. Capping the leaves
 * caps the tree's depth, so a rank's memory does not grow with the number of chunks. */
#ifndef TFUSE_REDUCE_H
#define TFUSE_REDUCE_H

#include "tfuse/common.h"

/* Adds the contribution of chunk `chunk` into buffer (len doubles), which is zeroed before
 * the first chunk of each leaf and contains the earlier chunks of the leaf otherwise. Must
 * add, never overwrite, and depend only on the chunk index, never on the rank, for the
 * result to be reproducible. Returns TF_OK, or a status with a message set by
 * tf_error_set. */
typedef tf_status (*reduce_fill_fn)(int64_t chunk, double *buffer, int64_t len, void *ctx);

/* Most leaves of the tree. */
#define REDUCE_MAX_LEAVES 1024

/* Chunks per leaf for n_chunks chunks: 1 up to REDUCE_MAX_LEAVES chunks, then
 * ceil(n_chunks / REDUCE_MAX_LEAVES). */
int64_t reduce_leaf_chunks(int64_t n_chunks);

/* First chunk and one past the last chunk filled by `rank` of `size` ranks: whole leaves,
 * in contiguous ranges whose leaf counts differ by at most one. */
void reduce_chunk_range(int64_t n_chunks, int rank, int size, int64_t *first, int64_t *last);

/* Collective on comm. Computes result (len doubles, on every rank) = the tree sum of the
 * chunk buffers 0 .. n_chunks - 1 described above. Each rank fills the chunks of its
 * reduce_chunk_range in order, leaf by leaf, and adds the leaves into the largest complete
 * tree nodes of its range. Rank o then receives segment o (values [len o / size, len (o + 1) /
 * size)) of every rank's nodes, adds them in chunk order on the same tree, and broadcasts the
 * result's segment. A rank keeps at most about 2 log2(leaves) + 2 <= 22 buffers of len
 * doubles, plus as many of len / size, never one per chunk. n_chunks = 0 gives zeros.
 * If fill fails on any rank, every rank returns a failure (the failing rank keeps its own
 * message) and result is unspecified. */
tf_status reduce_chunks_sum(MPI_Comm comm, int64_t n_chunks, int64_t len, reduce_fill_fn fill,
                            void *ctx, double *result);

#endif
