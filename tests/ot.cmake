# Tests of the OT module. At test time tests/ot_oracle.py (run by TFUSE_PYTHON) writes
# problems and POT's solutions into the build directory, and the C tests read them.
add_test(NAME ot_oracle_generate
  COMMAND ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/ot_oracle.py
          ${CMAKE_CURRENT_BINARY_DIR}/ot_oracle)
set_tests_properties(ot_oracle_generate PROPERTIES FIXTURES_SETUP ot_oracle TIMEOUT 300)

tfuse_add_test_exe(test_ot_oracle test_ot_oracle.c)
tfuse_add_mpi_test(NAME ot_oracle TARGET test_ot_oracle RANKS 1
  ARGS ${CMAKE_CURRENT_BINARY_DIR}/ot_oracle)
set_tests_properties(ot_oracle_np1 PROPERTIES FIXTURES_REQUIRED ot_oracle)

tfuse_add_test_exe(test_ot_cases test_ot_cases.c)
tfuse_add_mpi_test(NAME ot_cases TARGET test_ot_cases RANKS 1)

tfuse_add_test_exe(test_ot_dist test_ot_dist.c)
tfuse_add_mpi_test(NAME ot_dist TARGET test_ot_dist RANKS 1 2 4)

# Benchmark program of bench/bench_ot.py (not a test; run bench/bench_ot.sh).
add_executable(bench_ot ${CMAKE_SOURCE_DIR}/bench/bench_ot.c)
target_link_libraries(bench_ot PRIVATE tfuse)
