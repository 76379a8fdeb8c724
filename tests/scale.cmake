# Reproducible reductions and rank-count independence of fusion.
tfuse_add_test_exe(test_reduce test_reduce.c)
tfuse_add_mpi_test(NAME reduce TARGET test_reduce RANKS 1 2 3 4)
