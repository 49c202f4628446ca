/*
 * edge_gates.cuh - the sender rows that the vector message's gates read, shared by the fused
 * forward (edge_fwd.cu, edge_fwd_tc.cu) and the receiver / merged backward (edge_bwd.cu): v1,
 * v2 (the gate parts of v[s] in qkv, D and 2 D past the value part at vx_off) and vec[s] (zero
 * where the layer has none: layer 0).
 */
#ifndef DS4SCI_EDGE_GATES_CUH
#define DS4SCI_EDGE_GATES_CUH

#include "edge_common.cuh"

/* vec[s]'s three components of the lane's channels f0 .. f0 + CPL - 1 into vs[0..2] (zero
   where vec is NULL) */
template <int CPL>
static __device__ __forceinline__ void ldg_vec_rows(const float *vec, int s, int F, int f0,
                                                    float (*vs)[CPL])
{
    /* one row address, the components at immediate offsets (per component, the 64-bit
       products were computed again: ~20 instructions per edge); one test of vec for the
       three (per component, ptxas computed the predicated address three times) */
    const float *vrow = vec + (size_t)s * 3 * F + f0;
    if (vec) {
#pragma unroll
        for (int cx = 0; cx < 3; cx++)
            ldg_vec<CPL>(vrow + cx * F, vs[cx]);
    } else {
#pragma unroll
        for (int cx = 0; cx < 3; cx++)
#pragma unroll
            for (int j = 0; j < CPL; j++)
                vs[cx][j] = 0.f;
    }
}

template <int CPL>
static __device__ __forceinline__ void ldg_gate_rows(const float *qkv, const float *vec, int s,
                                                     int F, int D, int f0, int vx_off,
                                                     float (&v1)[CPL], float (&v2)[CPL],
                                                     float (&vs)[3][CPL])
{
    const float *srow = qkv + (size_t)s * 5 * F;
    ldg_vec<CPL>(srow + vx_off + D, v1);
    ldg_vec<CPL>(srow + vx_off + 2 * D, v2);
    ldg_vec_rows<CPL>(vec, s, F, f0, vs);
}

#endif
