/*
 * bench_gpu.c - throughput and memory of the CUDA backend on the reference model.
 *
 *   bench_gpu MODEL.safetensors [steps] [n_atoms ...]
 *
 * For each size: a simple-cubic lattice with +-0.3 A noise at 0.1 atoms/A^3 (about 52
 * neighbours within 5 A), periodic, elements drawn from the model's list, neighbour list and
 * periodic ghosts from ds4sci_graph_build (built-in exchange). Two warm-up calls, then `steps`
 * timed calls of ds4sci_compute (energy, forces, virial; each call returns with the results on
 * the host). Prints the median seconds per step, atom-steps/s, the peak device memory in use
 * per atom, and the per-stage mean milliseconds that the backend's opt-in profile
 * (DS4SCI_CUDA_PROFILE) records. A size that does not fit prints the backend's message.
 * Uses only the public API; without a CUDA device it says so and exits 0.
 *
 * BENCH_SAME_NBR=1: every call after the first promises the same neighbour candidates
 * (ds4sci_ctx_same_neighbors; true here: the positions do not change), as an MD engine does
 * between two neighbour-list builds (LAMMPS's plugin does), so that the backend keeps its copy
 * of the candidates instead of reading them again: the step of an MD run between rebuilds.
 * Without it (default) every call reads the candidate list anew (a rebuild every step).
 *
 * BENCH_ORDER=morton: the atoms in the Morton (Z-order) order of their lattice cells instead of
 * the lattice's row order (x slowest, z fastest): neighbours close in memory, as a code that
 * sorts its atoms along a space-filling curve would hand them over (LAMMPS sorts by bins in row
 * order); the same positions and elements, so the same energy up to summation order.
 *
 * The profile records CUDA events between the stages of every call not in graph mode (and
 * reads the device memory after each call): BENCH_PROFILE=0 leaves it off, for timings
 * without that overhead (graph mode vs the normal launches, DS4SCI_CUDA_GRAPH); then no peak
 * memory and no per-stage line are printed.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds4sci.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the bits of v spread to every third position (v < 2^21) */
static uint64_t spread3(uint64_t v)
{
    uint64_t r = 0;
    for (int b = 0; b < 21; b++)
        r |= ((v >> b) & 1u) << (3 * b);
    return r;
}

typedef struct {
    uint64_t key;
    int64_t i;
} key_index;

static int cmp_key(const void *a, const void *b)
{
    const key_index *x = a, *y = b;
    return (x->key > y->key) - (x->key < y->key);
}

/* Reorder pos / z (n atoms of an m^3 lattice, cell (ix, iy, iz) at i = (ix m + iy) m + iz) by
   the Morton code of the cells. Returns 0, or -1 when out of memory. */
static int morton_order(double *pos, int32_t *z, int n, int m)
{
    key_index *k = malloc(sizeof(*k) * (size_t)n);
    double *p2 = malloc(sizeof(double) * 3 * (size_t)n);
    int32_t *z2 = malloc(sizeof(int32_t) * (size_t)n);
    if (!k || !p2 || !z2) {
        free(k), free(p2), free(z2);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        const uint64_t ix = (uint64_t)(i / ((int64_t)m * m)), iy = (uint64_t)(i / m % m),
                       iz = (uint64_t)(i % m);
        k[i].key = spread3(ix) << 2 | spread3(iy) << 1 | spread3(iz);
        k[i].i = i;
    }
    qsort(k, (size_t)n, sizeof(*k), cmp_key);
    for (int64_t j = 0; j < n; j++) {
        memcpy(p2 + 3 * j, pos + 3 * k[j].i, 3 * sizeof(double));
        z2[j] = z[k[j].i];
    }
    memcpy(pos, p2, sizeof(double) * 3 * (size_t)n);
    memcpy(z, z2, sizeof(int32_t) * (size_t)n);
    free(k), free(p2), free(z2);
    return 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (z >> 11) * (1.0 / 9007199254740992.0);
}

/* Print the profile file written at context free; returns the peak device bytes in use. */
static double print_profile(const char *path, int n_atoms)
{
    FILE *f = fopen(path, "r");
    double peak = 0.0;
    if (!f)
        return 0.0;
    char line[256];
    printf("    per-stage mean ms/call:");
    while (fgets(line, sizeof(line), f)) {
        char name[64];
        double v;
        if (sscanf(line, "stage %63s %lf", name, &v) == 2)
            printf(" %s=%.2f", name, v);
        else if (sscanf(line, "peak_device_used_bytes %lf", &v) == 1)
            peak = v;
        else if (sscanf(line, "workspace_bytes %lf", &v) == 1)
            printf("\n    workspace %.1f MB (%.0f B/atom)", v / 1e6, v / n_atoms);
        else if (strncmp(line, "cuda_graph ", 11) == 0 || /* stage means: calls not in graph mode */
                 strncmp(line, "checkpoint ", 11) == 0 || strncmp(line, "atoms ", 6) == 0)
            printf("\n    %.*s", (int)strcspn(line, "\n"), line);
    }
    printf("\n");
    fclose(f);
    return peak;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.safetensors [steps] [n_atoms ...]\n", argv[0]);
        return 2;
    }
    if (!ds4sci_cuda_available()) {
        printf("bench_gpu: no usable CUDA device (or built without CUDA); nothing to measure\n");
        return 0;
    }
    const char *model_path = argv[1];
    int steps = argc > 2 ? atoi(argv[2]) : 10;
    if (steps < 1)
        steps = 1;
    int sizes_default[] = {1000, 10000, 100000, 1000000};
    const char *bp = getenv("BENCH_PROFILE");
    const int profile = !(bp && strcmp(bp, "0") == 0);
    const char *sn = getenv("BENCH_SAME_NBR");
    const int same_nbr = sn && strcmp(sn, "1") == 0;
    const char *bo = getenv("BENCH_ORDER");
    const int morton = bo && strcmp(bo, "morton") == 0;
    int n_sizes = argc > 3 ? argc - 3 : 4;

    char err[1024];
    ds4sci_model *model = NULL;
    ds4sci_status st = ds4sci_model_load(model_path, &model, err, sizeof(err));
    if (st != DS4SCI_OK) {
        fprintf(stderr, "bench_gpu: %s\n", err);
        return 1;
    }
    const ds4sci_model_info *info = ds4sci_model_get_info(model);
    printf("model %s: F=%d L=%d K=%d H=%d cutoff %.2f, vector_cutoff %d\n", info->name,
           info->hidden_channels, info->num_layers, info->num_rbf, info->num_heads,
           info->cutoff_upper, info->vector_cutoff);
    printf("neighbour candidates %s\n", same_nbr ? "kept from the second call on (BENCH_SAME_NBR=1)"
                                                 : "read anew by every call");
    printf("atom order %s\n", morton ? "Morton (BENCH_ORDER=morton)" : "lattice rows");
    printf("%10s %12s %8s %12s %14s %12s %12s\n", "atoms", "edges/atom", "steps", "s/step",
           "atom-steps/s", "peak MB", "B/atom");

    for (int si = 0; si < n_sizes; si++) {
        const int want = argc > 3 ? atoi(argv[3 + si]) : sizes_default[si];
        const double density = 0.1, a = cbrt(1.0 / density);
        const int m = (int)lround(cbrt((double)want));
        const int n = m * m * m;
        const double side = m * a;
        double *pos = malloc(sizeof(double) * 3 * (size_t)n);
        int32_t *z = malloc(sizeof(int32_t) * (size_t)n);
        if (!pos || !z) {
            fprintf(stderr, "bench_gpu: host allocation failed at %d atoms\n", n);
            return 1;
        }
        size_t i = 0;
        for (int ix = 0; ix < m; ix++)
            for (int iy = 0; iy < m; iy++)
                for (int iz = 0; iz < m; iz++, i++) {
                    pos[3 * i] = (ix + 0.5) * a + 0.6 * (urand() - 0.5);
                    pos[3 * i + 1] = (iy + 0.5) * a + 0.6 * (urand() - 0.5);
                    pos[3 * i + 2] = (iz + 0.5) * a + 0.6 * (urand() - 0.5);
                    z[i] = info->element_z[(int)(urand() * info->n_elements) % info->n_elements];
                }
        if (morton && morton_order(pos, z, n, m) != 0) {
            fprintf(stderr, "bench_gpu: host allocation failed at %d atoms\n", n);
            return 1;
        }
        double box[9] = {side, 0, 0, 0, side, 0, 0, 0, side};
        ds4sci_graph *g = NULL;
        ds4sci_system sys;
        double t0 = now();
        st = ds4sci_graph_build(pos, z, n, box, info->cutoff_upper, &g, &sys, err, sizeof(err));
        double t_graph = now() - t0;
        if (st != DS4SCI_OK) {
            fprintf(stderr, "bench_gpu: graph at %d atoms: %s\n", n, err);
            return 1;
        }
        char prof[256];
        snprintf(prof, sizeof(prof), "/tmp/ds4sci_bench_profile_%d.txt", n);
        remove(prof);
        if (profile)
            setenv("DS4SCI_CUDA_PROFILE", prof, 1);
        else
            unsetenv("DS4SCI_CUDA_PROFILE");
        ds4sci_options opt;
        ds4sci_options_init(&opt);
        opt.device = DS4SCI_DEVICE_CUDA;
        ds4sci_ctx *ctx = NULL;
        st = ds4sci_ctx_create(model, &opt, &ctx, err, sizeof(err));
        if (st != DS4SCI_OK) {
            fprintf(stderr, "bench_gpu: context: %s\n", err);
            return 1;
        }
        ds4sci_result res;
        memset(&res, 0, sizeof(res));
        res.forces = malloc(sizeof(double) * 3 * ((size_t)sys.n_local + sys.n_ghost));
        double *times = malloc(sizeof(double) * (size_t)steps);
        int ok = 1;
        double e0 = 0.0;
        for (int k = 0; k < steps + 2 && ok; k++) {
            if (same_nbr && k > 0)
                ds4sci_ctx_same_neighbors(ctx, 1);
            double t = now();
            st = ds4sci_compute(ctx, &sys, NULL, &res);
            t = now() - t;
            if (st != DS4SCI_OK) {
                printf("%10d  does not run: %s: %s\n", n, ds4sci_status_name(st),
                       ds4sci_ctx_error(ctx));
                ok = 0;
                break;
            }
            if (k == 0)
                e0 = res.energy;
            if (k >= 2)
                times[k - 2] = t;
        }
        const int64_t n_cand = sys.nbr_offset[sys.n_local];
        ds4sci_ctx_free(ctx); /* writes the profile */
        if (ok) {
            qsort(times, (size_t)steps, sizeof(double), cmp_double);
            const double med = times[steps / 2];
            printf("%10d %12.1f %8d %12.5f %14.4g", n, (double)n_cand / n, steps, med, n / med);
            double peak = 0.0;
            FILE *f = fopen(prof, "r");
            if (f) {
                char line[256];
                double v;
                while (fgets(line, sizeof(line), f))
                    if (sscanf(line, "peak_device_used_bytes %lf", &v) == 1)
                        peak = v;
                fclose(f);
            }
            printf(" %12.1f %12.0f\n", peak / 1e6, peak / n);
            printf("    energy %.10g (repeat %.10g), host graph build %.2f s, ghosts %d\n", e0,
                   res.energy, t_graph, sys.n_ghost);
            printf("    step seconds min %.5f max %.5f\n", times[0], times[steps - 1]);
            if (profile)
                print_profile(prof, n);
        }
        fflush(stdout);
        free(times);
        free(res.forces);
        ds4sci_graph_free(g);
        free(pos);
        free(z);
    }
    ds4sci_model_free(model);
    return 0;
}
