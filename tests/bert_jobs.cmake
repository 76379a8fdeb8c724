# BERT train and fuse jobs end to end on a small part of the King James Bible, with bad
# input. Needs the `bible` program (Debian package bible-kjv); reports "skipped" without it.
foreach(np 1 2)
  add_test(NAME e2e_bert_quick_np${np}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/e2e/bert_quick.sh $<TARGET_FILE:tfuse-mpi> ${np}
            ${CMAKE_CURRENT_BINARY_DIR}/e2e_bert_np${np} ${CMAKE_SOURCE_DIR}/tools/bible_corpus.sh)
  set_tests_properties(e2e_bert_quick_np${np} PROPERTIES ENVIRONMENT "${TFUSE_MPIEXEC_ENV}"
    TIMEOUT 600 PROCESSORS ${np} SKIP_RETURN_CODE 77)
endforeach()
