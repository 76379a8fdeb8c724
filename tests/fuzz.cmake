# libFuzzer targets for the job parser, the idx reader, the model reader and a model file
# on the program's path through a probe child process (tests/fuzz/).
# Built only with clang and -DTFUSE_FUZZ=ON, e.g.
#   CC=clang cmake -S . -B build-fuzz -DTFUSE_FUZZ=ON -DTFUSE_SANITIZE=ON
# tools/fuzz.sh configures such a build and runs one target.
option(TFUSE_FUZZ "Build the libFuzzer targets (needs clang)" OFF)
if(TFUSE_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "TFUSE_FUZZ needs clang (CC=clang); found ${CMAKE_C_COMPILER_ID}")
  endif()
  # Coverage instrumentation for the library, so that the fuzzer sees its branches.
  target_compile_options(tfuse PRIVATE -fsanitize=fuzzer-no-link)
  foreach(target job idx model model_path)
    add_executable(fuzz_${target} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_${target}.c
      ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_common.c)
    target_compile_options(fuzz_${target} PRIVATE -fsanitize=fuzzer)
    target_link_options(fuzz_${target} PRIVATE -fsanitize=fuzzer)
    target_link_libraries(fuzz_${target} PRIVATE tfuse)
    target_include_directories(fuzz_${target} PRIVATE ${HDF5_C_INCLUDE_DIRS})
  endforeach()
endif()
