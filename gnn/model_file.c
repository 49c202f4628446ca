/*
 * model_file.c - the ds4sci model-file loader: safetensors + "ds4sci.config" JSON metadata
 * -> a validated et_desc (every weight converted to float64). docs/model_format.md is the
 * format; this file is its judge. Every refusal names the file, the key or tensor, and what
 * was expected.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ds4sci.h"
#include "err.h"
#include "et_desc.h"
#include "model_internal.h"
#include "safetensors.h"

/* File format version this build reads (metadata "ds4sci.format"). */
#define MODEL_FORMAT_VERSION "1"

/* Sanity bounds on sizes, so that shape arithmetic cannot overflow. The real bound on what is
 * allocated is the file itself: every tensor must be present with its data. */
#define MAX_CHANNELS 65536
#define MAX_RBF 65536
#define MAX_LAYERS 4096
#define MAX_Z 65536
#define MAX_ELEMENT_SYMBOL 15

struct ds4sci_model {
    et_desc desc;
    ds4sci_model_info info;
    et_layer *layers; /* [L] */
    double *storage;  /* every used tensor, converted to float64 */
    char *path, *name, *description, *length_unit, *energy_unit;
    char **element_symbols; /* [n_elements] */
    int32_t *element_z;     /* [n_elements] */
};

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* ds4sci.config                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* The hyperparameters as read, before the tensors are matched against them. */
typedef struct model_config {
    int32_t F, L, K, H, max_z, max_num_neighbors;
    double cutoff_lower, cutoff_upper;
    double head_eps; /* head_vector_norm_eps (0: TorchMD-Net's plain norm) */
    et_act act, attn_act;
    et_rbf rbf;
    int32_t dist_influence, neighbor_embedding, vector_cutoff, trainable_rbf;
    int32_t prior_atomref, atomref_enable;
    const cJSON *elements, *units;
    const char *name, *description;
} model_config;

typedef struct cfg_ctx {
    const cJSON *cfg;
    const char *fname;
    char *err;
    size_t err_len;
} cfg_ctx;

static const char *json_type_name(const cJSON *item) {
    if (cJSON_IsNumber(item))
        return "a number";
    if (cJSON_IsString(item))
        return "a string";
    if (cJSON_IsBool(item))
        return "a boolean";
    if (cJSON_IsNull(item))
        return "null";
    if (cJSON_IsArray(item))
        return "an array";
    if (cJSON_IsObject(item))
        return "an object";
    return "invalid";
}

static const cJSON *cfg_get(const cfg_ctx *c, const char *key, const char *expected,
                            ds4sci_status *st) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(c->cfg, key);
    if (!item)
        *st = ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                          "%s: ds4sci.config: missing key \"%s\" (expected %s)", c->fname, key,
                          expected);
    return item;
}

static ds4sci_status cfg_int(const cfg_ctx *c, const char *key, int32_t lo, int32_t hi,
                             int32_t *out) {
    ds4sci_status st = DS4SCI_OK;
    char expected[64];
    snprintf(expected, sizeof expected, "an integer in [%d, %d]", lo, hi);
    const cJSON *item = cfg_get(c, key, expected, &st);
    if (!item)
        return st;
    if (!cJSON_IsNumber(item) || !(item->valuedouble >= lo && item->valuedouble <= hi) ||
        item->valuedouble != (double)(int32_t)item->valuedouble) {
        if (cJSON_IsNumber(item))
            return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                               "%s: ds4sci.config: \"%s\" is %.17g, expected %s", c->fname, key,
                               item->valuedouble, expected);
        return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"%s\" is %s, expected %s", c->fname, key,
                           json_type_name(item), expected);
    }
    *out = (int32_t)item->valuedouble;
    return DS4SCI_OK;
}

static ds4sci_status cfg_num(const cfg_ctx *c, const char *key, double *out) {
    ds4sci_status st = DS4SCI_OK;
    const cJSON *item = cfg_get(c, key, "a finite number", &st);
    if (!item)
        return st;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
        return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"%s\" is %s, expected a finite number", c->fname,
                           key, json_type_name(item));
    *out = item->valuedouble;
    return DS4SCI_OK;
}

static ds4sci_status cfg_bool(const cfg_ctx *c, const char *key, int32_t *out) {
    ds4sci_status st = DS4SCI_OK;
    const cJSON *item = cfg_get(c, key, "true or false", &st);
    if (!item)
        return st;
    if (!cJSON_IsBool(item))
        return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"%s\" is %s, expected true or false", c->fname, key,
                           json_type_name(item));
    *out = cJSON_IsTrue(item) ? 1 : 0;
    return DS4SCI_OK;
}

/* A string option with a closed set of values; a value outside the set is UNSUPPORTED. */
static ds4sci_status cfg_enum(const cfg_ctx *c, const char *key, const char *const *names,
                              const int32_t *values, int n, int32_t *out) {
    char expected[160] = "one of";
    for (int i = 0; i < n; i++) {
        strncat(expected, i ? ", " : " ", sizeof expected - strlen(expected) - 1);
        strncat(expected, names[i], sizeof expected - strlen(expected) - 1);
    }
    ds4sci_status st = DS4SCI_OK;
    const cJSON *item = cfg_get(c, key, expected, &st);
    if (!item)
        return st;
    if (!cJSON_IsString(item))
        return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"%s\" is %s, expected %s", c->fname, key,
                           json_type_name(item), expected);
    for (int i = 0; i < n; i++) {
        if (strcmp(item->valuestring, names[i]) == 0) {
            *out = values[i];
            return DS4SCI_OK;
        }
    }
    return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_UNSUPPORTED,
                       "%s: ds4sci.config: \"%s\" is \"%.64s\", this build supports %s", c->fname,
                       key, item->valuestring, expected);
}

static ds4sci_status cfg_opt_string(const cfg_ctx *c, const char *key, const char **out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(c->cfg, key);
    *out = "";
    if (!item)
        return DS4SCI_OK;
    if (!cJSON_IsString(item))
        return ds4sci_fail(c->err, c->err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"%s\" is %s, expected a string", c->fname, key,
                           json_type_name(item));
    *out = item->valuestring;
    return DS4SCI_OK;
}

static const char *const known_keys[] = {"model",
                                         "output_model",
                                         "hidden_channels",
                                         "num_layers",
                                         "num_rbf",
                                         "num_heads",
                                         "rbf_type",
                                         "trainable_rbf",
                                         "activation",
                                         "attn_activation",
                                         "neighbor_embedding",
                                         "distance_influence",
                                         "cutoff_lower",
                                         "cutoff_upper",
                                         "vector_cutoff",
                                         "head_vector_norm_eps",
                                         "max_z",
                                         "max_num_neighbors",
                                         "reduce_op",
                                         "prior_model",
                                         "atomref_enable",
                                         "elements",
                                         "units",
                                         "name",
                                         "description",
                                         "torchmdnet_version"};

static const char *const act_names[] = {"ssp", "silu", "tanh", "sigmoid", "swish", "mish"};
static const int32_t act_values[] = {ET_ACT_SSP,     ET_ACT_SILU, ET_ACT_TANH,
                                     ET_ACT_SIGMOID, ET_ACT_SILU, ET_ACT_MISH};

static ds4sci_status parse_config(const cJSON *cfg, const char *fname, model_config *mc, char *err,
                                  size_t err_len) {
    cfg_ctx c = {cfg, fname, err, err_len};
    ds4sci_status st;
    memset(mc, 0, sizeof *mc);

    const char *dup = NULL;
    if (ds4sci_json_has_duplicate_key(cfg, &dup))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: key \"%s\" repeated", fname, dup);
    for (const cJSON *k = cfg->child; k; k = k->next) {
        size_t i = 0, n = sizeof known_keys / sizeof known_keys[0];
        while (i < n && strcmp(k->string, known_keys[i]) != 0)
            i++;
        if (i == n)
            return ds4sci_fail(
                err, err_len, DS4SCI_ERR_UNSUPPORTED,
                "%s: ds4sci.config: unknown key \"%.64s\" (an option this build does not "
                "implement, or a newer format; see docs/model_format.md)",
                fname, k->string);
    }

    static const char *const model_names[] = {"equivariant-transformer"};
    static const char *const head_names[] = {"EquivariantScalar"};
    static const int32_t zero[] = {0};
    int32_t dummy;
    if ((st = cfg_enum(&c, "model", model_names, zero, 1, &dummy)) ||
        (st = cfg_enum(&c, "output_model", head_names, zero, 1, &dummy)))
        return st;

    if ((st = cfg_int(&c, "hidden_channels", 2, MAX_CHANNELS, &mc->F)) ||
        (st = cfg_int(&c, "num_layers", 1, MAX_LAYERS, &mc->L)) ||
        (st = cfg_int(&c, "num_rbf", 1, MAX_RBF, &mc->K)) ||
        (st = cfg_int(&c, "num_heads", 1, MAX_CHANNELS, &mc->H)) ||
        (st = cfg_int(&c, "max_z", 1, MAX_Z, &mc->max_z)))
        return st;
    if (mc->F % mc->H != 0)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: num_heads %d does not divide hidden_channels %d",
                           fname, mc->H, mc->F);
    mc->max_num_neighbors = 0;
    if (cJSON_GetObjectItemCaseSensitive(cfg, "max_num_neighbors") &&
        (st = cfg_int(&c, "max_num_neighbors", 1, INT32_MAX, &mc->max_num_neighbors)))
        return st;

    static const char *const rbf_names[] = {"expnorm", "gauss"};
    static const int32_t rbf_values[] = {ET_RBF_EXPNORM, ET_RBF_GAUSS};
    static const char *const di_names[] = {"both", "keys", "values", "none"};
    static const int32_t di_values[] = {ET_DI_KEYS | ET_DI_VALUES, ET_DI_KEYS, ET_DI_VALUES, 0};
    static const char *const reduce_names[] = {"add", "sum"};
    static const int32_t reduce_values[] = {0, 0};
    int32_t rbf = 0, act = 0, attn_act = 0; /* set by cfg_enum on success */
    if ((st = cfg_enum(&c, "rbf_type", rbf_names, rbf_values, 2, &rbf)) ||
        (st = cfg_enum(&c, "activation", act_names, act_values, 6, &act)) ||
        (st = cfg_enum(&c, "attn_activation", act_names, act_values, 6, &attn_act)) ||
        (st = cfg_enum(&c, "distance_influence", di_names, di_values, 4, &mc->dist_influence)) ||
        (st = cfg_enum(&c, "reduce_op", reduce_names, reduce_values, 2, &dummy)))
        return st;
    mc->rbf = (et_rbf)rbf;
    mc->act = (et_act)act;
    mc->attn_act = (et_act)attn_act;

    if ((st = cfg_bool(&c, "neighbor_embedding", &mc->neighbor_embedding)) ||
        (st = cfg_bool(&c, "vector_cutoff", &mc->vector_cutoff)))
        return st;
    mc->trainable_rbf = 0;
    if (cJSON_GetObjectItemCaseSensitive(cfg, "trainable_rbf") &&
        (st = cfg_bool(&c, "trainable_rbf", &mc->trainable_rbf)))
        return st;

    if ((st = cfg_num(&c, "cutoff_lower", &mc->cutoff_lower)) ||
        (st = cfg_num(&c, "cutoff_upper", &mc->cutoff_upper)))
        return st;
    if (!(mc->cutoff_lower >= 0.0 && mc->cutoff_upper > mc->cutoff_lower))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: cutoff_lower %.17g, cutoff_upper %.17g: expected "
                           "0 <= cutoff_lower < cutoff_upper",
                           fname, mc->cutoff_lower, mc->cutoff_upper);

    /* head_vector_norm_eps: optional, >= 0 (ds4sci's smoothed head norm; 0 = TorchMD-Net). */
    mc->head_eps = 0.0;
    if (cJSON_GetObjectItemCaseSensitive(cfg, "head_vector_norm_eps")) {
        if ((st = cfg_num(&c, "head_vector_norm_eps", &mc->head_eps)))
            return st;
        /* upper bound: eps^2 must stay finite in float32 (the CUDA head adds it to |u|^2) */
        if (!(mc->head_eps >= 0.0 && mc->head_eps <= 1e18))
            return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                               "%s: ds4sci.config: head_vector_norm_eps %.17g: expected a "
                               "number >= 0 and <= 1e18",
                               fname, mc->head_eps);
    }

    /* prior_model: null or "Atomref"; atomref_enable required with Atomref. */
    ds4sci_status st_missing = DS4SCI_OK;
    const cJSON *prior = cfg_get(&c, "prior_model", "null or \"Atomref\"", &st_missing);
    if (!prior)
        return st_missing;
    if (cJSON_IsNull(prior)) {
        mc->prior_atomref = 0;
    } else if (cJSON_IsString(prior) && strcmp(prior->valuestring, "Atomref") == 0) {
        mc->prior_atomref = 1;
    } else if (cJSON_IsString(prior)) {
        return ds4sci_fail(
            err, err_len, DS4SCI_ERR_UNSUPPORTED,
            "%s: ds4sci.config: \"prior_model\" is \"%.64s\", this build supports null "
            "or \"Atomref\"",
            fname, prior->valuestring);
    } else {
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"prior_model\" is %s, expected null or \"Atomref\"",
                           fname, json_type_name(prior));
    }
    mc->atomref_enable = 0;
    if (mc->prior_atomref) {
        if ((st = cfg_bool(&c, "atomref_enable", &mc->atomref_enable)))
            return st;
    } else if (cJSON_GetObjectItemCaseSensitive(cfg, "atomref_enable")) {
        if ((st = cfg_bool(&c, "atomref_enable", &mc->atomref_enable)))
            return st;
        if (mc->atomref_enable)
            return ds4sci_fail(
                err, err_len, DS4SCI_ERR_FORMAT,
                "%s: ds4sci.config: \"atomref_enable\" is true but \"prior_model\" is "
                "null",
                fname);
    }

    /* elements: {"H": 1, ...}, at least one, 0 <= z < max_z, symbols short and plain */
    mc->elements = cfg_get(&c, "elements", "an object {\"H\": 1, ...}", &st_missing);
    if (!mc->elements)
        return st_missing;
    if (!cJSON_IsObject(mc->elements) || !mc->elements->child)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"elements\" is %s, expected a non-empty object "
                           "{\"H\": 1, ...}",
                           fname,
                           cJSON_IsObject(mc->elements) ? "empty" : json_type_name(mc->elements));
    if (ds4sci_json_has_duplicate_key(mc->elements, &dup))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: element \"%s\" repeated", fname, dup);
    for (const cJSON *e = mc->elements->child; e; e = e->next) {
        size_t len = strlen(e->string);
        int ok = len >= 1 && len <= MAX_ELEMENT_SYMBOL;
        for (size_t i = 0; ok && i < len; i++) {
            char ch = e->string[i];
            ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                 ch == '_' || ch == '-' || ch == '+';
        }
        if (!ok)
            return ds4sci_fail(
                err, err_len, DS4SCI_ERR_FORMAT,
                "%s: ds4sci.config: element symbol \"%.32s\": expected 1-%d characters "
                "from A-Z a-z 0-9 _ - +",
                fname, e->string, MAX_ELEMENT_SYMBOL);
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < mc->max_z) ||
            e->valuedouble != (double)(int32_t)e->valuedouble) {
            if (cJSON_IsNumber(e))
                return ds4sci_fail(
                    err, err_len, DS4SCI_ERR_FORMAT,
                    "%s: ds4sci.config: element %s has z = %.17g, expected an integer "
                    "0 <= z < max_z = %d",
                    fname, e->string, e->valuedouble, mc->max_z);
            return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                               "%s: ds4sci.config: element %s is %s, expected an integer z (its "
                               "embedding row)",
                               fname, e->string, json_type_name(e));
        }
    }

    /* units */
    mc->units = cfg_get(&c, "units", "an object {\"length\": ..., \"energy\": ...}", &st_missing);
    if (!mc->units)
        return st_missing;
    if (!cJSON_IsObject(mc->units))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: ds4sci.config: \"units\" is %s, expected an object {\"length\": "
                           "\"angstrom\", \"energy\": \"eV\"}",
                           fname, json_type_name(mc->units));
    static const char *const length_units[] = {"angstrom", "nm", "bohr"};
    static const char *const energy_units[] = {"eV", "kcal/mol", "kJ/mol", "hartree"};
    static const int32_t idx[] = {0, 1, 2, 3};
    cfg_ctx cu = {mc->units, fname, err, err_len};
    for (const cJSON *k = mc->units->child; k; k = k->next)
        if (strcmp(k->string, "length") != 0 && strcmp(k->string, "energy") != 0)
            return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                               "%s: ds4sci.config: units: unknown key \"%.64s\" (expected length, "
                               "energy)",
                               fname, k->string);
    if ((st = cfg_enum(&cu, "length", length_units, idx, 3, &dummy)) ||
        (st = cfg_enum(&cu, "energy", energy_units, idx, 4, &dummy)))
        return st;

    if ((st = cfg_opt_string(&c, "name", &mc->name)) ||
        (st = cfg_opt_string(&c, "description", &mc->description)))
        return st;
    const char *ver;
    if ((st = cfg_opt_string(&c, "torchmdnet_version", &ver)))
        return st;
    return DS4SCI_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Tensors                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* One tensor the config calls for. */
typedef struct want {
    char name[128];
    int32_t ndim; /* -1: a scalar, stored as [] or [1] */
    int64_t shape[2];
    int32_t optional;   /* std, mean: default when absent */
    const double **dst; /* where the converted array's pointer goes, or */
    double *dst_scalar; /* where a scalar's value goes */
} want;

typedef struct want_list {
    want *items;
    int32_t n, cap;
} want_list;

static int want_add(want_list *w, const char *name, int32_t ndim, int64_t d0, int64_t d1,
                    const double **dst) {
    if (w->n == w->cap) {
        int32_t cap = w->cap ? 2 * w->cap : 64;
        want *items = realloc(w->items, (size_t)cap * sizeof *items);
        if (!items)
            return -1;
        w->items = items;
        w->cap = cap;
    }
    want *it = &w->items[w->n++];
    memset(it, 0, sizeof *it);
    snprintf(it->name, sizeof it->name, "%s", name);
    it->ndim = ndim;
    it->shape[0] = d0;
    it->shape[1] = d1;
    it->dst = dst;
    return 0;
}

static int want_scalar(want_list *w, const char *name, int32_t optional, double *dst) {
    if (want_add(w, name, -1, 0, 0, NULL) != 0)
        return -1;
    w->items[w->n - 1].optional = optional;
    w->items[w->n - 1].dst_scalar = dst;
    return 0;
}

static void shape_str(char *buf, size_t len, int32_t ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int32_t i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Every tensor the config implies, in a stable order, with its destination in m->desc. */
static int build_wants(ds4sci_model *m, const model_config *mc, want_list *w) {
    et_desc *d = &m->desc;
    const int64_t F = mc->F, K = mc->K, Z = mc->max_z, F2 = mc->F / 2;
    char name[128];
    const char *rm = "representation_model.";
    int r = 0;
#define W1(suffix, n0, dst)                                                                        \
    (snprintf(name, sizeof name, "%s%s", rm, suffix), want_add(w, name, 1, n0, 0, dst))
#define W2(suffix, n0, n1, dst)                                                                    \
    (snprintf(name, sizeof name, "%s%s", rm, suffix), want_add(w, name, 2, n0, n1, dst))

    r |= want_scalar(w, "std", 1, &d->std);
    r |= want_scalar(w, "mean", 1, &d->mean);
    r |= W2("embedding.weight", Z, F, &d->emb);
    if (mc->rbf == ET_RBF_EXPNORM) {
        r |= W1("distance_expansion.means", K, &d->rbf_means);
        r |= W1("distance_expansion.betas", K, &d->rbf_betas);
    } else {
        r |= W1("distance_expansion.offset", K, &d->rbf_offset);
        r |= want_scalar(w, "representation_model.distance_expansion.coeff", 0, &d->rbf_coeff);
    }
    if (mc->neighbor_embedding) {
        r |= W2("neighbor_embedding.embedding.weight", Z, F, &d->ne_emb);
        r |= W2("neighbor_embedding.distance_proj.weight", F, K, &d->ne_dp_w);
        r |= W1("neighbor_embedding.distance_proj.bias", F, &d->ne_dp_b);
        r |= W2("neighbor_embedding.combine.weight", F, 2 * F, &d->ne_comb_w);
        r |= W1("neighbor_embedding.combine.bias", F, &d->ne_comb_b);
    }
    for (int32_t l = 0; l < mc->L; l++) {
        et_layer *ly = &m->layers[l];
        char p[96];
#define LW1(s, n0, dst) (snprintf(p, sizeof p, "attention_layers.%d.%s", l, s), W1(p, n0, dst))
#define LW2(s, n0, n1, dst)                                                                        \
    (snprintf(p, sizeof p, "attention_layers.%d.%s", l, s), W2(p, n0, n1, dst))
        r |= LW1("layernorm.weight", F, &ly->ln_w);
        r |= LW1("layernorm.bias", F, &ly->ln_b);
        r |= LW2("q_proj.weight", F, F, &ly->q_w);
        r |= LW1("q_proj.bias", F, &ly->q_b);
        r |= LW2("k_proj.weight", F, F, &ly->k_w);
        r |= LW1("k_proj.bias", F, &ly->k_b);
        r |= LW2("v_proj.weight", 3 * F, F, &ly->v_w);
        r |= LW1("v_proj.bias", 3 * F, &ly->v_b);
        r |= LW2("o_proj.weight", 3 * F, F, &ly->o_w);
        r |= LW1("o_proj.bias", 3 * F, &ly->o_b);
        r |= LW2("vec_proj.weight", 3 * F, F, &ly->vec_w);
        if (mc->dist_influence & ET_DI_KEYS) {
            r |= LW2("dk_proj.weight", F, K, &ly->dk_w);
            r |= LW1("dk_proj.bias", F, &ly->dk_b);
        }
        if (mc->dist_influence & ET_DI_VALUES) {
            r |= LW2("dv_proj.weight", 3 * F, K, &ly->dv_w);
            r |= LW1("dv_proj.bias", 3 * F, &ly->dv_b);
        }
#undef LW1
#undef LW2
    }
    r |= W1("out_norm.weight", F, &d->out_norm_w);
    r |= W1("out_norm.bias", F, &d->out_norm_b);
#undef W1
#undef W2
    for (int b = 0; b < 2; b++) {
        et_geb *g = &d->head[b];
        const int64_t in = b == 0 ? F : F2, out = b == 0 ? F2 : 1;
        char p[128];
#define HW(s, n0, n1, nd, dst)                                                                     \
    (snprintf(p, sizeof p, "output_model.output_network.%d.%s", b, s),                             \
     want_add(w, p, nd, n0, n1, dst))
        r |= HW("vec1_proj.weight", in, in, 2, &g->vec1_w);
        r |= HW("vec2_proj.weight", out, in, 2, &g->vec2_w);
        r |= HW("update_net.layers.0.weight", in, 2 * in, 2, &g->up0_w);
        r |= HW("update_net.layers.0.bias", in, 0, 1, &g->up0_b);
        r |= HW("update_net.layers.2.weight", 2 * out, in, 2, &g->up2_w);
        r |= HW("update_net.layers.2.bias", 2 * out, 0, 1, &g->up2_b);
#undef HW
    }
    if (mc->atomref_enable)
        r |= want_add(w, "prior_model.0.atomref.weight", 2, Z, 1, &d->atomref);
    return r;
}

/* Tensors a file may carry that the math does not use. */
static int ignored_tensor(const char *name, const model_config *mc) {
    if (strcmp(name, "representation_model.distance.box") == 0 ||
        strcmp(name, "prior_model.0.initial_atomref") == 0)
        return 1;
    /* an Atomref prior that is present but not enabled */
    return mc->prior_atomref && !mc->atomref_enable &&
           strcmp(name, "prior_model.0.atomref.weight") == 0;
}

/* Why an unexpected tensor is unexpected, when the config explains it. */
static const char *unknown_tensor_hint(const char *name, const model_config *mc) {
    if (strstr(name, "neighbor_embedding.") && !mc->neighbor_embedding)
        return " (neighbor_embedding is false in ds4sci.config)";
    if (strstr(name, ".dk_proj.") && !(mc->dist_influence & ET_DI_KEYS))
        return " (distance_influence in ds4sci.config does not use keys)";
    if (strstr(name, ".dv_proj.") && !(mc->dist_influence & ET_DI_VALUES))
        return " (distance_influence in ds4sci.config does not use values)";
    if (strstr(name, "distance_expansion."))
        return mc->rbf == ET_RBF_EXPNORM ? " (rbf_type is expnorm in ds4sci.config)"
                                         : " (rbf_type is gauss in ds4sci.config)";
    if (strncmp(name, "prior_model.", 12) == 0)
        return " (prior_model in ds4sci.config is null)";
    if (strstr(name, "attention_layers."))
        return " (more attention layers than num_layers in ds4sci.config?)";
    return " (not part of an ET model with this config)";
}

/* A tensor from before TorchMD-Net 0.2.1, whose math (vector biases) this build does not run. */
static int pre_021_tensor(const char *name) {
    size_t n = strlen(name);
    static const char *const suffixes[] = {".vec_proj.bias", ".vec1_proj.bias", ".vec2_proj.bias"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t k = strlen(suffixes[i]);
        if (n >= k && strcmp(name + n - k, suffixes[i]) == 0)
            return 1;
    }
    return 0;
}

static ds4sci_status load_tensors(ds4sci_model *m, const model_config *mc, ds4sci_st_file *sf,
                                  const char *fname, char *err, size_t err_len) {
    for (int32_t i = 0; i < sf->n_tensors; i++)
        if (pre_021_tensor(sf->tensors[i].name))
            return ds4sci_fail(
                err, err_len, DS4SCI_ERR_UNSUPPORTED,
                "%s: tensor %s: a bias on vector features means a TorchMD-Net model from "
                "before 0.2.1 (2022), whose ET math this build does not implement; "
                "retrain with TorchMD-Net >= 0.2.1",
                fname, sf->tensors[i].name);

    want_list w = {0};
    if (build_wants(m, mc, &w) != 0) {
        free(w.items);
        return ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM, "%s: out of memory", fname);
    }

    /* Check everything before converting anything. */
    ds4sci_status st = DS4SCI_OK;
    int64_t total = 0;
    char got[160], expect[64];
    for (int32_t i = 0; i < w.n && st == DS4SCI_OK; i++) {
        want *it = &w.items[i];
        ds4sci_st_tensor *t = ds4sci_st_find(sf, it->name);
        if (!t) {
            if (it->optional)
                continue;
            if (it->ndim < 0)
                snprintf(expect, sizeof expect, "[] or [1]");
            else
                shape_str(expect, sizeof expect, it->ndim, it->shape);
            st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                             "%s: tensor %s: missing (expected shape %s, dtype F32 or F64)", fname,
                             it->name, expect);
            break;
        }
        t->used = 1;
        if (strcmp(t->dtype, "F32") != 0 && strcmp(t->dtype, "F64") != 0) {
            st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                             "%s: tensor %s: dtype %s, expected F32 or F64", fname, it->name,
                             t->dtype);
            break;
        }
        shape_str(got, sizeof got, t->ndim, t->shape);
        if (it->ndim < 0) {
            if (!(t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1)))
                st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                 "%s: tensor %s: shape %s, expected [] or [1]", fname, it->name,
                                 got);
            continue;
        }
        int ok = t->ndim == it->ndim;
        for (int32_t k = 0; ok && k < it->ndim; k++)
            ok = t->shape[k] == it->shape[k];
        if (!ok) {
            shape_str(expect, sizeof expect, it->ndim, it->shape);
            st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                             "%s: tensor %s: shape %s, expected %s", fname, it->name, got, expect);
            break;
        }
        total += t->numel;
    }
    for (int32_t i = 0; i < sf->n_tensors && st == DS4SCI_OK; i++) {
        const ds4sci_st_tensor *t = &sf->tensors[i];
        if (!t->used && !ignored_tensor(t->name, mc))
            st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT, "%s: tensor %s: unexpected%s", fname,
                             t->name, unknown_tensor_hint(t->name, mc));
    }
    if (st == DS4SCI_OK && total > 0) {
        m->storage = malloc((size_t)total * sizeof(double));
        if (!m->storage)
            st = ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM,
                             "%s: out of memory for %lld float64 weights", fname, (long long)total);
    }

    /* Convert. Scalars default to std = 1, mean = 0 when absent (set by the caller). */
    double *next = m->storage;
    for (int32_t i = 0; i < w.n && st == DS4SCI_OK; i++) {
        want *it = &w.items[i];
        const ds4sci_st_tensor *t = ds4sci_st_find(sf, it->name);
        if (!t)
            continue;
        if (it->ndim < 0) {
            double v;
            ds4sci_st_to_f64(t, &v);
            if (!isfinite(v))
                st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                 "%s: tensor %s: value %g, expected "
                                 "a finite number",
                                 fname, it->name, v);
            *it->dst_scalar = v;
            continue;
        }
        ds4sci_st_to_f64(t, next);
        for (int64_t k = 0; k < t->numel; k++) {
            if (!isfinite(next[k])) {
                st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                 "%s: tensor %s: element %lld is %g, expected finite weights",
                                 fname, it->name, (long long)k, next[k]);
                break;
            }
        }
        *it->dst = next;
        next += t->numel;
    }
    free(w.items);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Public API                                                                                  */
/* ------------------------------------------------------------------------------------------ */

void ds4sci_model_free(ds4sci_model *model) {
    if (!model)
        return;
    for (int32_t i = 0; i < model->info.n_elements; i++)
        free(model->element_symbols[i]);
    free(model->element_symbols);
    free(model->element_z);
    free(model->layers);
    free(model->storage);
    free(model->path);
    free(model->name);
    free(model->description);
    free(model->length_unit);
    free(model->energy_unit);
    free(model);
}

static ds4sci_status fill_info(ds4sci_model *m, const model_config *mc, const char *info_path,
                               const char *fname, char *err, size_t err_len) {
    ds4sci_model_info *info = &m->info;
    const cJSON *len = cJSON_GetObjectItemCaseSensitive(mc->units, "length");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(mc->units, "energy");
    m->path = dup_str(info_path);
    m->name = dup_str(mc->name);
    m->description = dup_str(mc->description);
    m->length_unit = dup_str(len->valuestring);
    m->energy_unit = dup_str(en->valuestring);
    int32_t n = cJSON_GetArraySize(mc->elements);
    m->element_symbols = calloc((size_t)n, sizeof *m->element_symbols);
    m->element_z = calloc((size_t)n, sizeof *m->element_z);
    if (!m->path || !m->name || !m->description || !m->length_unit || !m->energy_unit ||
        !m->element_symbols || !m->element_z)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM, "%s: out of memory", fname);
    for (const cJSON *e = mc->elements->child; e; e = e->next) {
        int32_t i = info->n_elements;
        m->element_symbols[i] = dup_str(e->string);
        if (!m->element_symbols[i])
            return ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM, "%s: out of memory", fname);
        m->element_z[i] = (int32_t)e->valuedouble;
        info->n_elements++;
    }
    info->path = m->path;
    info->name = m->name;
    info->description = m->description;
    info->length_unit = m->length_unit;
    info->energy_unit = m->energy_unit;
    info->cutoff_lower = mc->cutoff_lower;
    info->cutoff_upper = mc->cutoff_upper;
    info->energy_shift = m->desc.mean;
    info->element_symbols = (const char *const *)m->element_symbols;
    info->element_z = m->element_z;
    info->max_z = mc->max_z;
    info->hidden_channels = mc->F;
    info->num_layers = mc->L;
    info->num_rbf = mc->K;
    info->num_heads = mc->H;
    info->vector_cutoff = mc->vector_cutoff;
    info->head_vector_norm_eps = mc->head_eps;
    info->warning = NULL;
    if (!mc->vector_cutoff)
        info->warning =
            mc->cutoff_lower > 0.0
                ? "energy is not continuous at the cutoff: vector_cutoff is off, so vector "
                  "messages do not vanish at cutoff_upper nor at cutoff_lower (jumps of ~0.1 "
                  "energy units seen); expect energy drift in MD"
                : "energy is not continuous at the cutoff: vector_cutoff is off, so vector "
                  "messages do not vanish at cutoff_upper (jumps of ~0.1 energy units seen); "
                  "expect energy drift in MD";
    return DS4SCI_OK;
}

static ds4sci_status load_buffer(const unsigned char *buf, size_t size, const char *fname,
                                 const char *info_path, ds4sci_model **out, char *err,
                                 size_t err_len) {
    ds4sci_st_file sf;
    ds4sci_status st = ds4sci_st_parse(buf, size, fname, &sf, err, err_len);
    if (st != DS4SCI_OK)
        return st;

    cJSON *cfg = NULL;
    ds4sci_model *m = NULL;
    const cJSON *fmt =
        sf.metadata ? cJSON_GetObjectItemCaseSensitive(sf.metadata, "ds4sci.format") : NULL;
    const cJSON *cfg_text =
        sf.metadata ? cJSON_GetObjectItemCaseSensitive(sf.metadata, "ds4sci.config") : NULL;
    model_config mc;
    if (!fmt) {
        st = ds4sci_fail(
            err, err_len, DS4SCI_ERR_FORMAT,
            "%s: not a ds4sci model file: __metadata__ has no \"ds4sci.format\" (convert "
            "TorchMD-Net checkpoints with tools/export_torchmdnet.py)",
            fname);
        goto done;
    }
    if (strcmp(fmt->valuestring, MODEL_FORMAT_VERSION) != 0) {
        st = ds4sci_fail(err, err_len, DS4SCI_ERR_UNSUPPORTED,
                         "%s: ds4sci.format is \"%.16s\", this build reads format \"%s\"", fname,
                         fmt->valuestring, MODEL_FORMAT_VERSION);
        goto done;
    }
    if (!cfg_text) {
        st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                         "%s: __metadata__ has no \"ds4sci.config\" (the hyperparameters)", fname);
        goto done;
    }
    const char *cfg_end = NULL;
    cfg = cJSON_ParseWithOpts(cfg_text->valuestring, &cfg_end, 1);
    if (!cfg) {
        st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                         "%s: ds4sci.config is not valid JSON (error near character %ld)", fname,
                         cfg_end ? (long)(cfg_end - cfg_text->valuestring) : -1L);
        goto done;
    }
    if (!cJSON_IsObject(cfg)) {
        st = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                         "%s: ds4sci.config is %s, expected a JSON object", fname,
                         json_type_name(cfg));
        goto done;
    }
    if ((st = parse_config(cfg, fname, &mc, err, err_len)) != DS4SCI_OK)
        goto done;

    m = calloc(1, sizeof *m);
    if (m)
        m->layers = calloc((size_t)mc.L, sizeof *m->layers);
    if (!m || !m->layers) {
        st = ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM, "%s: out of memory", fname);
        goto done;
    }
    et_desc *d = &m->desc;
    d->F = mc.F;
    d->H = mc.H;
    d->D = mc.F / mc.H;
    d->K = mc.K;
    d->L = mc.L;
    d->max_z = mc.max_z;
    d->act = mc.act;
    d->attn_act = mc.attn_act;
    d->rbf = mc.rbf;
    d->dist_influence = mc.dist_influence;
    d->neighbor_embedding = mc.neighbor_embedding;
    d->vector_cutoff = mc.vector_cutoff;
    d->cutoff_lower = mc.cutoff_lower;
    d->cutoff_upper = mc.cutoff_upper;
    d->alpha = 5.0 / (mc.cutoff_upper - mc.cutoff_lower);
    d->layers = m->layers;
    d->head[0].in = mc.F;
    d->head[0].out = mc.F / 2;
    d->head[0].scalar_activation = 1;
    d->head[1].in = mc.F / 2;
    d->head[1].out = 1;
    d->head[1].scalar_activation = 0;
    d->head_eps = mc.head_eps;
    d->std = 1.0;
    d->mean = 0.0;
    d->atomref_enable = mc.atomref_enable;
    if ((st = load_tensors(m, &mc, &sf, fname, err, err_len)) != DS4SCI_OK)
        goto done;
    st = fill_info(m, &mc, info_path, fname, err, err_len);

done:
    cJSON_Delete(cfg);
    ds4sci_st_free(&sf);
    if (st != DS4SCI_OK) {
        ds4sci_model_free(m);
        m = NULL;
    }
    *out = m;
    return st;
}

ds4sci_status ds4sci_model_load_memory(const void *data, size_t size, const char *name,
                                       ds4sci_model **model, char *err, size_t err_len) {
    if (err && err_len > 0)
        err[0] = '\0';
    if (!model)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_model_load_memory: model is NULL");
    *model = NULL;
    if (!data && size > 0)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_model_load_memory: data is NULL");
    return load_buffer(data, size, name ? name : "<memory>", "<memory>", model, err, err_len);
}

ds4sci_status ds4sci_model_load(const char *path, ds4sci_model **model, char *err, size_t err_len) {
    if (err && err_len > 0)
        err[0] = '\0';
    if (!model)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_model_load: model is NULL");
    *model = NULL;
    if (!path)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_model_load: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_IO, "%s: cannot open: %s", path,
                           strerror(errno));
    /* Read whole, growing the buffer: works for pipes and needs no size query. */
    size_t cap = 1 << 20, size = 0;
    unsigned char *buf = malloc(cap);
    ds4sci_status st = DS4SCI_OK;
    while (buf) {
        size += fread(buf + size, 1, cap - size, f);
        if (size < cap)
            break;
        unsigned char *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (!buf)
        st =
            ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM, "%s: out of memory reading the file", path);
    else if (ferror(f))
        st = ds4sci_fail(err, err_len, DS4SCI_ERR_IO, "%s: read error after %zu bytes", path, size);
    fclose(f);
    if (st == DS4SCI_OK)
        st = load_buffer(buf, size, path, path, model, err, err_len);
    free(buf);
    return st;
}

const ds4sci_model_info *ds4sci_model_get_info(const ds4sci_model *model) {
    return model ? &model->info : NULL;
}

const et_desc *ds4sci_model_desc(const ds4sci_model *model) {
    return model ? &model->desc : NULL;
}

int32_t ds4sci_model_element_z(const ds4sci_model *model, const char *symbol) {
    if (!model || !symbol)
        return -1;
    for (int32_t i = 0; i < model->info.n_elements; i++)
        if (strcmp(model->element_symbols[i], symbol) == 0)
            return model->element_z[i];
    return -1;
}
