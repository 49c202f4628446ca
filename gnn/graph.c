/*
 * graph.c - neighbour lists with periodic ghost atoms for callers without an MD engine
 * (tests, benchmarks, examples): ds4sci_graph_build. A cell list over fractional
 * coordinates, O(N) for a fixed density.
 *
 * Periodic boxes: atom i is wrapped into the box (p'_i = p_i - S_i B, S_i integer) for the
 * search only. For each owned i and each image p'_j + L B of atom j within the cutoff of
 * p'_i, the neighbour is atom j shifted by M = L - S_j + S_i, whose position is p_j + M B, so
 * that it lies within the cutoff of the caller's (unwrapped) p_i. M = 0 is the owned atom j
 * itself; any other M is a ghost, created once per (j, M) and reused. Boxes smaller than two
 * cutoffs work: the stencil reaches as many images as the cutoff needs.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4sci.h"
#include "err.h"

struct ds4sci_graph {
    int32_t n_local, n_ghost;
    double *pos;          /* [n_total][3] */
    int32_t *z;           /* [n_total] */
    int64_t *nbr_offset;  /* [n_local + 1] */
    int32_t *nbr_index;   /* [n_pairs] */
    int32_t *ghost_owner; /* [n_ghost] */
};

/* Growable arrays; return 0 on allocation failure. */
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 1;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return 0;
    *p = q;
    *cap = c;
    return 1;
}

/* Ghost key: (owner j, image shift M). */
typedef struct ghost_key {
    int32_t j, m[3];
} ghost_key;

typedef struct ghost_map {
    int32_t *slot; /* [cap] ghost index + 1, 0 = empty */
    size_t cap;    /* power of two */
} ghost_map;

static size_t key_hash(const ghost_key *k) {
    uint64_t h = (uint64_t)(uint32_t)k->j * 0x9E3779B97F4A7C15ull;
    for (int c = 0; c < 3; c++)
        h = (h ^ (uint64_t)(uint32_t)(k->m[c] + 4096)) * 0xBF58476D1CE4E5B9ull;
    return (size_t)(h ^ (h >> 31));
}

typedef struct builder {
    ghost_map map;
    ghost_key *keys; /* [n_ghost] */
    size_t cap_keys;
    double *gpos; /* [n_ghost][3] */
    size_t cap_gpos;
    int32_t n_ghost;
    int32_t *nbr;
    size_t cap_nbr, n_nbr;
} builder;

static int map_rehash(builder *b, size_t cap) {
    int32_t *slot = (int32_t *)calloc(cap, sizeof(int32_t));
    if (!slot)
        return 0;
    for (int32_t g = 0; g < b->n_ghost; g++) {
        size_t h = key_hash(&b->keys[g]) & (cap - 1);
        while (slot[h])
            h = (h + 1) & (cap - 1);
        slot[h] = g + 1;
    }
    free(b->map.slot);
    b->map.slot = slot;
    b->map.cap = cap;
    return 1;
}

/* Index (n_local + g) of the ghost for key k at position p, created if new; -1 on NOMEM. */
static int64_t ghost_get(builder *b, int32_t n_local, const ghost_key *k, const double p[3]) {
    if ((size_t)(b->n_ghost + 1) * 2 > b->map.cap &&
        !map_rehash(b, b->map.cap ? b->map.cap * 2 : 1024))
        return -1;
    size_t h = key_hash(k) & (b->map.cap - 1);
    while (b->map.slot[h]) {
        const ghost_key *o = &b->keys[b->map.slot[h] - 1];
        if (o->j == k->j && o->m[0] == k->m[0] && o->m[1] == k->m[1] && o->m[2] == k->m[2])
            return (int64_t)n_local + b->map.slot[h] - 1;
        h = (h + 1) & (b->map.cap - 1);
    }
    if ((int64_t)n_local + b->n_ghost >= INT32_MAX)
        return -1;
    if (!grow((void **)&b->keys, &b->cap_keys, (size_t)b->n_ghost + 1, sizeof(ghost_key)) ||
        !grow((void **)&b->gpos, &b->cap_gpos, 3 * ((size_t)b->n_ghost + 1), sizeof(double)))
        return -1;
    b->keys[b->n_ghost] = *k;
    memcpy(b->gpos + 3 * (size_t)b->n_ghost, p, 3 * sizeof(double));
    b->map.slot[h] = ++b->n_ghost;
    return (int64_t)n_local + b->n_ghost - 1;
}

static void builder_free(builder *b) {
    free(b->map.slot);
    free(b->keys);
    free(b->gpos);
    free(b->nbr);
}

void ds4sci_graph_free(ds4sci_graph *g) {
    if (!g)
        return;
    free(g->pos);
    free(g->z);
    free(g->nbr_offset);
    free(g->nbr_index);
    free(g->ghost_owner);
    free(g);
}

/* Inverse of a 3x3 matrix (row-major); returns 0 if singular. */
static int inv3(const double m[9], double r[9]) {
    double det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
                 m[2] * (m[3] * m[7] - m[4] * m[6]);
    if (!(fabs(det) > 0.0) || !isfinite(det))
        return 0;
    r[0] = (m[4] * m[8] - m[5] * m[7]) / det;
    r[1] = (m[2] * m[7] - m[1] * m[8]) / det;
    r[2] = (m[1] * m[5] - m[2] * m[4]) / det;
    r[3] = (m[5] * m[6] - m[3] * m[8]) / det;
    r[4] = (m[0] * m[8] - m[2] * m[6]) / det;
    r[5] = (m[2] * m[3] - m[0] * m[5]) / det;
    r[6] = (m[3] * m[7] - m[4] * m[6]) / det;
    r[7] = (m[1] * m[6] - m[0] * m[7]) / det;
    r[8] = (m[0] * m[4] - m[1] * m[3]) / det;
    return 1;
}

/* Cell-sorted candidates and the search parameters. */
typedef struct scan {
    double *cpos;              /* [n][3] positions as given, in cell order */
    int32_t *cshift;           /* [n][3] wrap shifts S, in cell order */
    const int32_t *catom;      /* [n] atom at each cell-order slot */
    const int64_t *cell_start; /* [n_cells + 1] */
    int ncell[3], reach[3], periodic;
    double *cwrap; /* [n][3] wrapped positions p - S B, in cell order */
    double B[9], cut2, cut2_loose;
} scan;

/*
 * Neighbours of the atom at cell-order slot q (in cell `cell`): every (j, M) with
 * |p_j + M B - p_i| < cutoff other than (i, 0). Counts them when out is NULL; otherwise
 * writes their indices (j, or the ghost for (j, M), created in b on first sight) to out.
 * Returns the count, or -1 when a ghost cannot be allocated.
 */
static int64_t scan_atom(const scan *sc, int32_t q, int32_t cell, builder *b, int32_t n_atoms,
                         int32_t *out) {
    const int32_t i = sc->catom[q];
    const double *pi = sc->cpos + 3 * (size_t)q;
    const int32_t *si = sc->cshift + 3 * (size_t)q;
    const double *wi = sc->cwrap + 3 * (size_t)q;
    const int *nc = sc->ncell;
    const int c0 = cell % nc[0], c1 = (cell / nc[0]) % nc[1], c2 = cell / (nc[0] * nc[1]);
    int64_t count = 0;
    for (int d2 = -sc->reach[2]; d2 <= sc->reach[2]; d2++) {
        for (int d1 = -sc->reach[1]; d1 <= sc->reach[1]; d1++) {
            for (int d0 = -sc->reach[0]; d0 <= sc->reach[0]; d0++) {
                const int a[3] = {c0 + d0, c1 + d1, c2 + d2};
                int cl[3], L[3], skip = 0;
                for (int k = 0; k < 3; k++) {
                    int r = a[k] % nc[k];
                    if (r < 0)
                        r += nc[k];
                    cl[k] = r;
                    L[k] = (a[k] - r) / nc[k];
                    if (!sc->periodic && L[k] != 0)
                        skip = 1;
                }
                if (skip)
                    continue;
                const size_t cc = ((size_t)cl[2] * nc[1] + cl[1]) * nc[0] + cl[0];
                const double *B = sc->B;
                double off[3]; /* L B */
                for (int c = 0; c < 3; c++)
                    off[c] = L[0] * B[c] + L[1] * B[3 + c] + L[2] * B[6 + c];
                for (int64_t t = sc->cell_start[cc]; t < sc->cell_start[cc + 1]; t++) {
                    /* cheap test in the wrapped frame, exact one below */
                    const double *wj = sc->cwrap + 3 * (size_t)t;
                    const double ex = wj[0] + off[0] - wi[0], ey = wj[1] + off[1] - wi[1],
                                 ez = wj[2] + off[2] - wi[2];
                    if (ex * ex + ey * ey + ez * ez >= sc->cut2_loose)
                        continue;
                    const int32_t j = sc->catom[t];
                    const int32_t *sj = sc->cshift + 3 * (size_t)t;
                    ghost_key key;
                    key.j = j;
                    int zero = 1;
                    for (int k = 0; k < 3; k++) {
                        key.m[k] = L[k] - sj[k] + si[k];
                        zero &= key.m[k] == 0;
                    }
                    if (zero && j == i)
                        continue;
                    const double *pj0 = sc->cpos + 3 * (size_t)t;
                    double pj[3];
                    for (int c = 0; c < 3; c++)
                        pj[c] =
                            pj0[c] + (key.m[0] * B[c] + key.m[1] * B[3 + c] + key.m[2] * B[6 + c]);
                    const double dx = pj[0] - pi[0], dy = pj[1] - pi[1], dz = pj[2] - pi[2];
                    if (dx * dx + dy * dy + dz * dz >= sc->cut2)
                        continue;
                    if (out) {
                        int64_t idx = zero ? j : ghost_get(b, n_atoms, &key, pj);
                        if (idx < 0)
                            return -1;
                        out[count] = (int32_t)idx;
                    }
                    count++;
                }
            }
        }
    }
    return count;
}

ds4sci_status ds4sci_graph_build(const double *pos, const int32_t *z, int32_t n_atoms,
                                 const double *box, double cutoff, ds4sci_graph **graph,
                                 ds4sci_system *system, char *err, size_t err_len) {
    if (err && err_len)
        err[0] = '\0';
    if (!graph || !system) {
        ds4sci_errf(err, err_len, "ds4sci_graph_build: %s is NULL", graph ? "system" : "graph");
        return DS4SCI_ERR_ARG;
    }
    *graph = NULL;
    memset(system, 0, sizeof(*system));
    if (n_atoms < 0 || (n_atoms > 0 && (!pos || !z))) {
        ds4sci_errf(err, err_len, "ds4sci_graph_build: n_atoms = %d with pos %s, z %s",
                    (int)n_atoms, pos ? "set" : "NULL", z ? "set" : "NULL");
        return DS4SCI_ERR_ARG;
    }
    if (!(cutoff > 0.0) || !isfinite(cutoff)) {
        ds4sci_errf(err, err_len, "ds4sci_graph_build: cutoff = %g, expected a positive number",
                    cutoff);
        return DS4SCI_ERR_ARG;
    }
    for (int32_t i = 0; i < n_atoms; i++)
        if (!isfinite(pos[3 * i]) || !isfinite(pos[3 * i + 1]) || !isfinite(pos[3 * i + 2])) {
            ds4sci_errf(err, err_len, "ds4sci_graph_build: atom %d has a non-finite position",
                        (int)i);
            return DS4SCI_ERR_INPUT;
        }

    /* Fractional frame: f = (p - origin) B^-1 (rows of B are the box vectors). Open
       boundaries use the bounding box as a non-periodic, orthorhombic B. */
    const int periodic = box != NULL;
    double B[9] = {0}, Bi[9], origin[3] = {0, 0, 0};
    if (periodic) {
        memcpy(B, box, sizeof(B));
        if (B[1] != 0.0 || B[2] != 0.0 || B[5] != 0.0 || !(B[0] > 0.0) || !(B[4] > 0.0) ||
            !(B[8] > 0.0)) {
            ds4sci_errf(err, err_len,
                        "ds4sci_graph_build: box rows a, b, c must be in LAMMPS reduced form "
                        "(a_y = a_z = b_z = 0, a_x, b_y, c_z > 0); got a = (%g, %g, %g), b = (%g, "
                        "%g, %g), c = (%g, %g, %g)",
                        B[0], B[1], B[2], B[3], B[4], B[5], B[6], B[7], B[8]);
            return DS4SCI_ERR_ARG;
        }
    } else {
        double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
        for (int32_t i = 0; i < n_atoms; i++)
            for (int c = 0; c < 3; c++) {
                double v = pos[3 * i + c];
                if (i == 0 || v < lo[c])
                    lo[c] = v;
                if (i == 0 || v > hi[c])
                    hi[c] = v;
            }
        for (int c = 0; c < 3; c++) {
            origin[c] = lo[c];
            double ext = (hi[c] - lo[c]) * (1.0 + 1e-12);
            B[4 * c] = ext > cutoff ? ext : cutoff;
        }
    }
    if (!inv3(B, Bi)) {
        ds4sci_errf(err, err_len, "ds4sci_graph_build: singular box");
        return DS4SCI_ERR_ARG;
    }

    /* Cells per direction (fractional width >= cutoff |col_k(B^-1)|, at most ~2 N cells in
       all) and the stencil reach in cells. */
    int ncell[3], reach[3];
    double gk[3];
    for (int k = 0; k < 3; k++) {
        gk[k] = cutoff * sqrt(Bi[k] * Bi[k] + Bi[3 + k] * Bi[3 + k] + Bi[6 + k] * Bi[6 + k]);
        double nk = floor(1.0 / gk[k]);
        ncell[k] = nk < 1.0 ? 1 : nk > 1024.0 ? 1024 : (int)nk;
    }
    while ((double)ncell[0] * ncell[1] * ncell[2] > 2.0 * n_atoms + 27.0) {
        int kmax = 0;
        for (int k = 1; k < 3; k++)
            if (ncell[k] > ncell[kmax])
                kmax = k;
        ncell[kmax] = (ncell[kmax] + 1) / 2;
    }
    for (int k = 0; k < 3; k++) {
        reach[k] = (int)ceil(gk[k] * ncell[k] - 1e-12);
        if (!periodic && reach[k] > ncell[k] - 1)
            reach[k] = ncell[k] - 1 > 0 ? ncell[k] - 1 : 0;
    }
    const size_t n_cells = (size_t)ncell[0] * ncell[1] * ncell[2];

    ds4sci_graph *g = (ds4sci_graph *)calloc(1, sizeof(*g));
    int32_t *shift = (int32_t *)malloc(sizeof(int32_t) * 3 * ((size_t)n_atoms + 1));
    int32_t *cell_of = (int32_t *)malloc(sizeof(int32_t) * ((size_t)n_atoms + 1));
    int64_t *cell_start = (int64_t *)calloc(n_cells + 1, sizeof(int64_t));
    int32_t *cell_atoms = (int32_t *)malloc(sizeof(int32_t) * ((size_t)n_atoms + 1));
    int64_t *offset = (int64_t *)malloc(sizeof(int64_t) * ((size_t)n_atoms + 1));
    builder b;
    memset(&b, 0, sizeof(b));
    scan sc;
    memset(&sc, 0, sizeof(sc));
    ds4sci_status status = DS4SCI_ERR_NOMEM;
    if (!g || !shift || !cell_of || !cell_start || !cell_atoms || !offset)
        goto done;

    /* bin by the wrapped fractional position; remember the wrap shift S_i */
    for (int32_t i = 0; i < n_atoms; i++) {
        double p[3], f[3];
        for (int c = 0; c < 3; c++)
            p[c] = pos[3 * i + c] - origin[c];
        for (int k = 0; k < 3; k++)
            f[k] = p[0] * Bi[k] + p[1] * Bi[3 + k] + p[2] * Bi[6 + k];
        int cidx[3];
        for (int k = 0; k < 3; k++) {
            double s = periodic ? floor(f[k]) : 0.0;
            if (fabs(s) > 1e6) { /* image shifts are int32 and ghost keys small integers */
                ds4sci_errf(err, err_len,
                            "ds4sci_graph_build: atom %d lies %g box lengths outside the box "
                            "(at most 1e6 allowed)",
                            (int)i, s);
                status = DS4SCI_ERR_INPUT;
                goto done;
            }
            shift[3 * i + k] = (int32_t)s;
            double fk = f[k] - s;
            int ci = (int)floor(fk * ncell[k]);
            cidx[k] = ci < 0 ? 0 : ci >= ncell[k] ? ncell[k] - 1 : ci;
        }
        cell_of[i] = (cidx[2] * ncell[1] + cidx[1]) * ncell[0] + cidx[0];
        cell_start[cell_of[i] + 1]++;
    }
    for (size_t c = 0; c < n_cells; c++)
        cell_start[c + 1] += cell_start[c];
    {
        /* counting sort, stable in atom order */
        int64_t *fill = (int64_t *)malloc(sizeof(int64_t) * (n_cells + 1));
        if (!fill)
            goto done;
        memcpy(fill, cell_start, sizeof(int64_t) * (n_cells + 1));
        for (int32_t i = 0; i < n_atoms; i++)
            cell_atoms[fill[cell_of[i]]++] = i;
        free(fill);
    }

    /* Candidates in cell order, contiguous per cell (positions, wrap shifts, atom ids), and
       receivers visited in cell order too: neighbouring receivers share cells, so the
       search stays in cache for large systems. */
    sc.cpos = (double *)malloc(sizeof(double) * 3 * ((size_t)n_atoms + 1));
    sc.cshift = (int32_t *)malloc(sizeof(int32_t) * 3 * ((size_t)n_atoms + 1));
    sc.cwrap = (double *)malloc(sizeof(double) * 3 * ((size_t)n_atoms + 1));
    sc.catom = cell_atoms;
    sc.cell_start = cell_start;
    if (!sc.cpos || !sc.cshift || !sc.cwrap)
        goto done;
    for (int32_t q = 0; q < n_atoms; q++) {
        const int32_t i = cell_atoms[q];
        const int32_t *S = shift + 3 * (size_t)i;
        memcpy(sc.cpos + 3 * (size_t)q, pos + 3 * (size_t)i, sizeof(double) * 3);
        memcpy(sc.cshift + 3 * (size_t)q, S, sizeof(int32_t) * 3);
        for (int c = 0; c < 3; c++)
            sc.cwrap[3 * (size_t)q + c] =
                pos[3 * (size_t)i + c] - (S[0] * B[c] + S[1] * B[3 + c] + S[2] * B[6 + c]);
    }
    memcpy(sc.ncell, ncell, sizeof(ncell));
    memcpy(sc.reach, reach, sizeof(reach));
    memcpy(sc.B, B, sizeof(B));
    sc.periodic = periodic;
    sc.cut2 = cutoff * cutoff;
    sc.cut2_loose = sc.cut2 * (1.0 + 1e-9) + 1e-12;

    /* count (parallel, read-only), offsets in atom order, then fill (serial: ghosts are
       numbered in the order they are first met, receivers in cell order) */
#pragma omp parallel for schedule(dynamic, 256)
    for (int32_t q = 0; q < n_atoms; q++)
        offset[cell_atoms[q] + 1] = scan_atom(&sc, q, cell_of[cell_atoms[q]], NULL, n_atoms, NULL);
    offset[0] = 0;
    for (int32_t i = 0; i < n_atoms; i++)
        offset[i + 1] += offset[i];
    b.n_nbr = (size_t)offset[n_atoms];
    if (!grow((void **)&b.nbr, &b.cap_nbr, b.n_nbr + 1, sizeof(int32_t)))
        goto done;
    for (int32_t q = 0; q < n_atoms; q++) {
        const int32_t i = cell_atoms[q];
        if (scan_atom(&sc, q, cell_of[i], &b, n_atoms, b.nbr + offset[i]) < 0)
            goto done;
    }

    {
        const size_t n_total = (size_t)n_atoms + b.n_ghost;
        g->n_local = n_atoms;
        g->n_ghost = b.n_ghost;
        g->pos = (double *)malloc(sizeof(double) * 3 * (n_total + 1));
        g->z = (int32_t *)malloc(sizeof(int32_t) * (n_total + 1));
        g->ghost_owner = (int32_t *)malloc(sizeof(int32_t) * ((size_t)b.n_ghost + 1));
        g->nbr_index = (int32_t *)malloc(sizeof(int32_t) * (b.n_nbr + 1));
        if (!g->pos || !g->z || !g->ghost_owner || !g->nbr_index)
            goto done;
        if (n_atoms) {
            memcpy(g->pos, pos, sizeof(double) * 3 * (size_t)n_atoms);
            memcpy(g->z, z, sizeof(int32_t) * (size_t)n_atoms);
        }
        for (int32_t k = 0; k < b.n_ghost; k++) {
            memcpy(g->pos + 3 * ((size_t)n_atoms + k), b.gpos + 3 * (size_t)k, sizeof(double) * 3);
            g->z[n_atoms + k] = z[b.keys[k].j];
            g->ghost_owner[k] = b.keys[k].j;
        }
        if (b.n_nbr)
            memcpy(g->nbr_index, b.nbr, sizeof(int32_t) * b.n_nbr);
        g->nbr_offset = offset;
        offset = NULL;
    }

    system->n_local = g->n_local;
    system->n_ghost = g->n_ghost;
    system->pos = g->pos;
    system->z = g->z;
    system->nbr_offset = g->nbr_offset;
    system->nbr_index = g->nbr_index;
    system->ghost_owner = g->ghost_owner;
    *graph = g;
    g = NULL;
    status = DS4SCI_OK;

done:
    if (status == DS4SCI_ERR_NOMEM)
        ds4sci_errf(err, err_len, "ds4sci_graph_build: out of memory (%d atoms, %zu pairs so far)",
                    (int)n_atoms, b.n_nbr);
    ds4sci_graph_free(g);
    builder_free(&b);
    free(sc.cpos);
    free(sc.cshift);
    free(sc.cwrap);
    free(shift);
    free(cell_of);
    free(cell_start);
    free(cell_atoms);
    free(offset);
    return status;
}
