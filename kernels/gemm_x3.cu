/*
 * gemm_x3.cu - the node work's fp32 GEMMs on the bf16 tensor cores, each value split in three.
 *
 *   C[M][N] = A[M][K] W'^T (+ C),  A fp32 row-major, W' [N][K] as three bf16 pieces
 *
 * Every fp32 value x is split exactly into three bf16 values x = x0 + x1 + x2 (x0 = bf16(x),
 * x1 = bf16(x - x0), x2 = x - x0 - x1; round to nearest: 8 significant bits each, fp32's 24 in
 * all, every subtraction exact by Sterbenz). A product a w is then the six piece products
 * a_i w_j with i + j <= 2, each exact in the tensor core (8 x 8 bits); the three left out
 * (i + j >= 3) are at most ~2^-23 |a w| together (|x1| <= 2^-8 |x|, |x2| <= 2^-16 |x|). The
 * tensor cores' own fp32 accumulation truncates, so each stage (K = 32) sums its products into
 * fresh accumulators, the small ones first, and FADD (round to nearest) adds those to the
 * running sums. Measured against float64 (examples/bench_gemm.cu, docs/gpu.md v36, v38): 3-4x
 * more exact than cuBLAS's SGEMM (relative RMS 7.0e-8 / 9.1e-8 / 1.0e-7 at K = 128 / 384 / 640
 * against 2.0e-7 / 3.5e-7 / 4.5e-7, componentwise at most 0.8-1.2 against 3.4-4.6 units of
 * 2^-24), and 1.03-1.10x its speed on the H200 at 1M atoms.
 *
 * Shapes: N a multiple of 128, K of 32, A and C 16-byte aligned; anything else is the caller's
 * cuBLAS path (et_gemm_x3_ok). W' is made once per weight (et_gemm_x3_split: from W [N][K] as
 * C = A W^T uses it, or from B [K][N] for C = A B), at model upload.
 *
 * Tiles: a block of 8 warps computes 128 x 128 of C, K in steps of 32 through two shared-memory
 * stages (A's tile loaded as floats into registers and split into three bf16 tiles while the
 * other stage is multiplied; W's three tiles by cp.async); warp (wm, wn) owns rows 64 wm ..
 * +64 and columns 32 wn .. +32: 4 x 4 m16n8 tiles, 6 products each per k-step of 16.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "et_cuda.cuh"

namespace {

constexpr int X3_BM = 128, X3_BN = 128, X3_BK = 32;
constexpr int X3_LDS = X3_BK + 8;          /* bf16 per shared row: 80 B, ldmatrix conflict-free */
constexpr int X3_TILE = X3_BM * X3_LDS;    /* bf16 per piece tile (X3_BM == X3_BN) */
constexpr int X3_STAGE = 6 * X3_TILE;      /* A's three pieces, then W's three */
constexpr int X3_THREADS = 256;
constexpr size_t X3_SMEM = 2 * (size_t)X3_STAGE * sizeof(uint16_t); /* 122,880 B */
static_assert(X3_BM == X3_BN, "one tile size for A's and W's pieces");

/* x = x0 + x1 + x2 (bf16 bits p0, p1, p2): exact for 2^-110 <= |x| < 2^127 (below, x2 may
   fall under bf16's subnormal grid, 2^-133; from ~2^128 - 2^119, x0 rounds to infinity) and
   x = 0; NaN pieces for non-finite x. Host and device:
   et_gemm_x3_split_value runs it on the CPU (examples/bench_gemm.cu --cpu, a ctest) */
__host__ __device__ __forceinline__ void split3(float x, uint16_t &p0, uint16_t &p1,
                                                uint16_t &p2)
{
    const __nv_bfloat16 h0 = __float2bfloat16_rn(x);
    const float r1 = x - __bfloat162float(h0);
    const __nv_bfloat16 h1 = __float2bfloat16_rn(r1);
    const __nv_bfloat16 h2 = __float2bfloat16_rn(r1 - __bfloat162float(h1));
    p0 = __bfloat16_as_ushort(h0);
    p1 = __bfloat16_as_ushort(h1);
    p2 = __bfloat16_as_ushort(h2);
}

template <int R> __device__ __forceinline__ void zero_tiles(float (&a)[R][4][4])
{
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int v = 0; v < 4; v++)
                a[i][nt][v] = 0.f;
}

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16(uint16_t *dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}

/* W' [3][N][K] bf16 pieces from W: trans 0, w'(n, k) = W[n ld + k] (W [N][K], C = A W^T);
   trans 1, w'(n, k) = W[k ld + n] (B [K][N], C = A B) */
__global__ void k_split_w(const float *__restrict__ W, int N, int K, int ld, int trans,
                          uint16_t *__restrict__ out)
{
    const size_t nk = (size_t)N * K;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nk;
         i += (size_t)gridDim.x * blockDim.x) {
        const int n = (int)(i / K), k = (int)(i - (size_t)n * K);
        const float x = trans ? W[(size_t)k * ld + n] : W[(size_t)n * ld + k];
        uint16_t p0, p1, p2;
        split3(x, p0, p1, p2);
        out[i] = p0;
        out[nk + i] = p1;
        out[2 * nk + i] = p2;
    }
}

/* C[M][N] = A[M][K] W'^T (+ C when ACC; + bias[N] when bias is not NULL). Persistent: block b takes the tiles b, b + grid, ...
   (tile t: rows 128 (t / (N / 128)), columns 128 (t % (N / 128)); the N tiles of one row tile
   neighbours, A's rows read from L2 by all of them), and its (tile, k-step) iterations form one
   pipeline, so that the next tile's first loads fly during this tile's last products and its
   stores (K = 128 is four k-steps: a pipeline per tile left the first loads' latency bare). */
template <bool ACC>
__global__ void __launch_bounds__(X3_THREADS, 1)
    k_gemm_x3(const float *__restrict__ A, const uint16_t *__restrict__ W3,
              const float *__restrict__ bias, float *__restrict__ C, int M, int N, int K,
              int tiles)
{
    extern __shared__ __align__(16) unsigned char x3_smem[];
    uint16_t *const sm = (uint16_t *)x3_smem;
    const int nbn = N / X3_BN, KT = K / X3_BK;
    const int mine = tiles > (int)blockIdx.x ? (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1
                                             : 0;
    const int iters = mine * KT;
    if (iters == 0)
        return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const size_t nk = (size_t)N * K;
    /* iteration it: tile blockIdx.x + (it / KT) gridDim.x, k-step it % KT */
    auto at = [&](int it, int &row0, int &col0, int &kt) {
        const int ti = it / KT;
        kt = it - ti * KT;
        const int t = (int)blockIdx.x + ti * (int)gridDim.x, bm = t / nbn;
        row0 = bm * X3_BM;
        col0 = (t - bm * nbn) * X3_BN;
    };

    /* A's tile [128][32] floats: thread tid loads float4 i = tid + 256 j (row i / 8, k 4 (i % 8)) */
    float4 ra[4];
    auto load_a = [&](int row0, int kt) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = tid + X3_THREADS * j, r = i >> 3, c = (i & 7) * 4;
            const int gr = row0 + r;
            ra[j] = gr < M ? __ldg((const float4 *)(A + (size_t)gr * K + kt * X3_BK + c))
                           : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    auto store_a = [&](int st) {
        uint16_t *const sa = sm + st * X3_STAGE;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = tid + X3_THREADS * j, r = i >> 3, c = (i & 7) * 4;
            uint16_t p[3][4];
            split3(ra[j].x, p[0][0], p[1][0], p[2][0]);
            split3(ra[j].y, p[0][1], p[1][1], p[2][1]);
            split3(ra[j].z, p[0][2], p[1][2], p[2][2]);
            split3(ra[j].w, p[0][3], p[1][3], p[2][3]);
#pragma unroll
            for (int q = 0; q < 3; q++)
                *(uint2 *)(sa + q * X3_TILE + r * X3_LDS + c) =
                    make_uint2((uint32_t)p[q][0] | (uint32_t)p[q][1] << 16,
                               (uint32_t)p[q][2] | (uint32_t)p[q][3] << 16);
        }
    };
    /* W's three tiles [128][32] bf16: 1,536 chunks of 16 B, six per thread */
    auto load_w = [&](int col0, int kt, int st) {
        uint16_t *const sw = sm + st * X3_STAGE + 3 * X3_TILE;
#pragma unroll
        for (int j = 0; j < 6; j++) {
            const int i = tid + X3_THREADS * j, q = i >> 9, rem = i & 511;
            const int r = rem >> 2, c = (rem & 3) * 8;
            cp_async16(sw + q * X3_TILE + r * X3_LDS + c,
                       W3 + q * nk + (size_t)(col0 + r) * K + kt * X3_BK + c);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };

    float acc[4][4][4]; /* [m-tile][n-tile][C fragment] */
    zero_tiles(acc);

    /* ldmatrix rows: A (m16 x k16): matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15),
       (8-15, 8-15) = a0..a3; W' (n16 x k16): (n 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15,
       8-15) = b0, b1 of n-tile 0, b0, b1 of n-tile 1 */
    const int mi = lane >> 3;
    const int a_off = ((lane & 7) + (mi & 1) * 8) * X3_LDS + (mi >> 1) * 8;
    const int b_off = ((lane & 7) + (mi >> 1) * 8) * X3_LDS + (mi & 1) * 8;
    const int g = lane >> 2, t4 = lane & 3;

    int row0, col0, kt;
    at(0, row0, col0, kt);
    load_a(row0, kt);
    load_w(col0, kt, 0);
    store_a(0);
    asm volatile("cp.async.wait_all;\n" ::);
    __syncthreads();
    for (int it = 0; it < iters; it++) {
        const int st = it & 1;
        at(it, row0, col0, kt);
        if (it + 1 < iters) { /* the next iteration's loads fly during this one's products */
            int r1, c1, k1;
            at(it + 1, r1, c1, k1);
            load_a(r1, k1);
            load_w(c1, k1, st ^ 1);
        }
        const uint16_t *const sa = sm + st * X3_STAGE + wm * 64 * X3_LDS + a_off;
        const uint16_t *const sw = sm + st * X3_STAGE + 3 * X3_TILE + wn * 32 * X3_LDS + b_off;
        /* Per pair of m-tiles (mp), the stage's products into fresh accumulators, added to acc
           by FADD: the tensor cores' own accumulation truncates (rounds toward zero), which over
           the whole K into one accumulator was 4-7x SGEMM's error (docs/gpu.md v36). The small
           products of both k-steps first (a1 w1, a0 w2, a2 w0, a0 w1, a1 w0: ~2^-8 of the sum,
           their truncations ~2^-32 of it), then a0 w0 of k-step 0 and of k-step 1: two
           truncations at the scale of the sum per stage, as with one fresh accumulator per
           k-step (v36), with half the FADDs and zeroed accumulators (v38) */
        constexpr int PI[5] = {1, 0, 2, 0, 1}, PJ[5] = {1, 2, 0, 1, 0};
#pragma unroll
        for (int mp = 0; mp < 4; mp += 2) {
            float tmp[2][4][4];
            zero_tiles(tmp);
            uint32_t a00[2][4], b00[4][2]; /* k-step 0's a0, w0 fragments, for its a0 w0 */
#pragma unroll
            for (int ks = 0; ks < X3_BK; ks += 16) {
                uint32_t af[3][2][4], bf[3][4][2];
#pragma unroll
                for (int q = 0; q < 3; q++) {
#pragma unroll
                    for (int i = 0; i < 2; i++)
                        ldsm_x4(af[q][i], sa + q * X3_TILE + (mp + i) * 16 * X3_LDS + ks);
#pragma unroll
                    for (int np = 0; np < 2; np++) {
                        uint32_t r[4];
                        ldsm_x4(r, sw + q * X3_TILE + np * 16 * X3_LDS + ks);
                        bf[q][2 * np][0] = r[0];
                        bf[q][2 * np][1] = r[1];
                        bf[q][2 * np + 1][0] = r[2];
                        bf[q][2 * np + 1][1] = r[3];
                    }
                }
#pragma unroll
                for (int p = 0; p < 5; p++)
#pragma unroll
                    for (int i = 0; i < 2; i++)
#pragma unroll
                        for (int nt = 0; nt < 4; nt++)
                            mma_bf16(tmp[i][nt], af[PI[p]][i], bf[PJ[p]][nt][0],
                                     bf[PJ[p]][nt][1]);
                if (ks == 0) {
#pragma unroll
                    for (int i = 0; i < 2; i++)
#pragma unroll
                        for (int v = 0; v < 4; v++)
                            a00[i][v] = af[0][i][v];
#pragma unroll
                    for (int nt = 0; nt < 4; nt++) {
                        b00[nt][0] = bf[0][nt][0];
                        b00[nt][1] = bf[0][nt][1];
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < 2; i++)
#pragma unroll
                        for (int nt = 0; nt < 4; nt++)
                            mma_bf16(tmp[i][nt], a00[i], b00[nt][0], b00[nt][1]);
#pragma unroll
                    for (int i = 0; i < 2; i++)
#pragma unroll
                        for (int nt = 0; nt < 4; nt++)
                            mma_bf16(tmp[i][nt], af[0][i], bf[0][nt][0], bf[0][nt][1]);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
#pragma unroll
                    for (int v = 0; v < 4; v++)
                        acc[mp + i][nt][v] += tmp[i][nt][v];
            /* the next stage's A split and stored between the two m-tile pairs (its loads have
               had the first pair's products to arrive; stage st ^ 1 is free since the last
               iteration's barrier): its ALU work issues among the second pair's MMAs instead
               of after them, when both warps of a scheduler would leave the tensor cores idle
               (v37: -4.6%) */
            if (mp == 0 && it + 1 < iters)
                store_a(st ^ 1);
        }
        if (kt == KT - 1) { /* the tile's C: c0, c1 at (row g, columns 2t, 2t + 1), c2, c3 at
                               row g + 8 */
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = row0 + wm * 64 + mt * 16 + g + 8 * h;
                    if (r < M) {
                        float *const crow = C + (size_t)r * N + col0 + wn * 32 + 2 * t4;
#pragma unroll
                        for (int nt = 0; nt < 4; nt++) {
                            float2 v = make_float2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
                            if (bias) {
                                const float2 b = __ldg((const float2 *)(bias + col0 + wn * 32 +
                                                                        2 * t4 + nt * 8));
                                v.x += b.x;
                                v.y += b.y;
                            }
                            if (ACC) {
                                const float2 o = *(const float2 *)(crow + nt * 8);
                                v.x += o.x;
                                v.y += o.y;
                            }
                            *(float2 *)(crow + nt * 8) = v;
                        }
                    }
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
                        acc[mt][nt][2 * h] = acc[mt][nt][2 * h + 1] = 0.f;
                }
        }
        if (it + 1 < iters)
            asm volatile("cp.async.wait_all;\n" ::);
        __syncthreads();
    }
}

} // namespace

static int x3_sms = 0; /* multiprocessors of the device (et_gemm_x3_init) */

extern "C" cudaError_t et_gemm_x3_init(void)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&x3_sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_gemm_x3<false>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, X3_SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_gemm_x3<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 X3_SMEM);
    return e;
}

extern "C" void et_gemm_x3_split_value(float x, uint16_t out[3])
{
    split3(x, out[0], out[1], out[2]);
}

extern "C" cudaError_t et_gemm_x3_split(cudaStream_t s, int N, int K, const float *W, int ld,
                                        int trans, uint16_t *out)
{
    const size_t nk = (size_t)N * K;
    const int blocks = (int)((nk + 255) / 256 < 1024 ? (nk + 255) / 256 : 1024);
    if (nk > 0)
        k_split_w<<<blocks, 256, 0, s>>>(W, N, K, ld, trans, out);
    return cudaGetLastError();
}

extern "C" int et_gemm_x3_ok(int M, int N, int K, const float *A, const float *C)
{
    return M > 0 && N > 0 && K > 0 && N % X3_BN == 0 && K % X3_BK == 0 &&
           ((uintptr_t)A & 15) == 0 && ((uintptr_t)C & 15) == 0 &&
           (long long)((M + X3_BM - 1) / X3_BM) * (N / X3_BN) <= 0x7fffffffLL;
}

extern "C" cudaError_t et_gemm_x3(cudaStream_t s, int M, int N, int K, const float *A,
                                  const uint16_t *W3, float beta, const float *bias, float *C)
{
    if ((beta != 0.f && beta != 1.f) || (bias && beta != 0.f))
        return cudaErrorInvalidValue; /* C = A W'^T (+ bias) or A W'^T + C only */
    if (M <= 0)
        return cudaSuccess;
    const int tiles = (M + X3_BM - 1) / X3_BM * (N / X3_BN);
    const int grid = tiles < x3_sms ? tiles : x3_sms > 0 ? x3_sms : 1;
    if (beta != 0.f)
        k_gemm_x3<true><<<grid, X3_THREADS, X3_SMEM, s>>>(A, W3, bias, C, M, N, K, tiles);
    else
        k_gemm_x3<false><<<grid, X3_THREADS, X3_SMEM, s>>>(A, W3, bias, C, M, N, K, tiles);
    return cudaGetLastError();
}
