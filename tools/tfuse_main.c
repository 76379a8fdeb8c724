#include "tfuse/common.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    TF_DIE("no job runner yet");
}
