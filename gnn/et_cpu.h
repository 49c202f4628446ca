/*
 * et_cpu.h - the float64 CPU reference backend (et_cpu.c), beyond its backend table
 * (ds4sci_backend_cpu in backend.h): introspection of its workspace, for tests and
 * benchmarks. gnn/ and tests/ only.
 */
#ifndef DS4SCI_ET_CPU_H
#define DS4SCI_ET_CPU_H

#include <stddef.h>
#include <stdint.h>

/* Bytes currently held by the workspace of a CPU backend state. */
size_t ds4sci_cpu_workspace_bytes(const void *state);

/* How many times the workspace has been (re)allocated since create(): it grows
   geometrically with the atom and edge counts and is never allocated per call once sized. */
int64_t ds4sci_cpu_workspace_allocs(const void *state);

/* Largest edge-filter cache allowed: 2 (default) every layer's filters when they fit,
   1 only the current layer's for the backward, 0 none (recompute). All give identical
   results (tests compare them); the cache is bounded (256 MB) whatever the level. */
void ds4sci_cpu_set_filter_cache(void *state, int level);

/* OpenMP threads a compute() uses (1 without OpenMP). */
int ds4sci_cpu_threads(const void *state);

#endif /* DS4SCI_ET_CPU_H */
