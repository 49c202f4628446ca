/*
 * fuzz_model_file.c - libFuzzer target for the model-file loader: any byte string given to
 * ds4sci_model_load_memory must give a status and a message, never a crash, an out-of-bounds
 * read, undefined behaviour or a leak. A model that loads must be fully readable.
 *
 * Build: cmake -DDS4SCI_FUZZ=ON -DCMAKE_C_COMPILER=clang ...; run:
 *   fuzz_model_file -dict=tests/fuzz/model_file.dict CORPUS_DIR tests/fuzz/corpus
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ds4sci.h"
#include "et_desc.h"
#include "model_internal.h"

/* Read every weight the description points at, so ASan sees any bad pointer or size. */
static double touch(const double *p, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; p && i < n; i++)
        s += p[i];
    return s;
}

static void check_loaded(const ds4sci_model *m) {
    const ds4sci_model_info *info = ds4sci_model_get_info(m);
    const et_desc *d = ds4sci_model_desc(m);
    if (!info || !d || d->F != info->hidden_channels || d->F != d->H * d->D)
        abort();
    const int64_t F = d->F, K = d->K, Z = d->max_z;
    volatile double s = 0.0;
    s += touch(d->emb, Z * F) + touch(d->ne_emb, Z * F) + touch(d->ne_dp_w, F * K) +
         touch(d->ne_dp_b, F) + touch(d->ne_comb_w, 2 * F * F) + touch(d->ne_comb_b, F);
    s += touch(d->rbf_means, K) + touch(d->rbf_betas, K) + touch(d->rbf_offset, K);
    for (int32_t l = 0; l < d->L; l++) {
        const et_layer *y = &d->layers[l];
        s += touch(y->ln_w, F) + touch(y->ln_b, F) + touch(y->q_w, F * F) + touch(y->q_b, F) +
             touch(y->k_w, F * F) + touch(y->k_b, F) + touch(y->v_w, 3 * F * F) +
             touch(y->v_b, 3 * F) + touch(y->o_w, 3 * F * F) + touch(y->o_b, 3 * F) +
             touch(y->vec_w, 3 * F * F) + touch(y->dk_w, F * K) + touch(y->dk_b, F) +
             touch(y->dv_w, 3 * F * K) + touch(y->dv_b, 3 * F);
    }
    s += touch(d->out_norm_w, F) + touch(d->out_norm_b, F) + touch(d->atomref, Z);
    for (int b = 0; b < 2; b++) {
        const et_geb *g = &d->head[b];
        s += touch(g->vec1_w, (int64_t)g->in * g->in) + touch(g->vec2_w, (int64_t)g->out * g->in) +
             touch(g->up0_w, 2 * (int64_t)g->in * g->in) + touch(g->up0_b, g->in) +
             touch(g->up2_w, 2 * (int64_t)g->out * g->in) + touch(g->up2_b, 2 * g->out);
    }
    for (int32_t i = 0; i < info->n_elements; i++) {
        if (info->element_z[i] < 0 || info->element_z[i] >= info->max_z)
            abort();
        if (ds4sci_model_element_z(m, info->element_symbols[i]) < 0)
            abort();
    }
    s += (double)strlen(info->name) + (double)strlen(info->description) +
         (double)strlen(info->length_unit) + (double)strlen(info->energy_unit);
    (void)s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds4sci_model *m = NULL;
    char err[512];
    ds4sci_status st = ds4sci_model_load_memory(data, size, "fuzz", &m, err, sizeof err);
    if (st == DS4SCI_OK) {
        if (!m)
            abort();
        check_loaded(m);
        ds4sci_model_free(m);
    } else if (m != NULL || err[0] == '\0' || strncmp(err, "fuzz: ", 6) != 0) {
        abort(); /* every refusal: no model, a message naming the input */
    }
    return 0;
}
