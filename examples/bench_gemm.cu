/*
 * bench_gemm.cu - the node work's GEMMs: cuBLAS SGEMM against the three-piece bf16 tensor-core
 * GEMM of kernels/gemm_x3.cu, time and error against float64, side by side.
 *
 *   bench_gemm [reps] [M ...]
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
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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
    printf("%-12s %9s %4s %4s | %9s %7s %9s %9s | %9s %7s %9s %9s | %6s\n", "shape", "M", "N",
           "K", "sgemm ms", "TFLOP/s", "rel rms", "max/ulp", "x3 ms", "TFLOP/s", "rel rms",
           "max/ulp", "speed");
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
            double err_rms[2], err_max[2];
            float ms[2];
            for (int v = 0; v < 2; v++) {
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
            printf("%-12s %9d %4d %4d | %9.3f %7.1f %9.2e %9.2f | %9.3f %7.1f %9.2e %9.2f | "
                   "%6.2fx\n",
                   sh.name, M, N, K, ms[0], flop / ms[0] * 1e-9, err_rms[0], err_max[0], ms[1],
                   flop / ms[1] * 1e-9, err_rms[1], err_max[1], ms[0] / ms[1]);
            if (!(err_max[1] <= 4.0 * err_max[0] + 1.0)) {
                printf("  FAIL: x3 componentwise error %.2f ulp against SGEMM's %.2f\n",
                       err_max[1], err_max[0]);
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
