/*
 * et_math.h - the scalar physics of the ET model, written once for the CPU reference and the
 * CUDA kernels: cosine cutoff, radial basis functions (expnorm, gauss) and activations, each
 * with its derivative. Everything is `static inline` and marked DS4SCI_HD (host + device under
 * nvcc), plain C, no allocation, no globals.
 *
 * Two instantiations of the same source (et_math_impl.h):
 *   double: et_cutoff(), et_act(), ...       (CPU reference, fp64 accumulators on the GPU)
 *   float:  et_cutoff_f(), et_act_f(), ...   (GPU fp32 path)
 *
 * Formulas follow ET_SPEC.md section 2 and TorchMD-Net / PyTorch exactly, including:
 *   - ssp(x) = softplus(x) - shift with shift = float32(ln 2) = 0.693147182464599609375, because
 *     TorchMD-Net computes it as torch.log(torch.tensor(2.0)).item() (a float32 value);
 *   - softplus as PyTorch's F.softplus (beta 1, threshold 20): x itself for x > 20;
 *   - mish(x) = x tanh(softplus(x)) as PyTorch's nn.Mish (no threshold).
 */
#ifndef DS4SCI_ET_MATH_H
#define DS4SCI_ET_MATH_H

#include <math.h>

#include "et_desc.h"

#ifdef __CUDACC__
#define DS4SCI_HD __host__ __device__
#else
#define DS4SCI_HD
#endif

/* float32(ln 2) as TorchMD-Net's ShiftedSoftplus uses it (not the double ln 2). */
#define ET_SSP_SHIFT 0.693147182464599609375
/* PyTorch F.softplus threshold (beta = 1): above it softplus(x) = x and its derivative is 1. */
#define ET_SOFTPLUS_THRESHOLD 20.0
#define ET_PI 3.14159265358979323846

/* ---- double instantiation ---- */
#define ET_T double
#define ET_FN(name) name
#define ET_K(c) (c)
#define ET_EXP exp
#define ET_LOG1P log1p
#define ET_COS cos
#define ET_SIN sin
#define ET_TANH tanh
#define ET_FABS fabs
#include "et_math_impl.h"
#undef ET_T
#undef ET_FN
#undef ET_K
#undef ET_EXP
#undef ET_LOG1P
#undef ET_COS
#undef ET_SIN
#undef ET_TANH
#undef ET_FABS

/* ---- float instantiation: same names with an _f suffix ---- */
#define ET_T float
#define ET_FN(name) name##_f
#define ET_K(c) ((float)(c))
#define ET_EXP expf
#define ET_LOG1P log1pf
#define ET_COS cosf
#define ET_SIN sinf
#define ET_TANH tanhf
#define ET_FABS fabsf
#include "et_math_impl.h"
#undef ET_T
#undef ET_FN
#undef ET_K
#undef ET_EXP
#undef ET_LOG1P
#undef ET_COS
#undef ET_SIN
#undef ET_TANH
#undef ET_FABS

#endif /* DS4SCI_ET_MATH_H */
