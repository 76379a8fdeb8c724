# Tests of the ViT model (src/vit.c, src/vit_kernels.c) and its optimizer (src/adamw.c).
tfuse_add_test_exe(test_vit_grad ${CMAKE_CURRENT_SOURCE_DIR}/test_vit_grad.c)
tfuse_add_mpi_test(NAME vit_grad TARGET test_vit_grad RANKS 1 TIMEOUT 120)

tfuse_add_test_exe(test_vit_adamw ${CMAKE_CURRENT_SOURCE_DIR}/test_vit_adamw.c)
tfuse_add_mpi_test(NAME vit_adamw TARGET test_vit_adamw RANKS 1 TIMEOUT 60)

# Bitwise reproducibility with one OpenBLAS thread (the MPI environment sets 1) and with two.
tfuse_add_test_exe(test_vit_determinism ${CMAKE_CURRENT_SOURCE_DIR}/test_vit_determinism.c)
tfuse_add_mpi_test(NAME vit_determinism TARGET test_vit_determinism RANKS 1 TIMEOUT 120)
add_test(NAME vit_determinism_blas2 COMMAND test_vit_determinism)
set_tests_properties(vit_determinism_blas2 PROPERTIES
  ENVIRONMENT "OPENBLAS_NUM_THREADS=2;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
  TIMEOUT 120 PROCESSORS 2)

# Comparison with an independent PyTorch implementation in float64.
tfuse_add_test_exe(test_vit_torch ${CMAKE_CURRENT_SOURCE_DIR}/test_vit_torch.c)
tfuse_add_mpi_test(NAME vit_torch TARGET test_vit_torch RANKS 1 TIMEOUT 300
  ARGS ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/vit_torch_ref.py)

# Short training run on a learnable synthetic task.
tfuse_add_test_exe(test_vit_train ${CMAKE_CURRENT_SOURCE_DIR}/test_vit_train.c)
tfuse_add_mpi_test(NAME vit_train TARGET test_vit_train RANKS 1 TIMEOUT 120)

# Evaluation of the parents' ensemble, sharded over 2 ranks, against a direct computation.
tfuse_add_test_exe(test_eval_ensemble ${CMAKE_CURRENT_SOURCE_DIR}/test_eval_ensemble.c)
tfuse_add_mpi_test(NAME eval_ensemble TARGET test_eval_ensemble RANKS 2 TIMEOUT 60)
