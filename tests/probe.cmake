# Tests of probes in a child process (io/probe.c, h5f_probe), with mock probe functions
# and a file that crashes HDF5 1.10 from the fuzzing regression inputs.
tfuse_add_test_exe(test_io_probe test_io_probe.c)
tfuse_add_mpi_test(NAME io_probe TARGET test_io_probe RANKS 1 2
  ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/regress/model/memcpy-overlap.h5)
