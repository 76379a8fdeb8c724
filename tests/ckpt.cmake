# Training checkpoints, resumed training and resumed BERT fuse jobs, bitwise against
# uninterrupted runs.
tfuse_add_test_exe(test_ckpt ${CMAKE_CURRENT_SOURCE_DIR}/test_ckpt.c)
tfuse_add_mpi_test(NAME ckpt_resume TARGET test_ckpt RANKS 1 2 TIMEOUT 300)
