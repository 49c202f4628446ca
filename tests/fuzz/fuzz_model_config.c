/*
 * fuzz_model_config.c - libFuzzer target for the ds4sci.config half of the loader. The input is
 * the config JSON text; it is put into a valid tiny model file (DS4SCI_FUZZ_SEED, from
 * tests/fuzz/corpus) in place of that file's config, so mutations reach the config parser and
 * the matching of tensors against hyperparameters instead of dying in the outer header (the
 * config is an escaped string there, which byte-level mutation rarely keeps valid).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ds4sci.h"

static cJSON *seed_header;
static unsigned char *seed_data;
static size_t seed_data_len;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    FILE *f = fopen(DS4SCI_FUZZ_SEED, "rb");
    if (!f)
        abort();
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (n < 8 || hlen > n - 8)
        abort();
    seed_header = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!seed_header)
        abort();
    seed_data_len = n - 8 - (size_t)hlen;
    seed_data = malloc(seed_data_len ? seed_data_len : 1);
    memcpy(seed_data, buf + 8 + hlen, seed_data_len);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *cfg = malloc(size + 1);
    memcpy(cfg, data, size);
    cfg[size] = '\0';
    cJSON *h = cJSON_Duplicate(seed_header, 1);
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(h, "__metadata__");
    cJSON_ReplaceItemInObjectCaseSensitive(meta, "ds4sci.config", cJSON_CreateString(cfg));
    char *text = cJSON_PrintUnformatted(h);
    size_t hlen = strlen(text), total = 8 + hlen + seed_data_len;
    unsigned char *file = malloc(total);
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(file + 8, text, hlen);
    memcpy(file + 8 + hlen, seed_data, seed_data_len);

    ds4sci_model *m = NULL;
    char err[512];
    ds4sci_status st = ds4sci_model_load_memory(file, total, "fuzz", &m, err, sizeof err);
    if (st == DS4SCI_OK) {
        const ds4sci_model_info *info = ds4sci_model_get_info(m);
        for (int32_t i = 0; i < info->n_elements; i++)
            if (ds4sci_model_element_z(m, info->element_symbols[i]) != info->element_z[i] &&
                ds4sci_model_element_z(m, info->element_symbols[i]) < 0)
                abort();
        ds4sci_model_free(m);
    } else if (m != NULL || strncmp(err, "fuzz: ", 6) != 0) {
        abort();
    }
    free(file);
    cJSON_free(text);
    cJSON_Delete(h);
    free(cfg);
    return 0;
}
