/*
 * bench_gemm.cu - the node work's GEMMs: cuBLAS SGEMM against the three-piece bf16 tensor-core
 * GEMM of kernels/gemm_x3.cu (its mma.sync kernel "x3" and, where it runs, its wgmma kernel
 * "x3w"), time and error against float64, side by side.
 *
 *   bench_gemm [reps] [M ...]
 *   bench_gemm --cpu
 *
 * For each M (rows: atoms; default 1000 10648 97336 1000000) the six GEMM shapes one layer of
 * the reference model (F = 128) runs per step, as kernels/et_cuda.cu calls them:
 *   q/k/v       C[M][5F]  = A[M][F]   W^T       vec_proj    C[3M][3F] = A[3M][F] W^T
 *   o_proj      C[M][3F]  = A[M][F]   W^T       vec_proj bw C[3M][F] += A[3M][3F] B
 *   o_proj bw   C[M][F]   = A[M][3F]  B         q/k/v bw    C[M][F]   = A[M][5F]  B
 * with A, W uniform in [-1, 1) (and C too for +=). Prints per shape the median ms of `reps`
 * runs of each (CUDA events), the TFLOP/s, and each one's error against a float64 product of
 * the same float inputs over up to 1,024 sampled rows: relative RMS and the largest
 * |c - c64| / sum_k |a_k w_k| (componentwise, in units of 2^-24). Exit status 1 when the
 * three-piece GEMM's componentwise error exceeds 4x SGEMM's + 2^-24 on a shape (it should be
 * at SGEMM's level: docs/gpu.md v36), 0 otherwise; without a CUDA device it says so, exits 0.
 *
 * First (alone with --cpu, a ctest of label cpu: no GPU needed) the premise on the CPU, with
 * the kernels' own split (et_gemm_x3_split_value, host and device code): for 2^22 random
 * floats of 2^-110 <= |x| < 2^127, bf16 rounding ties and edge values, (1) x0 + x1 + x2 == x
 * exactly, (2) |x1| <= 2^-8 |x| and |x2| <= 2^-16 |x|, and for 2^20 random pairs (3) the six
 * piece products (i + j <= 2, each exact in float64 as in the tensor core) within 2^-23 |a w|
 * of a w; (4) 0 splits into zeros and NaN into NaNs. Exit status 1 when one fails.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "et_cuda.cuh" /* et_gemm_x3_* */

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float urand(void) /* [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* bf16 bits -> its value (by the format: the upper half of an fp32) */
static double bf16_value(uint16_t b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static float float_of_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* a float of random sign and mantissa, exponent uniform in [-110, 126]; low16 < 0x10000: the
   low 16 mantissa bits set to it (bf16 rounding ties 0x8000 and their neighbours) */
static float random_float(uint32_t low16)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    const uint32_t e = (uint32_t)(127 - 110 + (rng >> 40) % 237), m = (uint32_t)rng & 0x7fffffu;
    uint32_t u = (uint32_t)(rng >> 63) << 31 | e << 23 | m;
    if (low16 < 0x10000u)
        u = (u & 0xffff0000u) | low16;
    return float_of_bits(u);
}

/* the CPU part (header, items 1-4): the number of failures */
static int cpu_checks(void)
{
    int bad_split = 0, bad_six = 0, bad_edge = 0;
    double worst = 0.0;
    auto pieces = [](float x, double p[3]) {
        uint16_t b[3];
        et_gemm_x3_split_value(x, b);
        for (int i = 0; i < 3; i++)
            p[i] = bf16_value(b[i]);
    };
    const uint32_t lows[4] = {0x10000u, 0x8000u, 0x7fffu, 0x8001u};
    for (int i = 0; i < (1 << 22); i++) {
        const float x = random_float(lows[i & 3]);
        double p[3];
        pieces(x, p);
        const double ax = fabs((double)x);
        if (p[0] + p[1] + p[2] != (double)x || fabs(p[1]) > ldexp(ax, -8) ||
            fabs(p[2]) > ldexp(ax, -16)) {
            if (bad_split++ < 5)
                printf("split of %.9g: %.9g + %.9g + %.9g\n", x, p[0], p[1], p[2]);
        }
    }
    for (int i = 0; i < (1 << 20); i++) {
        const float a = random_float(0x10000u), w = random_float(0x10000u);
        double pa[3], pw[3];
        pieces(a, pa);
        pieces(w, pw);
        double six = 0.0;
        for (int u = 0; u < 3; u++)
            for (int v = 0; u + v <= 2; v++)
                six += pa[u] * pw[v]; /* exact products; the sum's rounding ~2^-52 */
        const double aw = (double)a * w, rel = fabs(six - aw) / fabs(aw);
        worst = rel > worst ? rel : worst;
        if (!(rel <= 0x1p-23)) {
            if (bad_six++ < 5)
                printf("six products of %.9g x %.9g: relative error %.3g\n", a, w, rel);
        }
    }
    double z[3], nn[3];
    pieces(0.f, z);
    pieces(NAN, nn);
    if (z[0] != 0.0 || z[1] != 0.0 || z[2] != 0.0 || !isnan(nn[0]) || !isnan(nn[1]) ||
        !isnan(nn[2])) {
        printf("split of 0 or NaN: %g %g %g / %g %g %g\n", z[0], z[1], z[2], nn[0], nn[1], nn[2]);
        bad_edge++;
    }
    printf("bench_gemm cpu: 2^22 splits exact, pieces within 2^-8 and 2^-16: %s; six products "
           "of 2^20 pairs within 2^-23 |a w| (worst %.3g = 2^%.2f): %s; 0 and NaN: %s\n",
           bad_split ? "NO" : "yes", worst, log2(worst > 0 ? worst : 1e-300),
           bad_six ? "NO" : "yes", bad_edge ? "NO" : "yes");
    return bad_split + bad_six + bad_edge;
}

struct shape {
    const char *name;
    int rows; /* M in units of the atom count */
    int N, K, ab; /* ab: C = A B, B [K][N] (else C = A W^T, W [N][K]) */
    float beta;
};

static float median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char **argv)
{
    const int cpu_bad = cpu_checks();
    if (argc > 1 && strcmp(argv[1], "--cpu") == 0)
        return cpu_bad ? 1 : 0;
    if (cpu_bad)
        return 1;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("bench_gemm: no CUDA device\n");
        return 0;
    }
    const int reps = argc > 1 ? atoi(argv[1]) : 5;
    std::vector<int> sizes;
    for (int i = 2; i < argc; i++)
        sizes.push_back(atoi(argv[i]));
    if (sizes.empty())
        sizes = {1000, 10648, 97336, 1000000};
    const int F = 128;
    const shape shapes[] = {{"q/k/v", 1, 5 * F, F, 0, 0.f},
                            {"vec_proj", 3, 3 * F, F, 0, 0.f},
                            {"o_proj", 1, 3 * F, F, 0, 0.f},
                            {"vec_proj bw", 3, F, 3 * F, 1, 1.f},
                            {"o_proj bw", 1, F, 3 * F, 1, 0.f},
                            {"q/k/v bw", 1, F, 5 * F, 1, 0.f}};
    CK(et_gemm_x3_init());
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        return 2;
    }
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cublasSetStream(h, s);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    int bad = 0;
    /* gemm_x3's kernels side by side: mma.sync ("x3"), and wgmma ("x3w") where it runs */
    const int nv = et_gemm_x3_variant(1) == 1 ? 3 : 2;
    printf("%-12s %9s %4s %4s | %9s %7s %9s %9s | %9s %7s %9s %9s | %6s", "shape", "M", "N", "K",
           "sgemm ms", "TFLOP/s", "rel rms", "max/ulp", "x3 ms", "TFLOP/s", "rel rms", "max/ulp",
           "speed");
    if (nv == 3)
        printf(" | %9s %7s %9s %9s | %6s", "x3w ms", "TFLOP/s", "rel rms", "max/ulp", "speed");
    printf("\n");
    for (int atoms : sizes)
        for (const shape &sh : shapes) {
            const int M = sh.rows * atoms, N = sh.N, K = sh.K;
            const size_t na = (size_t)M * K, nw = (size_t)N * K, nc = (size_t)M * N;
            std::vector<float> hA(na), hW(nw), hC0(nc);
            for (auto &x : hA)
                x = urand();
            for (auto &x : hW)
                x = urand();
            for (auto &x : hC0)
                x = sh.beta != 0.f ? urand() : 0.f;
            float *dA, *dW, *dC, *dC0;
            uint16_t *dW3;
            CK(cudaMalloc(&dA, na * 4));
            CK(cudaMalloc(&dW, nw * 4));
            CK(cudaMalloc(&dC, nc * 4));
            CK(cudaMalloc(&dC0, nc * 4));
            CK(cudaMalloc(&dW3, 3 * nw * 2));
            CK(cudaMemcpy(dA, hA.data(), na * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dW, hW.data(), nw * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dC0, hC0.data(), nc * 4, cudaMemcpyHostToDevice));
            /* the weight as the backend holds it: W [N][K] (awt) or B [K][N] (ab) */
            CK(et_gemm_x3_split(s, N, K, dW, sh.ab ? N : K, sh.ab, dW3));
            if (!et_gemm_x3_ok(M, N, K, dA, dC)) {
                printf("%-12s: shape not taken by gemm_x3\n", sh.name);
                continue;
            }
            const float one = 1.f;
            auto run_sgemm = [&]() {
                if (sh.ab)
                    cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, dW, N, dA, K,
                                &sh.beta, dC, N);
                else
                    cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, dW, K, dA, K,
                                &sh.beta, dC, N);
            };
            auto run_x3 = [&]() { CK(et_gemm_x3(s, M, N, K, dA, dW3, sh.beta, NULL, dC)); };
            double err_rms[3], err_max[3];
            float ms[3];
            for (int v = 0; v < nv; v++) {
                if (v > 0)
                    et_gemm_x3_variant(v - 1);
                std::vector<float> t;
                for (int r = 0; r < reps + 1; r++) {
                    CK(cudaMemcpyAsync(dC, dC0, nc * 4, cudaMemcpyDeviceToDevice, s));
                    CK(cudaEventRecord(e0, s));
                    if (v == 0)
                        run_sgemm();
                    else
                        run_x3();
                    CK(cudaEventRecord(e1, s));
                    CK(cudaEventSynchronize(e1));
                    float m = 0.f;
                    CK(cudaEventElapsedTime(&m, e0, e1));
                    if (r > 0)
                        t.push_back(m);
                }
                ms[v] = median(t);
                /* error over sampled rows against float64 */
                const int ns = M < 1024 ? M : 1024;
                double s2 = 0.0, r2 = 0.0, mx = 0.0;
                std::vector<float> row(N);
                for (int si = 0; si < ns; si++) {
                    const int i = (int)((long long)si * M / ns);
                    CK(cudaMemcpy(row.data(), dC + (size_t)i * N, N * 4, cudaMemcpyDeviceToHost));
                    for (int j = 0; j < N; j++) {
                        double ref = sh.beta != 0.f ? hC0[(size_t)i * N + j] : 0.0, mag = fabs(ref);
                        for (int k = 0; k < K; k++) {
                            const double w = sh.ab ? hW[(size_t)k * N + j] : hW[(size_t)j * K + k];
                            const double p = (double)hA[(size_t)i * K + k] * w;
                            ref += p;
                            mag += fabs(p);
                        }
                        const double d = row[j] - ref;
                        s2 += d * d;
                        r2 += ref * ref;
                        mx = std::max(mx, fabs(d) / (mag > 0 ? mag : 1.0));
                    }
                }
                err_rms[v] = sqrt(s2 / (r2 > 0 ? r2 : 1.0));
                err_max[v] = mx / ldexp(1.0, -24);
            }
            const double flop = 2.0 * M * (double)N * K;
            printf("%-12s %9d %4d %4d | %9.3f %7.1f %9.2e %9.2f", sh.name, M, N, K, ms[0],
                   flop / ms[0] * 1e-9, err_rms[0], err_max[0]);
            for (int v = 1; v < nv; v++)
                printf(" | %9.3f %7.1f %9.2e %9.2f | %6.2fx", ms[v], flop / ms[v] * 1e-9,
                       err_rms[v], err_max[v], ms[0] / ms[v]);
            printf("\n");
            for (int v = 1; v < nv; v++)
                if (!(err_max[v] <= 4.0 * err_max[0] + 1.0)) {
                    printf("  FAIL: %s componentwise error %.2f ulp against SGEMM's %.2f\n",
                           v == 1 ? "x3" : "x3w", err_max[v], err_max[0]);
                    bad = 1;
                }
            fflush(stdout);
            cudaFree(dA);
            cudaFree(dW);
            cudaFree(dC);
            cudaFree(dC0);
            cudaFree(dW3);
        }
    cublasDestroy(h);
    printf(bad ? "bench_gemm: FAIL\n" : "bench_gemm: all shapes within the error bound\n");
    return bad;
}
