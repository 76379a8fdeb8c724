# Reproducible reductions and rank-count independence of fusion.
tfuse_add_test_exe(test_reduce test_reduce.c)
tfuse_add_mpi_test(NAME reduce TARGET test_reduce RANKS 1 2 3 4)
# Each run fuses on MPI_COMM_WORLD and, on rank 0, on MPI_COMM_SELF, and compares bitwise.
tfuse_add_test_exe(test_fuse_determinism test_fuse_determinism.c)
tfuse_add_mpi_test(NAME fuse_determinism TARGET test_fuse_determinism RANKS 1 2 4 8)
