# BERT model, tokenizer, corpus and MLM batching tests.
tfuse_add_test_exe(test_bert_grad ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_grad.c)
tfuse_add_mpi_test(NAME bert_grad TARGET test_bert_grad RANKS 1 TIMEOUT 120)
tfuse_add_test_exe(test_bert_train ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_train.c)
tfuse_add_mpi_test(NAME bert_train TARGET test_bert_train RANKS 1 TIMEOUT 120)
