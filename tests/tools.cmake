# Tests of the helper scripts in tools/.
add_test(NAME report_table
  COMMAND ${TFUSE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_report_table.py
          ${CMAKE_SOURCE_DIR}/tools/report_table.py)
