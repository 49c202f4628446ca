/*
 * bench_halo_mpi.c - what moving the halo plan's rows between two MPI ranks costs on one host,
 * at the sizes of the 1M-atom Si run on two GPUs (about 47k remote ghost rows per rank, 1 KB per
 * row forward as packed floats, 2 KB reverse), so that the exchange time measured inside
 * pair_style ds4sci can be split into MPI transfer and row copies. Prints, per message size:
 *   memcpy     one host copy of the message (16 threads with OpenMP), GB/s
 *   doubles    both ranks send to and receive from each other at once (Irecv/Isend/Waitall),
 *              counts in doubles; GB/s per direction (bytes one way / time)
 *   rows       the same with a contiguous type of 512 doubles, counts in rows (as
 *              plugin/pair_ds4sci.cpp's halo plan)
 * Medians of 9 repetitions. Build and run (2 ranks; any MPI):
 *   mpicc -O2 -fopenmp examples/bench_halo_mpi.c -o bench_halo_mpi
 *   mpirun -np 2 ./bench_halo_mpi [MB ...]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return t[n / 2];
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int me, np;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &np);
    if (np != 2) {
        if (me == 0)
            fprintf(stderr, "bench_halo_mpi: run on 2 ranks (got %d)\n", np);
        MPI_Finalize();
        return 1;
    }
    double def[] = {1, 8, 48, 96};
    const int nsz = argc > 1 ? argc - 1 : 4;
    enum { REPS = 9 };
    if (me == 0)
        printf("%10s %12s %14s %14s\n", "MB", "memcpy GB/s", "doubles GB/s", "rows GB/s");
    for (int s = 0; s < nsz; s++) {
        const double mb = argc > 1 ? atof(argv[s + 1]) : def[s];
        const size_t n = (size_t)(mb * 1e6 / sizeof(double));
        double *out = malloc(n * sizeof(double)), *in = malloc(n * sizeof(double));
        if (!out || !in)
            MPI_Abort(MPI_COMM_WORLD, 2);
        for (size_t k = 0; k < n; k++)
            out[k] = (double)k, in[k] = 0.0;
        double tc[REPS], td[REPS], tx[REPS];
        for (int r = 0; r < REPS; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
#pragma omp parallel for schedule(static)
            for (long c = 0; c < 64; c++) {
                const size_t a = n * c / 64, b = n * (c + 1) / 64;
                memcpy(in + a, out + a, (b - a) * sizeof(double));
            }
            tc[r] = MPI_Wtime() - t0;
            MPI_Request req[2];
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            MPI_Irecv(in, (int)n, MPI_DOUBLE, 1 - me, 7, MPI_COMM_WORLD, &req[0]);
            MPI_Isend(out, (int)n, MPI_DOUBLE, 1 - me, 7, MPI_COMM_WORLD, &req[1]);
            MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
            td[r] = MPI_Wtime() - t0;
            MPI_Datatype row;
            MPI_Type_contiguous(512, MPI_DOUBLE, &row); /* rows of 4 KB, counts in rows */
            MPI_Type_commit(&row);
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            MPI_Irecv(in, (int)(n / 512), row, 1 - me, 8, MPI_COMM_WORLD, &req[0]);
            MPI_Isend(out, (int)(n / 512), row, 1 - me, 8, MPI_COMM_WORLD, &req[1]);
            MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
            tx[r] = MPI_Wtime() - t0;
            MPI_Type_free(&row);
        }
        const double bytes = (double)(n / 512) * 512 * sizeof(double);
        if (me == 0)
            printf("%10.1f %12.2f %14.2f %14.2f\n", mb, bytes / median(tc, REPS) / 1e9,
                   (double)n * sizeof(double) / median(td, REPS) / 1e9,
                   bytes / median(tx, REPS) / 1e9);
        free(out);
        free(in);
    }
    MPI_Finalize();
    return 0;
}
