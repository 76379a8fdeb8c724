# Sourced by tfuse's scripts: Open MPI settings for running as root and with more ranks
# than cores on one machine, and one OpenBLAS thread per rank (threads would compete with
# the ranks for the cores).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
