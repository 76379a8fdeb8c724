# ViT training throughput; bench/bench_vit_train.sh compares it with PyTorch.
add_executable(bench_vit_train ${CMAKE_SOURCE_DIR}/bench/bench_vit_train.c)
target_link_libraries(bench_vit_train PRIVATE tfuse)
target_compile_options(bench_vit_train PRIVATE -Wall -Wextra)
