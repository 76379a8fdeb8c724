# BERT model, tokenizer, corpus and MLM batching tests.
tfuse_add_test_exe(test_bert_grad ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_grad.c)
tfuse_add_mpi_test(NAME bert_grad TARGET test_bert_grad RANKS 1 TIMEOUT 120)
tfuse_add_test_exe(test_bert_train ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_train.c)
tfuse_add_mpi_test(NAME bert_train TARGET test_bert_train RANKS 1 TIMEOUT 120)
tfuse_add_test_exe(test_text_tokenizer ${CMAKE_CURRENT_SOURCE_DIR}/test_text_tokenizer.c)
tfuse_add_mpi_test(NAME text_tokenizer TARGET test_text_tokenizer RANKS 1 TIMEOUT 60)
tfuse_add_test_exe(test_text_corpus ${CMAKE_CURRENT_SOURCE_DIR}/test_text_corpus.c)
tfuse_add_mpi_test(NAME text_corpus TARGET test_text_corpus RANKS 1 TIMEOUT 60)
# Needs the `bible` program (Debian package bible-kjv); reports "skipped" without it.
tfuse_add_mpi_test(NAME text_bible_corpus TARGET test_text_corpus RANKS 1 TIMEOUT 60
  ARGS ${CMAKE_SOURCE_DIR}/tools/bible_corpus.sh)
set_tests_properties(text_bible_corpus_np1 PROPERTIES SKIP_RETURN_CODE 77)
tfuse_add_test_exe(test_bert_mlm ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_mlm.c)
tfuse_add_mpi_test(NAME bert_mlm TARGET test_bert_mlm RANKS 1 TIMEOUT 60)
# PyTorch (float64) as an independent reference for logits, loss and every gradient.
tfuse_add_test_exe(test_bert_torch ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_torch.c)
tfuse_add_mpi_test(NAME bert_torch TARGET test_bert_torch RANKS 1 TIMEOUT 120
  ARGS ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/bert_torch_ref.py)
tfuse_add_test_exe(test_bert_h5 ${CMAKE_CURRENT_SOURCE_DIR}/test_bert_h5.c)
tfuse_add_mpi_test(NAME bert_h5 TARGET test_bert_h5 RANKS 1 2 TIMEOUT 120)
