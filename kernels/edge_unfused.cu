/*
 * edge_unfused.cu - the unfused baseline of the edge passes (issue 5 part 5), selected with
 * DS4SCI_CUDA_EDGE=unfused; benchmark only. Placeholder until the baseline lands: the launchers
 * report cudaErrorNotSupported, so a context created with DS4SCI_CUDA_EDGE=unfused fails its
 * first compute with "edge forward (unfused)" named in the error.
 */
#include "et_cuda.cuh"

extern "C" cudaError_t et_edge_forward_unfused(cudaStream_t s, const et_edge_common *c,
                                               const et_edge_layer *l)
{
    (void)s;
    (void)c;
    (void)l;
    return cudaErrorNotSupported;
}

extern "C" cudaError_t et_edge_backward_unfused(cudaStream_t s, const et_edge_common *c,
                                                const et_edge_layer *l)
{
    (void)s;
    (void)c;
    (void)l;
    return cudaErrorNotSupported;
}

extern "C" void et_unfused_release(void) {}
