/* OT fusion of BERT masked-language models. The same groups of neurons and the same
 * residual policies as for the ViT (see fuse.h) apply, with BERT's post-LN placement: the
 * stream after each join is the LayerNorm output, the embedding LayerNorm output is the
 * stream entering layer 0, and the MLM head's dense layer writes into the token-embedding
 * space because its decoder is tied to the token embeddings. */
#ifndef TFUSE_FUSE_BERT_H
#define TFUSE_FUSE_BERT_H

#include "tfuse/bert.h"
#include "tfuse/fuse.h"

/* Collective on comm. Like fuse_compute_maps, for BERT parents: the calibration set is
 * n_seqs token sequences ids (n_seqs, T) with lengths (n_seqs) (NULL: all T), replicated on
 * every rank; padding positions are not samples. Returns maps[p] for p != anchor (NULL for
 * the anchor); the caller frees each with fuse_maps_free and the array with free. */
tf_status fuse_bert_compute_maps(MPI_Comm comm, bert_model *const *parents, int n_parents,
                                 int anchor, const int *ids, const int *lengths, int64_t n_seqs,
                                 const fuse_options *opt, fuse_maps ***maps_out);

/* Moves a BERT parent into the anchor's basis (aligned has the anchor's configuration).
 * Not collective. */
tf_status fuse_bert_align_parent(const bert_model *parent, const fuse_maps *maps,
                                 bert_model *aligned);

/* Collective on comm. Statistics repair of a fused BERT model (FUSE_REPAIR_MLP or
 * FUSE_REPAIR_ALL; see fuse_repair), with the calibration sequences of
 * fuse_bert_compute_maps. The aligned parents have the fused model's configuration. */
tf_status fuse_bert_repair(MPI_Comm comm, bert_model *fused, bert_model *const *aligned,
                           const double *weights, int n, const int *ids, const int *lengths,
                           int64_t n_seqs, enum fuse_repair what);

/* out = sum_p weights[p] * models[p], all with the same configuration. */
tf_status fuse_bert_average(bert_model *const *models, const double *weights, int n,
                            bert_model *out);

#endif
