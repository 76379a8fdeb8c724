# End-to-end runs of tfuse-mpi on real data, and its handling of bad input.
foreach(np 1 2 4)
  add_test(NAME e2e_quick_fuse_np${np}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/e2e/quick_fuse.sh $<TARGET_FILE:tfuse-mpi> ${np}
            ${CMAKE_CURRENT_BINARY_DIR}/e2e_quick_np${np})
  set_tests_properties(e2e_quick_fuse_np${np} PROPERTIES ENVIRONMENT "${TFUSE_MPIEXEC_ENV}"
    TIMEOUT 600 PROCESSORS ${np})
endforeach()

foreach(np 1 2)
  add_test(NAME e2e_bad_jobs_np${np}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/e2e/bad_jobs.sh $<TARGET_FILE:tfuse-mpi> ${np}
            ${CMAKE_CURRENT_BINARY_DIR}/e2e_bad_np${np})
  set_tests_properties(e2e_bad_jobs_np${np} PROPERTIES ENVIRONMENT "${TFUSE_MPIEXEC_ENV}"
    TIMEOUT 600 PROCESSORS ${np})
endforeach()
