tfuse_add_test_exe(test_fuse_invariance test_fuse_invariance.c)
tfuse_add_mpi_test(NAME fuse_invariance TARGET test_fuse_invariance RANKS 1 2 4 TIMEOUT 300)
tfuse_add_test_exe(test_job test_job.c)
tfuse_add_mpi_test(NAME job_parse TARGET test_job RANKS 1)
