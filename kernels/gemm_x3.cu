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
 * 2^-24), and on the H200 at 1M atoms 1.8-2.2x its speed with Hopper's wgmma (v39; 1.03-1.10x
 * with mma.sync).
 *
 * Shapes: N a multiple of 128, K of 32, A and C 16-byte aligned; anything else is the caller's
 * cuBLAS path (et_gemm_x3_ok). W' is made once per weight (et_gemm_x3_split: from W [N][K] as
 * C = A W^T uses it, or from B [K][N] for C = A B), at model upload.
 *
 * Two kernels, the same products in the same order (bit-identical results): k_gemm_x3w (wgmma,
 * sm_90a machine code; the default on an sm_90 device, see et_gemm_x3_init) and k_gemm_x3
 * (mma.sync: any other device through the compute_90 PTX, or DS4SCI_CUDA_X3=mma). k_gemm_x3's
 * tiles: a block of 8 warps computes 128 x 128 of C, K in steps of 32 through two shared-memory
 * stages (A's tile loaded as floats into registers and split into three bf16 tiles while the
 * other stage is multiplied; W's three tiles by cp.async); warp (wm, wn) owns rows 64 wm ..
 * +64 and columns 32 wn .. +32: 4 x 4 m16n8 tiles, 6 products each per k-step of 16.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* A persistent block's iterations: block b takes the tiles b, b + grid, ... of 128 x 128 (tile
   t: rows 128 (t / (N / 128)), columns 128 (t % (N / 128))), K / 32 k-steps each; iteration it
   is tile b + (it / KT) grid, k-step it % KT (both kernels) */
/* tile t's first row and column (nbn tiles of 128 columns per row of tiles) */
__device__ __forceinline__ void x3_tile(int t, int nbn, int &row0, int &col0)
{
    const int bm = t / nbn;
    row0 = bm * X3_BM;
    col0 = (t - bm * nbn) * X3_BN;
}

struct x3_sched {
    int nbn, KT, iters;
    __device__ __forceinline__ x3_sched(int N, int K, int tiles)
        : nbn(N / X3_BN), KT(K / X3_BK),
          iters(tiles > (int)blockIdx.x
                    ? ((tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1) * (K / X3_BK)
                    : 0)
    {
    }
    __device__ __forceinline__ void operator()(int it, int &row0, int &col0, int &kt) const
    {
        const int ti = it / KT;
        kt = it - ti * KT;
        x3_tile((int)blockIdx.x + ti * (int)gridDim.x, nbn, row0, col0);
    }
};

/* C[M][N] = A[M][K] W'^T (+ C when ACC; + bias[N] when bias is not NULL). Persistent (x3_sched:
   the N tiles of one row tile neighbours, A's rows read from L2 by all of them); the block's
   (tile, k-step) iterations form one pipeline, so that the next tile's first loads fly during
   this tile's last products and its stores (K = 128 is four k-steps: a pipeline per tile left
   the first loads' latency bare). */
template <bool ACC>
__global__ void __launch_bounds__(X3_THREADS, 1)
    k_gemm_x3(const float *__restrict__ A, const uint16_t *__restrict__ W3,
              const float *__restrict__ bias, float *__restrict__ C, int M, int N, int K,
              int tiles)
{
    extern __shared__ __align__(16) unsigned char x3_smem[];
    uint16_t *const sm = (uint16_t *)x3_smem;
    const x3_sched at(N, K, tiles);
    const int iters = at.iters, KT = at.KT;
    if (iters == 0)
        return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const size_t nk = (size_t)N * K;

    /* A's tile [128][32] floats: thread tid loads float4 i = tid + 256 j (row i / 8, k
       4 (i % 8)) */
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

/* ---- The same products by wgmma (sm_90a: Hopper's warpgroup MMAs; docs/gpu.md v39) ----

   A block of two warpgroups computes 128 x 128 of C (each warpgroup 64 rows x 128 columns, one
   m64n128k16 wgmma per piece product and k-step of 16); K in steps of 32. A's pieces never touch
   shared memory: each thread loads its own fragment elements of A as floats (rows 16 w + g and
   + 8 of its warp's 16, columns 2 t, 2 t + 1 and + 8, + 9 of each k-step: the m16n8k16 A layout,
   which is wgmma's register-A layout per warp) and splits them in registers. W's three pieces come
   by cp.async into three stage buffers, K-major with the 64-byte swizzle (a tile row of 32 k is
   64 B; without the swizzle, core matrices 512 B apart in n, the GEMMs were 1.15x slower: v39).
   Per stage the twelve wgmmas (five small products of each k-step, then a0 w0 of each) go into
   one fresh accumulator (scale-d 0 on the first), added to the running sum by FADD after the
   wait, as the mma.sync kernel does: the same exactness. During the wgmmas the thread splits the
   next stage's A (loaded one stage earlier) and issues the loads of the one after. The tile
   coordinates advance by cursor (one division per tile): the tensor pipe waits on the warps'
   instructions between its stages, so every instruction per stage counts (v39: the kernel's
   SASS 2,904 -> 1,864 instructions, 1.4x faster). */
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define X3W_ON 1
#endif

constexpr int XW_BM = 128, XW_BN = 128, XW_BK = 32, XW_THREADS = 256, XW_NBUF = 3;
constexpr int XW_PIECE = XW_BN * XW_BK;                       /* bf16 per piece tile (8 KB) */
constexpr int XW_BUF = 3 * XW_PIECE;                          /* bf16 per stage buffer */
constexpr size_t XW_SMEM = XW_NBUF * (size_t)XW_BUF * sizeof(uint16_t); /* 73,728 B */
static_assert(XW_BM == X3_BM && XW_BN == X3_BN && XW_BK == X3_BK,
              "x3_sched and et_gemm_x3's tile count serve both kernels");

#ifdef X3W_ON
#define XW_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
/* d (+)= a b: m64n128k16, A from registers, B by descriptor; SCALE_D 0: d = a b */
template <int SCALE_D>
__device__ __forceinline__ void xw_mma(float (&d)[64], const uint32_t (&a)[4], uint64_t desc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : XW_D4(0), XW_D4(4), XW_D4(8), XW_D4(12),
                   XW_D4(16), XW_D4(20), XW_D4(24), XW_D4(28),
                   XW_D4(32), XW_D4(36), XW_D4(40), XW_D4(44),
                   XW_D4(48), XW_D4(52), XW_D4(56), XW_D4(60)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(SCALE_D));
}
#undef XW_D4

/* shared-memory matrix descriptor of a piece tile [128 n][32 k] with the 64-byte swizzle: start
   address >> 4 (bits 0-13), LBO unused (1), SBO 512 B >> 4 (32-45: 8-row groups), base offset 0
   (the buffers are 1,024-aligned), swizzle mode 2 = 64 B (62-63) */
__device__ __forceinline__ uint64_t xw_desc(uint32_t saddr)
{
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | (uint64_t)1 << 16 | (uint64_t)(512 >> 4) << 32 |
           (uint64_t)2 << 62;
}

/* keeps the compiler from moving register uses across the wgmma wait */
__device__ __forceinline__ void xw_hold(float &x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void xw_hold(uint32_t &x) { asm volatile("" : "+r"(x)::"memory"); }

/* the three bf16 pieces of (x, y), packed as the fragments hold them (x in the low half): split3
   on two values at once (cvt.rn.bf16x2.f32: the same rounding, the same pieces) */
__device__ __forceinline__ void xw_split2(float x, float y, uint32_t &p0, uint32_t &p1,
                                          uint32_t &p2)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    p0 = *(uint32_t *)&h;
    x -= __uint_as_float(p0 << 16);
    y -= __uint_as_float(p0 & 0xffff0000u);
    h = __floats2bfloat162_rn(x, y);
    p1 = *(uint32_t *)&h;
    x -= __uint_as_float(p1 << 16);
    y -= __uint_as_float(p1 & 0xffff0000u);
    h = __floats2bfloat162_rn(x, y);
    p2 = *(uint32_t *)&h;
}

/* an iteration's tile and k-step, advanced one iteration at a time (x3_sched's order) */
struct xw_cursor {
    int t, kt, row0, col0;
    __device__ __forceinline__ void tile(int nbn) { x3_tile(t, nbn, row0, col0); }
    __device__ __forceinline__ void next(int KT, int nbn)
    {
        if (++kt == KT) {
            kt = 0;
            t += (int)gridDim.x;
            tile(nbn);
        }
    }
};
#endif

template <bool ACC>
__global__ void __launch_bounds__(XW_THREADS, 1)
    k_gemm_x3w(const float *__restrict__ A, const uint16_t *__restrict__ W3,
               const float *__restrict__ bias, float *__restrict__ C, int M, int N, int K,
               int tiles)
{
#ifdef X3W_ON
    extern __shared__ __align__(1024) unsigned char xw_smem[];
    uint16_t *const sw = (uint16_t *)xw_smem;
    const x3_sched sc(N, K, tiles);
    const int iters = sc.iters, KT = sc.KT, nbn = sc.nbn;
    if (iters == 0)
        return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wrow = 64 * (warp >> 2) + 16 * (warp & 3) + (lane >> 2), t4 = lane & 3;
    const size_t nk = (size_t)N * K;
    /* W's stage: 1,536 chunks of 16 B, chunk i = 512 q + 4 n + kc (piece q, column n of the
       tile, k 8 kc .. + 8) at byte 8192 q + 64 n + 16 (kc ^ (n / 2) % 4) (the 64-byte swizzle:
       address bits 4-5 ^= bits 7-8). Thread tid's chunks: i = tid + 256 j, n = tid / 4 + 64 (j %
       2), kc = tid % 4, q = j / 2; a warp's 32 chunks are 8 columns x 64 B, each phase of 8 one
       128-byte line */
    const int w_src = (tid >> 2) * K + (tid & 3) * 8;
    const int w_dst = 8 * (4 * (tid >> 2) + ((tid & 3) ^ ((tid >> 3) & 3)));
    xw_cursor cs, cl; /* the stage being multiplied (it); the stage being loaded (it + 2) */
    cs.t = (int)blockIdx.x;
    cs.kt = 0;
    cs.tile(nbn);
    cl = cs;
    auto load_w = [&](int it) {
        if (it < iters) {
            uint16_t *const dst = sw + (it % XW_NBUF) * XW_BUF + w_dst;
            const uint16_t *const src = W3 + (size_t)cl.col0 * K + cl.kt * XW_BK + w_src;
#pragma unroll
            for (int j = 0; j < 6; j++)
                cp_async16(dst + (j >> 1) * XW_PIECE + (j & 1) * 64 * XW_BK,
                           src + (j >> 1) * nk + (size_t)(j & 1) * 64 * K);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory"); /* one per stage, empty or not */
    };
    /* A: fragment element v = h + 2 c of k-step ks: row wrow + 8 h, columns 16 ks + 2 t4 + 8 c
       and + 1 */
    float2 ra[2][4];
    auto load_a = [&]() {
        const int r = cl.row0 + wrow;
        const float *const p = A + (size_t)r * K + cl.kt * XW_BK + 2 * t4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const bool in = r + 8 * h < M;
#pragma unroll
            for (int ks = 0; ks < 2; ks++)
#pragma unroll
                for (int c = 0; c < 2; c++)
                    ra[ks][h + 2 * c] =
                        in ? __ldg((const float2 *)(p + (size_t)8 * h * K + 16 * ks + 8 * c))
                           : make_float2(0.f, 0.f);
        }
    };
    auto split_a = [&](uint32_t (&af)[2][3][4]) {
#pragma unroll
        for (int ks = 0; ks < 2; ks++)
#pragma unroll
            for (int v = 0; v < 4; v++)
                xw_split2(ra[ks][v].x, ra[ks][v].y, af[ks][0][v], af[ks][1][v], af[ks][2][v]);
    };

    float acc[64], tmp[64];
#pragma unroll
    for (int v = 0; v < 64; v++)
        acc[v] = tmp[v] = 0.f;
    uint32_t af0[2][3][4], af1[2][3][4];

    auto step = [&](int it, uint32_t (&cur)[2][3][4], uint32_t (&nxt)[2][3][4]) {
        asm volatile("cp.async.wait_group 1;\n" ::: "memory"); /* this stage's W has landed */
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* visible to wgmma */
        __syncthreads(); /* everyone's chunks; and stage it - 1's buffer is free (waited) */
        const uint32_t base = smem_u32(sw + (it % XW_NBUF) * XW_BUF);
        constexpr uint32_t P = XW_PIECE * 2, KS = 32; /* bytes: a piece tile; k-step 1's start */
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        /* the small products of both k-steps (a1 w1, a0 w2, a2 w0, a0 w1, a1 w0), then a0 w0 of
           each: two truncations at the scale of the sum per stage (v38's order) */
        xw_mma<0>(tmp, cur[0][1], xw_desc(base + P));
        xw_mma<1>(tmp, cur[0][0], xw_desc(base + 2 * P));
        xw_mma<1>(tmp, cur[0][2], xw_desc(base));
        xw_mma<1>(tmp, cur[0][0], xw_desc(base + P));
        xw_mma<1>(tmp, cur[0][1], xw_desc(base));
        xw_mma<1>(tmp, cur[1][1], xw_desc(base + P + KS));
        xw_mma<1>(tmp, cur[1][0], xw_desc(base + 2 * P + KS));
        xw_mma<1>(tmp, cur[1][2], xw_desc(base + KS));
        xw_mma<1>(tmp, cur[1][0], xw_desc(base + P + KS));
        xw_mma<1>(tmp, cur[1][1], xw_desc(base + KS));
        xw_mma<1>(tmp, cur[0][0], xw_desc(base));
        xw_mma<1>(tmp, cur[1][0], xw_desc(base + KS));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        if (it + 1 < iters)
            split_a(nxt); /* A of stage it + 1, loaded during stage it - 1 */
        if (it + 2 < iters) {
            cl.next(KT, nbn);
            load_w(it + 2); /* into the buffer of stage it - 1 */
            load_a();
        } else
            load_w(it + 2); /* an empty group: wait_group 1 counts one per stage */
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
        for (int ks = 0; ks < 2; ks++)
#pragma unroll
            for (int q = 0; q < 3; q++)
#pragma unroll
                for (int v = 0; v < 4; v++)
                    xw_hold(cur[ks][q][v]);
#pragma unroll
        for (int v = 0; v < 64; v++) {
            xw_hold(tmp[v]);
            acc[v] += tmp[v];
        }
        if (cs.kt == KT - 1) { /* acc[4 j ..]: (row, columns 8 j + 2 t4, + 1), then row + 8 */
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = cs.row0 + wrow + 8 * h;
                if (r < M) {
                    float *const crow = C + (size_t)r * N + cs.col0 + 2 * t4;
#pragma unroll
                    for (int j = 0; j < 16; j++) {
                        float2 v = make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
                        if (bias) {
                            const float2 b =
                                __ldg((const float2 *)(bias + cs.col0 + 2 * t4 + 8 * j));
                            v.x += b.x;
                            v.y += b.y;
                        }
                        if (ACC) {
                            const float2 o = *(const float2 *)(crow + 8 * j);
                            v.x += o.x;
                            v.y += o.y;
                        }
                        *(float2 *)(crow + 8 * j) = v;
                    }
                }
            }
#pragma unroll
            for (int v = 0; v < 64; v++)
                acc[v] = 0.f;
        }
        cs.next(KT, nbn);
    };

    load_w(0);
    load_a();
    split_a(af0);
    if (iters > 1) {
        cl.next(KT, nbn);
        load_w(1);
        load_a();
    } else
        load_w(1);
    for (int it = 0; it < iters; it += 2) {
        step(it, af0, af1);
        if (it + 1 < iters)
            step(it + 1, af1, af0);
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
    (void)A;
    (void)W3;
    (void)bias;
    (void)C;
    (void)M;
    (void)N;
    (void)K;
    (void)tiles;
#endif
}

/* 1 where this compilation has the wgmma kernel (sm_90a machine code), else 0 */
__global__ void k_x3w_probe(int *out)
{
#ifdef X3W_ON
    *out = 1;
#else
    *out = 0;
#endif
}

} // namespace

static int x3_sms = 0;   /* multiprocessors of the device (et_gemm_x3_init) */
static int x3_have_w = 0; /* the wgmma kernel runs here (sm_90 device, sm_90a code in the build) */
static int x3_use_w = 0;  /* et_gemm_x3 takes it (default where it runs; DS4SCI_CUDA_X3=mma: no) */
typedef void (*xw_kernel)(const float *, const uint16_t *, const float *, float *, int, int, int,
                          int);
static const xw_kernel xw_kernels[2] = {k_gemm_x3w<false>, k_gemm_x3w<true>};

extern "C" cudaError_t et_gemm_x3_init(void)
{
    int dev = 0, major = 0, minor = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&x3_sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_gemm_x3<false>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, X3_SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_gemm_x3<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 X3_SMEM);
    x3_have_w = 0;
    if (e == cudaSuccess && major == 9 && minor == 0) {
        /* the build's sm_90a code is what an sm_90 device loads; a build without it (e.g.
           CMAKE_CUDA_ARCHITECTURES=90) has the kernel empty: ask the device which it has */
        int *d = NULL, h = 0;
        e = cudaMalloc(&d, sizeof(int));
        if (e == cudaSuccess) {
            k_x3w_probe<<<1, 1>>>(d);
            e = cudaGetLastError();
            if (e == cudaSuccess)
                e = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
            const cudaError_t f = cudaFree(d);
            if (e == cudaSuccess)
                e = f;
        }
        for (int k = 0; k < 2 && e == cudaSuccess && h == 1; k++)
            e = cudaFuncSetAttribute(xw_kernels[k], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     XW_SMEM);
        x3_have_w = e == cudaSuccess && h == 1;
    }
    const char *v = getenv("DS4SCI_CUDA_X3");
    x3_use_w = x3_have_w && !(v && strcmp(v, "mma") == 0);
    return e;
}

extern "C" int et_gemm_x3_variant(int v)
{
    if (v == 1 && !x3_have_w)
        return -1;
    if (v == 0 || v == 1)
        x3_use_w = v;
    return x3_use_w;
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
    if (x3_use_w)
        xw_kernels[beta != 0.f]<<<grid, XW_THREADS, XW_SMEM, s>>>(A, W3, bias, C, M, N, K, tiles);
    else if (beta != 0.f)
        k_gemm_x3<true><<<grid, X3_THREADS, X3_SMEM, s>>>(A, W3, bias, C, M, N, K, tiles);
    else
        k_gemm_x3<false><<<grid, X3_THREADS, X3_SMEM, s>>>(A, W3, bias, C, M, N, K, tiles);
    return cudaGetLastError();
}
