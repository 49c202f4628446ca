/*
 * bench_cpu.c - throughput of the float64 CPU reference backend: energy + forces + virial
 * of a condensed-phase box (lattice with noise at 0.1 atoms/A^3, as
 * shared/baselines/torchmdnet_et_gpu.py's system()), periodic, one process.
 *
 *   bench_cpu [model.safetensors] [n_atoms] [steps]
 *
 * Defaults: tests/golden/typical.safetensors (TorchMD-Net ET F128 L6 K32 H8, cutoff 5,
 * random weights; run from the repository root), 1000 atoms, 5 timed steps after one
 * warm-up. Threads: OMP_NUM_THREADS. Prints atoms, ghosts, edges, seconds per step
 * (median), atom-steps/s and threads.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ds4sci.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 12345;

static double uniform(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static double normal(void) {
    double u1 = uniform(), u2 = uniform();
    return sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)) * cos(2.0 * 3.14159265358979323846 * u2);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "tests/golden/typical.safetensors";
    const int n = argc > 2 ? atoi(argv[2]) : 1000;
    const int steps = argc > 3 ? atoi(argv[3]) : 5;
    if (n <= 0 || steps <= 0) {
        fprintf(stderr, "usage: bench_cpu [model.safetensors] [n_atoms > 0] [steps > 0]\n");
        return 2;
    }
    char err[1024];
    ds4sci_model *model = NULL;
    ds4sci_status st = ds4sci_model_load(path, &model, err, sizeof(err));
    if (st != DS4SCI_OK) {
        fprintf(stderr, "bench_cpu: %s\n", err);
        return 1;
    }
    const ds4sci_model_info *info = ds4sci_model_get_info(model);

    /* lattice with noise: m^3 sites, spacing L/m, Gaussian noise 0.15 L/m, wrapped */
    const double density = 0.1, L = cbrt(n / density);
    const int m = (int)ceil(cbrt((double)n));
    double *pos = malloc(sizeof(double) * 3 * n);
    int32_t *z = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        const int g[3] = {i / (m * m), (i / m) % m, i % m};
        for (int c = 0; c < 3; c++) {
            double x = (g[c] + 0.5) * (L / m) + normal() * 0.15 * L / m;
            pos[3 * i + c] = x - L * floor(x / L);
        }
        z[i] = info->element_z[(int)(uniform() * info->n_elements) % info->n_elements];
    }
    const double box[9] = {L, 0, 0, 0, L, 0, 0, 0, L};

    ds4sci_graph *graph = NULL;
    ds4sci_system sys;
    double t0 = now();
    st = ds4sci_graph_build(pos, z, n, box, info->cutoff_upper, &graph, &sys, err, sizeof(err));
    const double t_graph = now() - t0;
    if (st != DS4SCI_OK) {
        fprintf(stderr, "bench_cpu: %s\n", err);
        return 1;
    }

    ds4sci_options opt;
    ds4sci_options_init(&opt);
    opt.device = DS4SCI_DEVICE_CPU;
    ds4sci_ctx *ctx = NULL;
    if ((st = ds4sci_ctx_create(model, &opt, &ctx, err, sizeof(err))) != DS4SCI_OK) {
        fprintf(stderr, "bench_cpu: %s\n", err);
        return 1;
    }
    const int n_total = sys.n_local + sys.n_ghost;
    double *forces = malloc(sizeof(double) * 3 * n_total);
    ds4sci_result res;
    memset(&res, 0, sizeof(res));
    res.forces = forces;

    double *times = malloc(sizeof(double) * steps);
    for (int s = -1; s < steps; s++) {
        t0 = now();
        st = ds4sci_compute(ctx, &sys, NULL, &res);
        const double dt = now() - t0;
        if (st != DS4SCI_OK) {
            fprintf(stderr, "bench_cpu: %s\n", ds4sci_ctx_error(ctx));
            return 1;
        }
        if (s >= 0)
            times[s] = dt;
    }
    qsort(times, (size_t)steps, sizeof(double), cmp_double);
    const double med =
        steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("model        %s (F %d, L %d, K %d, H %d, cutoff %g)\n", path, info->hidden_channels,
           info->num_layers, info->num_rbf, info->num_heads, info->cutoff_upper);
    printf("atoms        %d (+ %d ghosts), box %.3f A, density %.3f /A^3\n", n, sys.n_ghost, L,
           density);
    printf("edges        %lld directed pairs within the cutoff (%.1f per atom) + %d self-loops\n",
           (long long)sys.nbr_offset[n], (double)sys.nbr_offset[n] / n, n);
    printf("graph build  %.4f s\n", t_graph);
    printf("s/step       %.4f (median of %d; min %.4f, max %.4f)\n", med, steps, times[0],
           times[steps - 1]);
    printf("atom-steps/s %.1f\n", n / med);
    printf("threads      %d\n", threads);
    printf("energy       %.10f %s\n", res.energy + info->energy_shift, info->energy_unit);

    free(times);
    free(forces);
    ds4sci_ctx_free(ctx);
    ds4sci_graph_free(graph);
    ds4sci_model_free(model);
    free(pos);
    free(z);
    return 0;
}
