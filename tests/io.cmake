# Tests of the io module: idx reader, HDF5 tensor files, ViT model files.
tfuse_add_test_exe(test_io_idx test_io_idx.c)
tfuse_add_mpi_test(NAME io_idx TARGET test_io_idx RANKS 1 2)
tfuse_add_test_exe(test_io_h5f test_io_h5f.c)
tfuse_add_mpi_test(NAME io_h5f TARGET test_io_h5f RANKS 1 2 4)

tfuse_add_test_exe(test_io_vit test_io_vit.c)
tfuse_add_mpi_test(NAME io_vit TARGET test_io_vit RANKS 1 2 4)

# A model saved from 4 ranks, then read back by h5py and h5dump as independent readers.
set(TFUSE_IO_EXPORT ${CMAKE_CURRENT_BINARY_DIR}/io_vit_export.h5)
tfuse_add_mpi_test(NAME io_vit_export TARGET test_io_vit RANKS 4
  ARGS --export ${TFUSE_IO_EXPORT})
set_tests_properties(io_vit_export_np4 PROPERTIES FIXTURES_SETUP io_vit_model)
add_test(NAME io_vit_h5py
  COMMAND ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/io_check_model.py h5py ${TFUSE_IO_EXPORT})
find_program(TFUSE_H5DUMP h5dump)
if(TFUSE_H5DUMP)
  add_test(NAME io_vit_h5dump
    COMMAND ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/io_check_model.py h5dump
            ${TFUSE_IO_EXPORT} ${TFUSE_H5DUMP})
  set_tests_properties(io_vit_h5dump PROPERTIES FIXTURES_REQUIRED io_vit_model)
else()
  message(STATUS "h5dump not found; the io_vit_h5dump test is not registered")
endif()
set_tests_properties(io_vit_h5py PROPERTIES FIXTURES_REQUIRED io_vit_model)

# A model written by h5py from the documented layout alone (compressed float64 datasets,
# int32 and fixed-length string attributes), loaded by C at several rank counts.
set(TFUSE_IO_PYMODEL ${CMAKE_CURRENT_BINARY_DIR}/io_vit_h5py_written.h5)
add_test(NAME io_vit_pywrite
  COMMAND ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/io_check_model.py write ${TFUSE_IO_PYMODEL})
set_tests_properties(io_vit_pywrite PROPERTIES FIXTURES_SETUP io_vit_pymodel)
tfuse_add_mpi_test(NAME io_vit_import TARGET test_io_vit RANKS 1 2 4
  ARGS --import ${TFUSE_IO_PYMODEL})
foreach(np 1 2 4)
  set_tests_properties(io_vit_import_np${np} PROPERTIES FIXTURES_REQUIRED io_vit_pymodel)
endforeach()
