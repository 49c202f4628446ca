/*
 * check_model_file.c - the model-file loader (gnn/model_file.c, gnn/safetensors.c).
 *
 * Good files are the golden models written by TorchMD-Net + tools/export_torchmdnet.py
 * (the .safetensors files in tests/golden); the expectations come from the golden JSON's "config"
 * and from the file's own bytes, read here independently of the loader. Bad files are made by
 * mutating a good file in memory (header JSON, config JSON, length prefix, data bytes), so
 * every refusal is tested without extra fixtures.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ds4sci.h"
#include "et_desc.h"
#include "model_internal.h"

#define GOLDEN DS4SCI_TEST_DATA "/golden/"

/* ---- helpers ----------------------------------------------------------------------------- */

typedef struct buffer {
    unsigned char *data;
    size_t size;
} buffer;

static buffer read_all(const char *path) {
    buffer b = {0};
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b.data = malloc((size_t)n);
    ck_assert_ptr_nonnull(b.data);
    b.size = fread(b.data, 1, (size_t)n, f);
    ck_assert_uint_eq(b.size, (size_t)n);
    fclose(f);
    return b;
}

static uint64_t header_len(const buffer *b) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b->data[i];
    return n;
}

/* A good file taken apart: its header as JSON, its config as JSON, and its data bytes. */
typedef struct parts {
    cJSON *header;
    cJSON *config;
    const unsigned char *data;
    size_t data_len;
} parts;

static parts split(const buffer *b) {
    parts p;
    uint64_t hlen = header_len(b);
    p.header = cJSON_ParseWithLength((const char *)b->data + 8, (size_t)hlen);
    ck_assert_ptr_nonnull(p.header);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(p.header, "__metadata__");
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(meta, "ds4sci.config");
    ck_assert(cJSON_IsString(cfg));
    p.config = cJSON_Parse(cfg->valuestring);
    ck_assert_ptr_nonnull(p.config);
    p.data = b->data + 8 + hlen;
    p.data_len = b->size - 8 - (size_t)hlen;
    return p;
}

/* Reassemble: config -> metadata string, header -> JSON, then the data plus `extra` bytes. */
static buffer pack(parts *p, const void *extra, size_t extra_len) {
    char *cfg_text = cJSON_PrintUnformatted(p->config);
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(p->header, "__metadata__");
    if (meta && cJSON_GetObjectItemCaseSensitive(meta, "ds4sci.config"))
        cJSON_ReplaceItemInObjectCaseSensitive(meta, "ds4sci.config", cJSON_CreateString(cfg_text));
    free(cfg_text);
    char *text = cJSON_PrintUnformatted(p->header);
    size_t hlen = strlen(text);
    buffer b;
    b.size = 8 + hlen + p->data_len + extra_len;
    b.data = malloc(b.size);
    for (int i = 0; i < 8; i++)
        b.data[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b.data + 8, text, hlen);
    memcpy(b.data + 8 + hlen, p->data, p->data_len);
    if (extra_len)
        memcpy(b.data + 8 + hlen + p->data_len, extra, extra_len);
    free(text);
    return b;
}

/* A header entry for an F32 tensor `name` of n values stored right after the data (the bytes
   that pack's `extra` appends). */
static void add_f32_after_data(parts *p, const char *name, int n) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "dtype", "F32");
    cJSON_AddItemToObject(t, "shape", cJSON_CreateIntArray((const int[]){n}, 1));
    cJSON *offs = cJSON_CreateArray();
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)p->data_len));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)p->data_len + 4.0 * n));
    cJSON_AddItemToObject(t, "data_offsets", offs);
    cJSON_AddItemToObject(p->header, name, t);
}

/* A file from raw header text and data bytes. */
static buffer assemble(const char *text, size_t hlen, const unsigned char *data, size_t data_len) {
    buffer b = {malloc(8 + hlen + data_len), 8 + hlen + data_len};
    for (int i = 0; i < 8; i++)
        b.data[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b.data + 8, text, hlen);
    memcpy(b.data + 8 + hlen, data, data_len);
    return b;
}

static void parts_free(parts *p) {
    cJSON_Delete(p->header);
    cJSON_Delete(p->config);
}

static cJSON *tensor_entry(parts *p, const char *name) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(p->header, name);
    ck_assert_msg(t != NULL, "golden file lacks tensor %s", name);
    return t;
}

/* Read element i of an F32 tensor straight from the file bytes. */
static double file_f32(const parts *p, const char *name, int64_t i) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(p->header, name);
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring, "F32");
    int64_t begin =
        (int64_t)cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(t, "data_offsets"), 0)
            ->valuedouble;
    float f;
    memcpy(&f, p->data + begin + 4 * i, 4); /* test host is little-endian (x86-64, aarch64) */
    return (double)f;
}

/* Load a mutated buffer; expect `status` and a message containing each of the needles. */
static void expect_refusal(buffer b, ds4sci_status status, const char *needle1,
                           const char *needle2) {
    char err[1024];
    ds4sci_model *m = (ds4sci_model *)0x1;
    ds4sci_status st =
        ds4sci_model_load_memory(b.data, b.size, "bad.safetensors", &m, err, sizeof err);
    ck_assert_msg(st == status, "status %d, expected %d; message: %s", st, status, err);
    ck_assert_ptr_null(m);
    ck_assert_msg(strncmp(err, "bad.safetensors: ", 17) == 0, "message lacks file name: %s", err);
    ck_assert_msg(strstr(err, needle1) != NULL, "message lacks \"%s\": %s", needle1, err);
    if (needle2)
        ck_assert_msg(strstr(err, needle2) != NULL, "message lacks \"%s\": %s", needle2, err);
    free(b.data);
}

static ds4sci_model *load_ok(const buffer *b) {
    char err[1024];
    ds4sci_model *m = NULL;
    ds4sci_status st = ds4sci_model_load_memory(b->data, b->size, "ok", &m, err, sizeof err);
    ck_assert_msg(st == DS4SCI_OK, "load failed: %s", err);
    ck_assert_ptr_nonnull(m);
    return m;
}

#define SMALL GOLDEN "small.safetensors"
#define V1 "representation_model.attention_layers.1.v_proj.weight"

/* ---- good files ---------------------------------------------------------------------------- */

START_TEST(test_good_file_info_matches_golden_config) {
    buffer js = read_all(GOLDEN "small.json");
    cJSON *doc = cJSON_ParseWithLength((const char *)js.data, js.size);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(doc, "config");
    ck_assert_ptr_nonnull(cfg);
#define CFG_NUM(k) cJSON_GetObjectItemCaseSensitive(cfg, k)->valuedouble

    char err[512];
    ds4sci_model *m = NULL;
    ck_assert_int_eq(ds4sci_model_load(SMALL, &m, err, sizeof err), DS4SCI_OK);
    ck_assert_str_eq(err, "");
    const ds4sci_model_info *info = ds4sci_model_get_info(m);
    ck_assert_str_eq(info->path, SMALL);
    ck_assert_str_eq(info->name, cJSON_GetObjectItemCaseSensitive(cfg, "name")->valuestring);
    ck_assert_str_eq(info->length_unit, "angstrom");
    ck_assert_str_eq(info->energy_unit, "eV");
    ck_assert_int_eq(info->hidden_channels, (int)CFG_NUM("hidden_channels"));
    ck_assert_int_eq(info->num_layers, (int)CFG_NUM("num_layers"));
    ck_assert_int_eq(info->num_rbf, (int)CFG_NUM("num_rbf"));
    ck_assert_int_eq(info->num_heads, (int)CFG_NUM("num_heads"));
    ck_assert_int_eq(info->max_z, (int)CFG_NUM("max_z"));
    ck_assert_double_eq(info->cutoff_lower, CFG_NUM("cutoff_lower"));
    ck_assert_double_eq(info->cutoff_upper, CFG_NUM("cutoff_upper"));
    ck_assert_int_eq(info->vector_cutoff, 1);
    ck_assert_ptr_null(info->warning);
    ck_assert_double_eq(info->energy_shift, 0.0);

    const cJSON *el = cJSON_GetObjectItemCaseSensitive(cfg, "elements");
    ck_assert_int_eq(info->n_elements, cJSON_GetArraySize(el));
    int i = 0;
    for (const cJSON *e = el->child; e; e = e->next, i++) {
        ck_assert_str_eq(info->element_symbols[i], e->string);
        ck_assert_int_eq(info->element_z[i], (int)e->valuedouble);
        ck_assert_int_eq(ds4sci_model_element_z(m, e->string), (int)e->valuedouble);
    }
    ck_assert_int_eq(ds4sci_model_element_z(m, "Xx"), -1);
    ck_assert_int_eq(ds4sci_model_element_z(m, "h"), -1);
    ds4sci_model_free(m);
    cJSON_Delete(doc);
    free(js.data);
#undef CFG_NUM
}
END_TEST

START_TEST(test_good_file_desc_complete_and_weights_equal_file_bytes) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    ds4sci_model *m = load_ok(&b);
    const et_desc *d = ds4sci_model_desc(m);
    ck_assert_int_eq(d->F, 32);
    ck_assert_int_eq(d->H, 4);
    ck_assert_int_eq(d->D, 8);
    ck_assert_int_eq(d->K, 8);
    ck_assert_int_eq(d->L, 2);
    ck_assert_int_eq(d->max_z, 100);
    ck_assert_int_eq(d->act, ET_ACT_SILU);
    ck_assert_int_eq(d->attn_act, ET_ACT_SILU);
    ck_assert_int_eq(d->rbf, ET_RBF_EXPNORM);
    ck_assert_int_eq(d->dist_influence, ET_DI_KEYS | ET_DI_VALUES);
    ck_assert_int_eq(d->neighbor_embedding, 1);
    ck_assert_int_eq(d->vector_cutoff, 1);
    ck_assert_double_eq_tol(d->alpha, 5.0 / (5.0 - 0.0), 1e-15);
    ck_assert_int_eq(d->head[0].in, 32);
    ck_assert_int_eq(d->head[0].out, 16);
    ck_assert_int_eq(d->head[0].scalar_activation, 1);
    ck_assert_int_eq(d->head[1].in, 16);
    ck_assert_int_eq(d->head[1].out, 1);
    ck_assert_int_eq(d->head[1].scalar_activation, 0);
    ck_assert_double_eq(d->std, 1.0);
    ck_assert_double_eq(d->mean, 0.0);
    ck_assert_int_eq(d->atomref_enable, 0);
    ck_assert_ptr_null(d->atomref);
    ck_assert_ptr_null(d->rbf_offset);
    for (int l = 0; l < d->L; l++) {
        const et_layer *ly = &d->layers[l];
        const double *ptrs[] = {ly->ln_w,  ly->ln_b, ly->q_w,  ly->q_b,  ly->k_w,
                                ly->k_b,   ly->v_w,  ly->v_b,  ly->o_w,  ly->o_b,
                                ly->vec_w, ly->dk_w, ly->dk_b, ly->dv_w, ly->dv_b};
        for (size_t k = 0; k < sizeof ptrs / sizeof ptrs[0]; k++)
            ck_assert_ptr_nonnull(ptrs[k]);
    }
    /* values: the float32 bytes in the file, upcast exactly */
    for (int64_t i = 0; i < 96 * 32; i += 37)
        ck_assert_double_eq(d->layers[1].v_w[i], file_f32(&p, V1, i));
    for (int64_t i = 0; i < 8; i++) {
        ck_assert_double_eq(d->rbf_means[i],
                            file_f32(&p, "representation_model.distance_expansion.means", i));
        ck_assert_double_eq(d->rbf_betas[i],
                            file_f32(&p, "representation_model.distance_expansion.betas", i));
    }
    for (int64_t i = 0; i < 100 * 32; i += 101)
        ck_assert_double_eq(d->ne_emb[i], file_f32(&p,
                                                   "representation_model.neighbor_embedding."
                                                   "embedding.weight",
                                                   i));
    ck_assert_double_eq(d->head[1].up2_b[1],
                        file_f32(&p, "output_model.output_network.1.update_net.layers.2.bias", 1));
    ck_assert_double_eq(d->out_norm_b[31], file_f32(&p, "representation_model.out_norm.bias", 31));
    ck_assert_double_eq(
        d->layers[0].dv_w[3 * 32 * 8 - 1],
        file_f32(&p, "representation_model.attention_layers.0.dv_proj.weight", 3 * 32 * 8 - 1));
    ds4sci_model_free(m);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_f64_file_gives_same_weights) {
    /* Rewrite every F32 tensor as F64 (appended after the old data): same weights. */
    buffer b = read_all(SMALL);
    parts p = split(&b);
    ds4sci_model *m32 = load_ok(&b);
    size_t extra_len = 0;
    for (cJSON *t = p.header->child; t; t = t->next)
        if (strcmp(t->string, "__metadata__") != 0)
            extra_len +=
                2 *
                (size_t)(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(t, "data_offsets"), 1)
                             ->valuedouble -
                         cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(t, "data_offsets"), 0)
                             ->valuedouble);
    unsigned char *extra = malloc(extra_len);
    size_t at = 0;
    for (cJSON *t = p.header->child; t; t = t->next) {
        if (strcmp(t->string, "__metadata__") == 0)
            continue;
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        size_t begin = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
        size_t end = (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
        size_t new_begin = p.data_len + at;
        for (size_t k = begin; k < end; k += 4) {
            float f;
            memcpy(&f, p.data + k, 4);
            double v = f;
            memcpy(extra + at, &v, 8);
            at += 8;
        }
        cJSON_ReplaceItemInObjectCaseSensitive(t, "dtype", cJSON_CreateString("F64"));
        cJSON *no = cJSON_CreateArray();
        cJSON_AddItemToArray(no, cJSON_CreateNumber((double)new_begin));
        cJSON_AddItemToArray(no, cJSON_CreateNumber((double)(p.data_len + at)));
        cJSON_ReplaceItemInObjectCaseSensitive(t, "data_offsets", no);
    }
    buffer b64 = pack(&p, extra, extra_len);
    ds4sci_model *m64 = load_ok(&b64);
    const et_desc *d32 = ds4sci_model_desc(m32), *d64 = ds4sci_model_desc(m64);
    for (int l = 0; l < d32->L; l++)
        ck_assert_int_eq(memcmp(d32->layers[l].o_w, d64->layers[l].o_w, 3 * 32 * 32 * 8), 0);
    ck_assert_int_eq(memcmp(d32->emb, d64->emb, 100 * 32 * 8), 0);
    ck_assert_int_eq(memcmp(d32->head[0].up0_w, d64->head[0].up0_w, 32 * 64 * 8), 0);
    ds4sci_model_free(m32);
    ds4sci_model_free(m64);
    free(extra);
    free(b64.data);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_atomref_std_mean_and_lower_cutoff) {
    buffer b = read_all(GOLDEN "lower_atomref.safetensors");
    parts p = split(&b);
    ds4sci_model *m = load_ok(&b);
    const et_desc *d = ds4sci_model_desc(m);
    const ds4sci_model_info *info = ds4sci_model_get_info(m);
    ck_assert_double_eq(d->std, file_f32(&p, "std", 0));
    ck_assert_double_eq(d->mean, file_f32(&p, "mean", 0));
    ck_assert_double_ne(d->std, 1.0);
    ck_assert_double_ne(d->mean, 0.0);
    ck_assert_double_eq(info->energy_shift, d->mean);
    ck_assert_double_eq(info->cutoff_lower, 0.8);
    ck_assert_double_eq_tol(d->alpha, 5.0 / (5.0 - 0.8), 1e-15);
    ck_assert_int_eq(d->atomref_enable, 1);
    ck_assert_ptr_nonnull(d->atomref);
    for (int z = 0; z < 100; z += 7)
        ck_assert_double_eq(d->atomref[z], file_f32(&p, "prior_model.0.atomref.weight", z));
    ds4sci_model_free(m);

    /* The same prior switched off: loads, atomref unused. */
    cJSON_ReplaceItemInObjectCaseSensitive(p.config, "atomref_enable", cJSON_CreateFalse());
    buffer off = pack(&p, NULL, 0);
    m = load_ok(&off);
    ck_assert_int_eq(ds4sci_model_desc(m)->atomref_enable, 0);
    ck_assert_ptr_null(ds4sci_model_desc(m)->atomref);
    ds4sci_model_free(m);
    free(off.data);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_vector_cutoff_off_loads_with_warning) {
    ds4sci_model *m = NULL;
    char err[512];
    ck_assert_int_eq(ds4sci_model_load(GOLDEN "no_vector_cutoff.safetensors", &m, err, sizeof err),
                     DS4SCI_OK);
    const ds4sci_model_info *info = ds4sci_model_get_info(m);
    ck_assert_int_eq(info->vector_cutoff, 0);
    ck_assert_ptr_nonnull(info->warning);
    ck_assert_ptr_nonnull(strstr(info->warning, "not continuous at the cutoff"));
    ck_assert_int_eq(ds4sci_model_desc(m)->vector_cutoff, 0);
    ds4sci_model_free(m);
}
END_TEST

START_TEST(test_gauss_without_neighbor_embedding) {
    buffer b = read_all(GOLDEN "gauss_no_nbr.safetensors");
    parts p = split(&b);
    ds4sci_model *m = load_ok(&b);
    const et_desc *d = ds4sci_model_desc(m);
    ck_assert_int_eq(d->rbf, ET_RBF_GAUSS);
    ck_assert_ptr_null(d->rbf_means);
    ck_assert_ptr_null(d->rbf_betas);
    ck_assert_ptr_nonnull(d->rbf_offset);
    ck_assert_double_eq(d->rbf_coeff,
                        file_f32(&p, "representation_model.distance_expansion.coeff", 0));
    ck_assert_double_lt(d->rbf_coeff, 0.0);
    ck_assert_int_eq(d->neighbor_embedding, 0);
    ck_assert_ptr_null(d->ne_emb);
    ck_assert_ptr_null(d->ne_dp_w);
    ck_assert_ptr_null(d->ne_comb_w);
    ck_assert_int_eq(d->F, 64);
    ck_assert_int_eq(d->L, 3);
    ds4sci_model_free(m);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_distance_influence_and_activations) {
    static const struct {
        const char *file;
        int di;
        et_act act, attn;
    } cases[] = {
        {"di_keys", ET_DI_KEYS, ET_ACT_SILU, ET_ACT_SILU},
        {"di_values", ET_DI_VALUES, ET_ACT_SILU, ET_ACT_SILU},
        {"di_none", 0, ET_ACT_SILU, ET_ACT_SILU},
        {"act_ssp_tanh", 3, ET_ACT_SSP, ET_ACT_TANH},
        {"act_tanh_sigmoid", 3, ET_ACT_TANH, ET_ACT_SIGMOID},
        {"act_mish_swish", 3, ET_ACT_MISH, ET_ACT_SILU},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[512], err[512];
        snprintf(path, sizeof path, GOLDEN "%s.safetensors", cases[i].file);
        ds4sci_model *m = NULL;
        ck_assert_msg(ds4sci_model_load(path, &m, err, sizeof err) == DS4SCI_OK, "%s", err);
        const et_desc *d = ds4sci_model_desc(m);
        ck_assert_int_eq(d->dist_influence, cases[i].di);
        ck_assert_int_eq(d->act, cases[i].act);
        ck_assert_int_eq(d->attn_act, cases[i].attn);
        for (int l = 0; l < d->L; l++) {
            ck_assert_int_eq(d->layers[l].dk_w != NULL, (cases[i].di & ET_DI_KEYS) != 0);
            ck_assert_int_eq(d->layers[l].dk_b != NULL, (cases[i].di & ET_DI_KEYS) != 0);
            ck_assert_int_eq(d->layers[l].dv_w != NULL, (cases[i].di & ET_DI_VALUES) != 0);
            ck_assert_int_eq(d->layers[l].dv_b != NULL, (cases[i].di & ET_DI_VALUES) != 0);
        }
        ds4sci_model_free(m);
    }
}
END_TEST

START_TEST(test_scalar_shape_one_accepted_and_ignored_tensors) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    /* the exporter keeps distance.box (ignored by the loader) */
    ck_assert_ptr_nonnull(
        cJSON_GetObjectItemCaseSensitive(p.header, "representation_model.distance.box"));
    cJSON *std = tensor_entry(&p, "std");
    cJSON *shape = cJSON_CreateArray();
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(1));
    cJSON_ReplaceItemInObjectCaseSensitive(std, "shape", shape);
    cJSON_DeleteItemFromObjectCaseSensitive(p.header, "mean"); /* absent: defaults to 0 */
    buffer b2 = pack(&p, NULL, 0);
    ds4sci_model *m = load_ok(&b2);
    ck_assert_double_eq(ds4sci_model_desc(m)->mean, 0.0);
    ck_assert_double_eq(ds4sci_model_desc(m)->std, file_f32(&p, "std", 0));
    ds4sci_model_free(m);
    free(b2.data);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_memory_load_names_and_api_edges) {
    buffer b = read_all(SMALL);
    ds4sci_model *m = load_ok(&b);
    ck_assert_str_eq(ds4sci_model_get_info(m)->path, "<memory>");
    ds4sci_model_free(m);
    ds4sci_model_free(NULL);
    char err[256];
    ck_assert_int_eq(ds4sci_model_load_memory(b.data, b.size, "x", NULL, err, sizeof err),
                     DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_model_load(NULL, &m, err, sizeof err), DS4SCI_ERR_ARG);
    ck_assert_ptr_null(m);
    /* NULL or tiny err buffers are fine */
    ck_assert_int_eq(ds4sci_model_load_memory(b.data, 100, "x", &m, NULL, 0), DS4SCI_ERR_FORMAT);
    char tiny[8];
    memset(tiny, 'z', sizeof tiny);
    ck_assert_int_eq(ds4sci_model_load_memory(b.data, 100, "x", &m, tiny, sizeof tiny),
                     DS4SCI_ERR_FORMAT);
    ck_assert_int_eq(tiny[7], '\0');
    ck_assert_ptr_null(ds4sci_model_get_info(NULL));
    ck_assert_int_eq(ds4sci_model_element_z(NULL, "H"), -1);
    free(b.data);
}
END_TEST

START_TEST(test_random_potential_matches_model_card) {
    /* potentials/random-et-HO.md: F64 L3 K16 H4, cutoff 4, vector_cutoff on, H and O, A/eV */
    ds4sci_model *m = NULL;
    char err[512];
    ck_assert_msg(ds4sci_model_load(DS4SCI_TEST_DATA "/../potentials/random-et-HO.safetensors", &m,
                                    err, sizeof err) == DS4SCI_OK,
                  "%s", err);
    const ds4sci_model_info *info = ds4sci_model_get_info(m);
    ck_assert_int_eq(info->hidden_channels, 64);
    ck_assert_int_eq(info->num_layers, 3);
    ck_assert_int_eq(info->num_rbf, 16);
    ck_assert_int_eq(info->num_heads, 4);
    ck_assert_double_eq(info->cutoff_upper, 4.0);
    ck_assert_double_eq(info->cutoff_lower, 0.0);
    ck_assert_int_eq(info->vector_cutoff, 1);
    ck_assert_ptr_null(info->warning);
    ck_assert_int_eq(info->n_elements, 2);
    ck_assert_int_eq(ds4sci_model_element_z(m, "H"), 1);
    ck_assert_int_eq(ds4sci_model_element_z(m, "O"), 8);
    ck_assert_str_eq(info->length_unit, "angstrom");
    ck_assert_str_eq(info->energy_unit, "eV");
    ck_assert_ptr_nonnull(strstr(info->description, "RANDOM WEIGHTS"));
    ds4sci_model_free(m);
}
END_TEST

/* ---- bad files ------------------------------------------------------------------------------ */

START_TEST(test_missing_file) {
    char err[512];
    ds4sci_model *m = (ds4sci_model *)0x1;
    ck_assert_int_eq(ds4sci_model_load(GOLDEN "no-such-model.safetensors", &m, err, sizeof err),
                     DS4SCI_ERR_IO);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(err, "no-such-model.safetensors: cannot open"));
    ck_assert_int_eq(ds4sci_model_load(GOLDEN, &m, err, sizeof err), DS4SCI_ERR_IO);
}
END_TEST

START_TEST(test_truncated_header) {
    buffer b = read_all(SMALL);
    b.size = 8 + header_len(&b) / 2;
    expect_refusal(b, DS4SCI_ERR_FORMAT, "header length", "truncated");
}
END_TEST

START_TEST(test_truncated_data) {
    buffer b = read_all(SMALL);
    b.size -= 100;
    expect_refusal(b, DS4SCI_ERR_FORMAT, "outside the data buffer", "truncated");
}
END_TEST

START_TEST(test_too_short) {
    buffer b = read_all(SMALL);
    b.size = 5;
    expect_refusal(b, DS4SCI_ERR_FORMAT, "too short", NULL);
}
END_TEST

START_TEST(test_huge_header_length) {
    buffer b = read_all(SMALL);
    memset(b.data, 0, 8);
    b.data[5] = 1; /* 2^40 bytes */
    expect_refusal(b, DS4SCI_ERR_FORMAT, "exceeds the limit", NULL);
}
END_TEST

START_TEST(test_wrong_dtype) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, V1), "dtype",
                                           cJSON_CreateString("I32"));
    buffer bad = pack(&p, NULL, 0);
    expect_refusal(bad, DS4SCI_ERR_FORMAT, "tensor " V1 ": dtype I32, expected F32 or F64", NULL);
    /* a dtype whose size does not match the bytes */
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, V1), "dtype",
                                           cJSON_CreateString("BF16"));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT,
                   "tensor " V1 ": 3072 elements of dtype BF16", NULL);
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, V1), "dtype", cJSON_CreateString("Q4"));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT, "unknown dtype \"Q4\"", NULL);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_wrong_shape) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    cJSON *shape = cJSON_CreateArray();
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(32));
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(96));
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, V1), "shape", shape);
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT,
                   "tensor " V1 ": shape [32,96], expected [96,32]", NULL);
    /* a scalar with the wrong rank */
    shape = cJSON_CreateArray();
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(1));
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(1));
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, "std"), "shape", shape);
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, V1), "shape",
                                           cJSON_CreateIntArray((const int[]){96, 32}, 2));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT,
                   "tensor std: shape [1,1], expected [] or [1]", NULL);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_missing_tensor) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    cJSON_DeleteItemFromObjectCaseSensitive(p.header, "representation_model.out_norm.bias");
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT,
                   "tensor representation_model.out_norm.bias: missing (expected shape [32]", NULL);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_bad_header_json) {
    buffer b = read_all(SMALL);
    memcpy(b.data + 8, "{\"a\": [1, 2", 11); /* the rest of the header is now garbage */
    expect_refusal(b, DS4SCI_ERR_FORMAT, "header is not valid JSON", NULL);
    b = read_all(SMALL);
    memcpy(b.data + 8, "[1]", 3);
    expect_refusal(b, DS4SCI_ERR_FORMAT, "does not start with '{'", NULL);
    b = read_all(SMALL);
    uint64_t last = 8 + header_len(&b) - 1;
    while (b.data[last] == ' ')
        last--;
    ck_assert_int_eq(b.data[last], '}');
    b.data[last] = ' '; /* drop the closing brace: JSON incomplete */
    expect_refusal(b, DS4SCI_ERR_FORMAT, "header is not valid JSON", NULL);
}
END_TEST

START_TEST(test_config_not_json_or_not_object) {
    static const struct {
        const char *config, *needle;
    } cases[] = {
        {"{\"model\": ", "ds4sci.config is not valid JSON"},
        {"[1, 2]", "ds4sci.config is an array, expected a JSON object"},
        {"\"text\"", "ds4sci.config is a string, expected a JSON object"},
    };
    buffer b = read_all(SMALL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parts p = split(&b);
        cJSON *meta = cJSON_GetObjectItemCaseSensitive(p.header, "__metadata__");
        cJSON_ReplaceItemInObjectCaseSensitive(meta, "ds4sci.config",
                                               cJSON_CreateString(cases[i].config));
        char *text = cJSON_PrintUnformatted(p.header); /* not pack(): it rewrites the config */
        expect_refusal(assemble(text, strlen(text), p.data, p.data_len), DS4SCI_ERR_FORMAT,
                       cases[i].needle, NULL);
        free(text);
        parts_free(&p);
    }
    free(b.data);
}
END_TEST

START_TEST(test_missing_config_key) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    cJSON_DeleteItemFromObjectCaseSensitive(p.config, "num_heads");
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT, "ds4sci.config: missing key \"num_heads\"",
                   NULL);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_not_a_ds4sci_file_or_newer_format) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(p.header, "__metadata__");
    cJSON_ReplaceItemInObjectCaseSensitive(meta, "ds4sci.format", cJSON_CreateString("2"));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_UNSUPPORTED, "ds4sci.format is \"2\"", NULL);
    cJSON_DeleteItemFromObjectCaseSensitive(meta, "ds4sci.format");
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT, "not a ds4sci model file", NULL);
    cJSON_AddItemToObject(meta, "ds4sci.format", cJSON_CreateNumber(1));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT, "__metadata__ value \"ds4sci.format\"",
                   "not a string");
    parts_free(&p);
    free(b.data);
}
END_TEST

/* Replace config key `key` by `value` and expect the given refusal. */
static void config_refusal(const char *key, cJSON *value, ds4sci_status status, const char *needle1,
                           const char *needle2) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    if (cJSON_GetObjectItemCaseSensitive(p.config, key))
        cJSON_ReplaceItemInObjectCaseSensitive(p.config, key, value);
    else
        cJSON_AddItemToObject(p.config, key, value);
    expect_refusal(pack(&p, NULL, 0), status, needle1, needle2);
    parts_free(&p);
    free(b.data);
}

START_TEST(test_unknown_option_values) {
    config_refusal("activation", cJSON_CreateString("gelu"), DS4SCI_ERR_UNSUPPORTED,
                   "\"activation\" is \"gelu\"", "ssp, silu, tanh, sigmoid, swish, mish");
    config_refusal("attn_activation", cJSON_CreateString("softmax"), DS4SCI_ERR_UNSUPPORTED,
                   "\"attn_activation\" is \"softmax\"", NULL);
    config_refusal("reduce_op", cJSON_CreateString("mean"), DS4SCI_ERR_UNSUPPORTED,
                   "\"reduce_op\" is \"mean\"", "add, sum");
    config_refusal("rbf_type", cJSON_CreateString("bessel"), DS4SCI_ERR_UNSUPPORTED,
                   "\"rbf_type\" is \"bessel\"", NULL);
    config_refusal("distance_influence", cJSON_CreateString("all"), DS4SCI_ERR_UNSUPPORTED,
                   "\"distance_influence\" is \"all\"", NULL);
    config_refusal("prior_model", cJSON_CreateString("ZBL"), DS4SCI_ERR_UNSUPPORTED,
                   "\"prior_model\" is \"ZBL\"", NULL);
    config_refusal("output_model", cJSON_CreateString("EquivariantDipoleMoment"),
                   DS4SCI_ERR_UNSUPPORTED, "\"output_model\"", NULL);
    config_refusal("model", cJSON_CreateString("tensornet"), DS4SCI_ERR_UNSUPPORTED,
                   "\"model\" is \"tensornet\"", NULL);
    config_refusal("layernorm_on_vec", cJSON_CreateString("whitened"), DS4SCI_ERR_UNSUPPORTED,
                   "unknown key \"layernorm_on_vec\"", NULL);
    config_refusal("units", cJSON_Parse("{\"length\": \"furlong\", \"energy\": \"eV\"}"),
                   DS4SCI_ERR_UNSUPPORTED, "\"length\" is \"furlong\"", NULL);
    config_refusal("num_heads", cJSON_CreateNumber(5), DS4SCI_ERR_FORMAT,
                   "num_heads 5 does not divide hidden_channels 32", NULL);
    config_refusal("num_layers", cJSON_CreateNumber(2.5), DS4SCI_ERR_FORMAT,
                   "\"num_layers\" is 2.5, expected an integer", NULL);
    config_refusal("hidden_channels", cJSON_CreateNumber(1e12), DS4SCI_ERR_FORMAT,
                   "\"hidden_channels\" is 1000000000000", NULL);
    config_refusal("vector_cutoff", cJSON_CreateNumber(1), DS4SCI_ERR_FORMAT,
                   "\"vector_cutoff\" is a number, expected true or false", NULL);
    config_refusal("cutoff_upper", cJSON_CreateNumber(-1), DS4SCI_ERR_FORMAT,
                   "expected 0 <= cutoff_lower < cutoff_upper", NULL);
    config_refusal("cutoff_lower", cJSON_CreateString("0"), DS4SCI_ERR_FORMAT,
                   "\"cutoff_lower\" is a string, expected a finite number", NULL);
    config_refusal("head_vector_norm_eps", cJSON_CreateNumber(-1e-3), DS4SCI_ERR_FORMAT,
                   "head_vector_norm_eps -0.001", "expected a number >= 0");
    config_refusal("head_vector_norm_eps", cJSON_CreateNumber(1e30), DS4SCI_ERR_FORMAT,
                   "head_vector_norm_eps 1e+30", "<= 1e18");
    config_refusal("head_vector_norm_eps", cJSON_CreateString("3e-3"), DS4SCI_ERR_FORMAT,
                   "\"head_vector_norm_eps\" is a string, expected a finite number", NULL);
    config_refusal("head_vector_norm_eps", cJSON_CreateNull(), DS4SCI_ERR_FORMAT,
                   "\"head_vector_norm_eps\" is null, expected a finite number", NULL);
}
END_TEST

/* The optional smoothed head norm: absent = 0 (TorchMD-Net's |u|); a value reaches the math. */
START_TEST(test_head_vector_norm_eps_read) {
    buffer b = read_all(SMALL);
    ds4sci_model *m = load_ok(&b);
    ck_assert(ds4sci_model_desc(m)->head_eps == 0.0);
    ck_assert(ds4sci_model_get_info(m)->head_vector_norm_eps == 0.0);
    ds4sci_model_free(m);
    parts p = split(&b);
    cJSON_AddItemToObject(p.config, "head_vector_norm_eps", cJSON_CreateNumber(0.0125));
    buffer b2 = pack(&p, NULL, 0);
    m = load_ok(&b2);
    ck_assert(ds4sci_model_desc(m)->head_eps == 0.0125);
    ck_assert(ds4sci_model_get_info(m)->head_vector_norm_eps == 0.0125);
    ds4sci_model_free(m);
    free(b2.data);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_config_disagrees_with_tensors) {
    /* sizes in the config are checked against every tensor */
    config_refusal("num_rbf", cJSON_CreateNumber(16), DS4SCI_ERR_FORMAT,
                   "tensor representation_model.distance_expansion.means: shape [8], expected "
                   "[16]",
                   NULL);
    config_refusal("num_layers", cJSON_CreateNumber(3), DS4SCI_ERR_FORMAT,
                   "tensor representation_model.attention_layers.2.layernorm.weight: missing",
                   NULL);
    config_refusal("num_layers", cJSON_CreateNumber(1), DS4SCI_ERR_FORMAT, "attention_layers.1.",
                   "unexpected");
    config_refusal("neighbor_embedding", cJSON_CreateFalse(), DS4SCI_ERR_FORMAT,
                   "tensor representation_model.neighbor_embedding.",
                   "neighbor_embedding is false");
    config_refusal("distance_influence", cJSON_CreateString("keys"), DS4SCI_ERR_FORMAT, ".dv_proj.",
                   "does not use values");
    config_refusal("max_z", cJSON_CreateNumber(90), DS4SCI_ERR_FORMAT,
                   "tensor representation_model.embedding.weight: shape [100,32], expected "
                   "[90,32]",
                   NULL);
}
END_TEST

START_TEST(test_unknown_tensor) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    add_f32_after_data(&p, "representation_model.attention_layers.0.gate.weight", 1);
    const float one = 1.0f;
    expect_refusal(pack(&p, &one, 4), DS4SCI_ERR_FORMAT,
                   "tensor representation_model.attention_layers.0.gate.weight: unexpected", NULL);
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_pre_021_checkpoint_refused) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    add_f32_after_data(&p, "representation_model.attention_layers.0.vec_proj.bias", 96);
    float zeros[96] = {0};
    expect_refusal(pack(&p, zeros, sizeof zeros), DS4SCI_ERR_UNSUPPORTED, "vec_proj.bias",
                   "before 0.2.1");
    parts_free(&p);
    free(b.data);
}
END_TEST

START_TEST(test_element_z_out_of_range) {
    config_refusal("elements", cJSON_Parse("{\"H\": 1, \"Og\": 118}"), DS4SCI_ERR_FORMAT,
                   "element Og has z = 118, expected an integer 0 <= z < max_z = 100", NULL);
    config_refusal("elements", cJSON_Parse("{\"H\": -1}"), DS4SCI_ERR_FORMAT,
                   "element H has z = -1", NULL);
    config_refusal("elements", cJSON_Parse("{}"), DS4SCI_ERR_FORMAT, "\"elements\" is empty", NULL);
    config_refusal("elements", cJSON_Parse("{\"H H\": 1}"), DS4SCI_ERR_FORMAT,
                   "element symbol \"H H\"", NULL);
}
END_TEST

START_TEST(test_overlap_duplicates_and_trailing_bytes) {
    buffer b = read_all(SMALL);
    parts p = split(&b);
    /* two tensors sharing bytes */
    cJSON *src = cJSON_GetObjectItemCaseSensitive(tensor_entry(&p, "representation_model.out_norm."
                                                                   "weight"),
                                                  "data_offsets");
    cJSON_ReplaceItemInObjectCaseSensitive(tensor_entry(&p, "representation_model.out_norm.bias"),
                                           "data_offsets", cJSON_Duplicate(src, 1));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT, "overlap in the data buffer", NULL);
    parts_free(&p);

    /* a key repeated in the header */
    p = split(&b);
    cJSON_AddItemToObject(p.header, "std", cJSON_Duplicate(tensor_entry(&p, "std"), 1));
    expect_refusal(pack(&p, NULL, 0), DS4SCI_ERR_FORMAT, "header key \"std\" repeated", NULL);
    parts_free(&p);

    /* a NaN weight */
    buffer nan_b = {malloc(b.size), b.size};
    memcpy(nan_b.data, b.data, b.size);
    p = split(&nan_b);
    int64_t begin = (int64_t)cJSON_GetArrayItem(
                        cJSON_GetObjectItemCaseSensitive(tensor_entry(&p, V1), "data_offsets"), 0)
                        ->valuedouble;
    float nan_f = NAN;
    memcpy((unsigned char *)p.data + begin + 4 * 7, &nan_f, 4);
    parts_free(&p);
    expect_refusal(nan_b, DS4SCI_ERR_FORMAT, "tensor " V1 ": element 7 is nan",
                   "expected finite weights");

    /* bytes after the JSON object inside the header */
    p = split(&b);
    char *text = cJSON_PrintUnformatted(p.header);
    size_t n = strlen(text);
    char *padded = malloc(n + 4);
    memcpy(padded, text, n);
    memcpy(padded + n, "  x ", 4);
    expect_refusal(assemble(padded, n + 4, p.data, p.data_len), DS4SCI_ERR_FORMAT,
                   "header has bytes after the JSON object", NULL);
    /* trailing spaces alone are allowed (safetensors pads headers with them) */
    memcpy(padded + n, "    ", 4);
    buffer ok = assemble(padded, n + 4, p.data, p.data_len);
    ds4sci_model_free(load_ok(&ok));
    free(ok.data);
    free(padded);
    free(text);
    parts_free(&p);
    free(b.data);
}
END_TEST

static Suite *model_file_suite(void) {
    Suite *s = suite_create("model_file");
    TCase *good = tcase_create("good");
    tcase_add_test(good, test_good_file_info_matches_golden_config);
    tcase_add_test(good, test_good_file_desc_complete_and_weights_equal_file_bytes);
    tcase_add_test(good, test_f64_file_gives_same_weights);
    tcase_add_test(good, test_atomref_std_mean_and_lower_cutoff);
    tcase_add_test(good, test_head_vector_norm_eps_read);
    tcase_add_test(good, test_vector_cutoff_off_loads_with_warning);
    tcase_add_test(good, test_gauss_without_neighbor_embedding);
    tcase_add_test(good, test_distance_influence_and_activations);
    tcase_add_test(good, test_scalar_shape_one_accepted_and_ignored_tensors);
    tcase_add_test(good, test_memory_load_names_and_api_edges);
    tcase_add_test(good, test_random_potential_matches_model_card);
    suite_add_tcase(s, good);

    TCase *bad = tcase_create("bad");
    tcase_add_test(bad, test_missing_file);
    tcase_add_test(bad, test_truncated_header);
    tcase_add_test(bad, test_truncated_data);
    tcase_add_test(bad, test_too_short);
    tcase_add_test(bad, test_huge_header_length);
    tcase_add_test(bad, test_wrong_dtype);
    tcase_add_test(bad, test_wrong_shape);
    tcase_add_test(bad, test_missing_tensor);
    tcase_add_test(bad, test_bad_header_json);
    tcase_add_test(bad, test_config_not_json_or_not_object);
    tcase_add_test(bad, test_missing_config_key);
    tcase_add_test(bad, test_not_a_ds4sci_file_or_newer_format);
    tcase_add_test(bad, test_unknown_option_values);
    tcase_add_test(bad, test_config_disagrees_with_tensors);
    tcase_add_test(bad, test_unknown_tensor);
    tcase_add_test(bad, test_pre_021_checkpoint_refused);
    tcase_add_test(bad, test_element_z_out_of_range);
    tcase_add_test(bad, test_overlap_duplicates_and_trailing_bytes);
    suite_add_tcase(s, bad);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(model_file_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
