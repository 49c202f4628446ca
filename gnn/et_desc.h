/*
 * et_desc.h - the frozen, validated description of an ET model: hyperparameters and weights
 * as plain arrays. The model-file reader fills it; the CPU reference and the CUDA backend
 * read it. Plain C, no functions: kernels/ may include this header (and ds4sci.h) and nothing
 * else from gnn/.
 *
 * Every weight is float64, row-major, in PyTorch's layout: a Linear(in -> out) weight is
 * [out][in] and y[o] = sum_i W[o][i] x[i] + b[o]. Names in comments are TorchMD-Net state-dict
 * keys without the "representation_model." / "output_model." prefixes. ET_SPEC.md is the math.
 */
#ifndef DS4SCI_ET_DESC_H
#define DS4SCI_ET_DESC_H

/* Pairs closer than this (length unit) are refused as overlapping atoms (api.c's input check,
   or the CUDA backend's on the GPU). */
#define DS4SCI_MIN_PAIR_DIST 1e-4

#include <stdint.h>

typedef enum et_act {
    ET_ACT_SSP = 0,      /* softplus(x) - ln 2 */
    ET_ACT_SILU = 1,     /* x sigmoid(x); "swish" maps here too */
    ET_ACT_TANH = 2,
    ET_ACT_SIGMOID = 3,
    ET_ACT_MISH = 4      /* x tanh(softplus(x)) */
} et_act;

typedef enum et_rbf {
    ET_RBF_EXPNORM = 0,
    ET_RBF_GAUSS = 1
} et_rbf;

/* distance_influence as bits: keys uses dk, values uses dv. */
enum { ET_DI_KEYS = 1, ET_DI_VALUES = 2 };

typedef struct et_layer {
    const double *ln_w, *ln_b;   /* layernorm.weight/bias            [F], [F]     */
    const double *q_w, *q_b;     /* q_proj                           [F][F], [F]  */
    const double *k_w, *k_b;     /* k_proj                           [F][F], [F]  */
    const double *v_w, *v_b;     /* v_proj, head-interleaved         [3F][F], [3F] */
    const double *o_w, *o_b;     /* o_proj, 3 contiguous blocks of F [3F][F], [3F] */
    const double *vec_w;         /* vec_proj, no bias, 3 blocks of F [3F][F]      */
    const double *dk_w, *dk_b;   /* dk_proj [F][K], [F]; NULL unless dist_influence & KEYS   */
    const double *dv_w, *dv_b;   /* dv_proj [3F][K], [3F], head-interleaved; NULL unless
                                    dist_influence & VALUES                                 */
} et_layer;

/* GatedEquivariantBlock(in -> out), intermediate width = in. */
typedef struct et_geb {
    int32_t in, out;
    const double *vec1_w;        /* vec1_proj.weight            [in][in]   */
    const double *vec2_w;        /* vec2_proj.weight            [out][in]  */
    const double *up0_w, *up0_b; /* update_net.layers.0         [in][2in], [in]   */
    const double *up2_w, *up2_b; /* update_net.layers.2         [2out][in], [2out] */
    int32_t scalar_activation;   /* 1 for block 0, 0 for block 1 */
} et_geb;

typedef struct et_desc {
    /* sizes */
    int32_t F, H, D, K, L;       /* hidden, heads, F/H, rbf, layers */
    int32_t max_z;

    /* options */
    et_act act;                  /* activation (filters, GEB, ...) */
    et_act attn_act;             /* attn_activation (attention weights) */
    et_rbf rbf;
    int32_t dist_influence;      /* ET_DI_* bits: 3 = "both", 0 = "none" */
    int32_t neighbor_embedding;  /* 0/1 */
    int32_t vector_cutoff;       /* 0/1 */
    double cutoff_lower, cutoff_upper;
    double alpha;                /* expnorm: 5 / (cutoff_upper - cutoff_lower) */

    /* radial basis */
    const double *rbf_means;     /* expnorm: distance_expansion.means [K] */
    const double *rbf_betas;     /* expnorm: distance_expansion.betas [K] */
    const double *rbf_offset;    /* gauss:   distance_expansion.offset [K] */
    double rbf_coeff;            /* gauss:   distance_expansion.coeff (scalar) */

    /* embeddings */
    const double *emb;           /* embedding.weight [max_z][F] */
    const double *ne_emb;        /* neighbor_embedding.embedding.weight [max_z][F] or NULL */
    const double *ne_dp_w, *ne_dp_b;     /* neighbor_embedding.distance_proj [F][K], [F] */
    const double *ne_comb_w, *ne_comb_b; /* neighbor_embedding.combine [F][2F], [F] */

    const et_layer *layers;      /* [L] attention_layers.{l} */
    const double *out_norm_w, *out_norm_b; /* out_norm [F], [F] */

    et_geb head[2];              /* output_network.0 (F -> F/2), output_network.1 (F/2 -> 1) */
    double head_eps;             /* head_vector_norm_eps: both blocks use sqrt(|u|^2 + eps^2)
                                    for |u|; 0 = TorchMD-Net's plain norm */

    /* standardisation and prior */
    double std;                  /* multiplies per-atom outputs (before atomref) */
    double mean;                 /* added once per system after the sum (energy_shift) */
    int32_t atomref_enable;
    const double *atomref;       /* prior_model.0.atomref.weight [max_z] or NULL */
} et_desc;

#endif /* DS4SCI_ET_DESC_H */
