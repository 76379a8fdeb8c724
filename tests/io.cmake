# Tests of the io module: idx reader, HDF5 tensor files, ViT model files.
tfuse_add_test_exe(test_io_idx test_io_idx.c)
tfuse_add_mpi_test(NAME io_idx TARGET test_io_idx RANKS 1)
tfuse_add_test_exe(test_io_h5f test_io_h5f.c)
tfuse_add_mpi_test(NAME io_h5f TARGET test_io_h5f RANKS 1 2 4)
