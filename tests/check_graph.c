/*
 * check_graph.c - ds4sci_graph_build against brute force: for every owned atom, the set of
 * (atom, periodic image) pairs closer than the cutoff, enumerated over all images in a
 * generous range, must equal the graph's neighbour list, with no duplicates; ghosts must
 * be exact images of their owners.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4sci.h"
#include "test_util.h"

typedef struct pair_key {
    int32_t j, m[3];
} pair_key;

static int key_cmp(const void *a, const void *b) {
    const pair_key *x = a, *y = b;
    if (x->j != y->j)
        return x->j < y->j ? -1 : 1;
    for (int k = 0; k < 3; k++)
        if (x->m[k] != y->m[k])
            return x->m[k] < y->m[k] ? -1 : 1;
    return 0;
}

static void inv3(const double m[9], double r[9]) {
    double det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
                 m[2] * (m[3] * m[7] - m[4] * m[6]);
    r[0] = (m[4] * m[8] - m[5] * m[7]) / det;
    r[1] = (m[2] * m[7] - m[1] * m[8]) / det;
    r[2] = (m[1] * m[5] - m[2] * m[4]) / det;
    r[3] = (m[5] * m[6] - m[3] * m[8]) / det;
    r[4] = (m[0] * m[8] - m[2] * m[6]) / det;
    r[5] = (m[2] * m[3] - m[0] * m[5]) / det;
    r[6] = (m[3] * m[7] - m[4] * m[6]) / det;
    r[7] = (m[1] * m[6] - m[0] * m[7]) / det;
    r[8] = (m[0] * m[4] - m[1] * m[3]) / det;
}

/* Image shift M of a graph atom (owned: 0; ghost: from its position and owner's). */
static void image_of(const ds4sci_system *s, const double *Bi, int32_t a, pair_key *k) {
    if (a < s->n_local) {
        k->j = a;
        k->m[0] = k->m[1] = k->m[2] = 0;
        return;
    }
    const int32_t j = s->ghost_owner[a - s->n_local];
    double d[3];
    for (int c = 0; c < 3; c++)
        d[c] = s->pos[3 * (size_t)a + c] - s->pos[3 * (size_t)j + c];
    k->j = j;
    for (int q = 0; q < 3; q++) {
        double f = d[0] * Bi[q] + d[1] * Bi[3 + q] + d[2] * Bi[6 + q];
        k->m[q] = (int32_t)lround(f);
        ck_assert_msg(fabs(f - k->m[q]) < 1e-9, "ghost %d is not a lattice image of atom %d", a, j);
    }
    ck_assert_int_eq(s->z[a], s->z[j]);
}

static void check_against_brute_force(const double *pos, const int32_t *z, int n, const double *box,
                                      double cutoff) {
    ds4sci_graph *g = NULL;
    ds4sci_system s;
    char err[256];
    ds4sci_status st = ds4sci_graph_build(pos, z, n, box, cutoff, &g, &s, err, sizeof(err));
    ck_assert_msg(st == DS4SCI_OK, "graph_build: %s", err);
    ck_assert_int_eq(s.n_local, n);
    ck_assert_int_eq(s.nbr_offset[0], 0);

    double B[9] = {0}, Bi[9] = {0};
    int R[3] = {0, 0, 0};
    if (box) {
        memcpy(B, box, sizeof(B));
        inv3(B, Bi);
        for (int q = 0; q < 3; q++) {
            double col = sqrt(Bi[q] * Bi[q] + Bi[3 + q] * Bi[3 + q] + Bi[6 + q] * Bi[6 + q]);
            /* positions span up to ~2 boxes in the tests, so reach a few more images */
            R[q] = (int)ceil(cutoff * col) + 3;
        }
    } else {
        Bi[0] = Bi[4] = Bi[8] = 1.0;
    }
    const double cut2 = cutoff * cutoff;
    size_t cap = 1024;
    pair_key *want = malloc(sizeof(pair_key) * cap), *got = malloc(sizeof(pair_key) * cap);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t nw = 0;
        for (int j = 0; j < n; j++)
            for (int m0 = -R[0]; m0 <= R[0]; m0++)
                for (int m1 = -R[1]; m1 <= R[1]; m1++)
                    for (int m2 = -R[2]; m2 <= R[2]; m2++) {
                        if (j == i && m0 == 0 && m1 == 0 && m2 == 0)
                            continue;
                        double d2 = 0.0;
                        for (int c = 0; c < 3; c++) {
                            double p = pos[3 * j + c] + m0 * B[c] + m1 * B[3 + c] + m2 * B[6 + c];
                            double dx = p - pos[3 * i + c];
                            d2 += dx * dx;
                        }
                        if (d2 >= cut2)
                            continue;
                        if (nw == cap) {
                            cap *= 2;
                            want = realloc(want, sizeof(pair_key) * cap);
                            got = realloc(got, sizeof(pair_key) * cap);
                        }
                        want[nw].j = j;
                        want[nw].m[0] = m0;
                        want[nw].m[1] = m1;
                        want[nw].m[2] = m2;
                        nw++;
                    }
        const size_t ng = (size_t)(s.nbr_offset[i + 1] - s.nbr_offset[i]);
        ck_assert_msg(ng == nw, "atom %d: graph has %zu neighbours, brute force %zu", i, ng, nw);
        for (size_t k = 0; k < ng; k++)
            image_of(&s, Bi, s.nbr_index[s.nbr_offset[i] + k], &got[k]);
        qsort(want, nw, sizeof(pair_key), key_cmp);
        qsort(got, ng, sizeof(pair_key), key_cmp);
        for (size_t k = 0; k < nw; k++) {
            ck_assert_msg(key_cmp(&want[k], &got[k]) == 0,
                          "atom %d: neighbour %zu differs: want atom %d image (%d %d %d), got atom "
                          "%d image (%d %d %d)",
                          i, k, want[k].j, want[k].m[0], want[k].m[1], want[k].m[2], got[k].j,
                          got[k].m[0], got[k].m[1], got[k].m[2]);
            if (k > 0)
                ck_assert_msg(key_cmp(&got[k - 1], &got[k]) != 0, "atom %d: duplicate neighbour",
                              i);
        }
        total += (int64_t)nw;
    }
    /* every ghost is used by some owned atom (no useless ghosts) */
    char *used = calloc((size_t)s.n_ghost + 1, 1);
    for (int64_t k = 0; k < s.nbr_offset[n]; k++)
        if (s.nbr_index[k] >= n)
            used[s.nbr_index[k] - n] = 1;
    for (int32_t q = 0; q < s.n_ghost; q++)
        ck_assert_msg(used[q], "ghost %d is nobody's neighbour", q);
    ck_assert_int_eq(s.nbr_offset[n], total);
    free(used);
    free(want);
    free(got);
    ds4sci_graph_free(g);
}

static void random_case(int idx, int periodic, int triclinic, double side, double cutoff, int n,
                        double spread) {
    tu_rng r = {4242 + (uint64_t)idx};
    double *pos = malloc(sizeof(double) * 3 * n);
    int32_t *z = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < 3; c++)
            pos[3 * i + c] = tu_range(&r, -spread * side, (1.0 + spread) * side);
        z[i] = 1 + (int32_t)(tu_next(&r) % 5);
    }
    double box[9] = {side, 0, 0, 0, side * 1.1, 0, 0, 0, side * 0.9};
    if (triclinic) {
        box[3] = tu_range(&r, -0.5, 0.5) * side;
        box[6] = tu_range(&r, -0.5, 0.5) * side;
        box[7] = tu_range(&r, -0.5, 0.5) * side * 1.1;
    }
    check_against_brute_force(pos, z, n, periodic ? box : NULL, cutoff);
    free(pos);
    free(z);
}

START_TEST(orthorhombic_box_matches_brute_force) {
    random_case(_i, 1, 0, 12.0, 4.0, 150, 0.0);
}
END_TEST

START_TEST(triclinic_box_matches_brute_force) {
    random_case(_i, 1, 1, 12.0, 4.0, 150, 0.0);
}
END_TEST

START_TEST(small_box_several_images_match_brute_force) {
    /* box edges below 2 cutoffs (and below one cutoff): an atom sees several images of
       another, and images of itself */
    random_case(_i, 1, _i % 2, _i < 2 ? 6.0 : 3.0, 4.0, 10, 0.0);
}
END_TEST

START_TEST(unwrapped_positions_match_brute_force) {
    /* positions up to half a box outside: owned atoms keep them, ghosts follow */
    random_case(_i, 1, 1, 9.0, 3.5, 60, 0.5);
}
END_TEST

START_TEST(open_boundaries_match_brute_force) {
    random_case(_i, 0, 0, 15.0, 4.0, 200, 0.0);
}
END_TEST

START_TEST(empty_and_single_atom) {
    double box[9] = {5, 0, 0, 0, 5, 0, 0, 0, 5};
    double pos[3] = {1, 1, 1};
    int32_t z[1] = {1};
    check_against_brute_force(pos, z, 0, box, 3.0);
    check_against_brute_force(pos, z, 1, NULL, 3.0);
    check_against_brute_force(pos, z, 1, box, 3.0); /* sees its own images */
}
END_TEST

START_TEST(bad_arguments_are_refused) {
    ds4sci_graph *g = NULL;
    ds4sci_system s;
    char err[256];
    double pos[6] = {0, 0, 0, 1, NAN, 0};
    int32_t z[2] = {1, 1};
    double bad_box[9] = {5, 1, 0, 0, 5, 0, 0, 0, 5};
    ck_assert_int_eq(ds4sci_graph_build(pos, z, 2, NULL, 3.0, &g, &s, err, sizeof(err)),
                     DS4SCI_ERR_INPUT);
    ck_assert_ptr_null(g);
    ck_assert_ptr_nonnull(strstr(err, "atom 1"));
    pos[4] = 0.0;
    ck_assert_int_eq(ds4sci_graph_build(pos, z, 2, bad_box, 3.0, &g, &s, err, sizeof(err)),
                     DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_graph_build(pos, z, 2, NULL, -1.0, &g, &s, err, sizeof(err)),
                     DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_graph_build(pos, NULL, 2, NULL, 3.0, &g, &s, err, sizeof(err)),
                     DS4SCI_ERR_ARG);
    double far[6] = {0, 0, 0, 1e9, 0, 0};
    double box[9] = {5, 0, 0, 0, 5, 0, 0, 0, 5};
    ck_assert_int_eq(ds4sci_graph_build(far, z, 2, box, 3.0, &g, &s, err, sizeof(err)),
                     DS4SCI_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "atom 1"));
    ds4sci_graph_free(NULL);
}
END_TEST

static Suite *graph_suite(void) {
    Suite *s = suite_create("graph");
    TCase *tc = tcase_create("brute_force");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, orthorhombic_box_matches_brute_force, 0, 3);
    tcase_add_loop_test(tc, triclinic_box_matches_brute_force, 0, 4);
    tcase_add_loop_test(tc, small_box_several_images_match_brute_force, 0, 4);
    tcase_add_loop_test(tc, unwrapped_positions_match_brute_force, 0, 2);
    tcase_add_loop_test(tc, open_boundaries_match_brute_force, 0, 2);
    tcase_add_test(tc, empty_and_single_atom);
    tcase_add_test(tc, bad_arguments_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(graph_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
