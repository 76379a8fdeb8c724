# Bad input for tfuse-mpi: malformed job, data and model files, incompatible parents,
# unwritable or existing outputs, and a run killed by SIGTERM (tests/bad_inputs/run.sh).
# One rank runs every case; two ranks run the subset listed in run.sh.
foreach(np 1 2)
  if(np EQUAL 1)
    set(cases all)
  else()
    set(cases subset)
  endif()
  add_test(NAME bad_inputs_np${np}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/bad_inputs/run.sh $<TARGET_FILE:tfuse-mpi> ${np}
            ${CMAKE_CURRENT_BINARY_DIR}/bad_inputs_np${np} ${cases})
  set_tests_properties(bad_inputs_np${np} PROPERTIES
    ENVIRONMENT "${TFUSE_MPIEXEC_ENV};TFUSE_PYTHON=${TFUSE_PYTHON};TFUSE_MPIEXEC=${MPIEXEC_EXECUTABLE}"
    TIMEOUT 600 PROCESSORS ${np} LABELS bad_inputs)
endforeach()
